#!/usr/bin/env python3
"""Distillation, step 3 (issue #22): the v4 model directory, float32, for `recipes/default/ship.py`.

v4 is Whisper base's encoder and its whole decoder, unwindowed with 1 s of silence appended to each input
(`ModelConfig.trailing_silence`: the decoder stops where it sees the speech end, RESULTS.md), over the
teacher's vocabulary pruned to the tokens of the training transcripts and of CMUdict's words (31,689 of
51,865: nothing lost on dev, `vocabulary.py`), with the CTC head over our 256 pieces that
`train.py --train ctc` trained on the frozen encoder (mean of the last `--average` checkpoints).

    python recipes/distil/assemble.py --run /var/tmp/st-distil --ctc ctc-head --average 2 --out /tmp/v4
    python recipes/default/ship.py --source /tmp/v4 --dtype int4 ...      # recipes/distil/README.md
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (this recipe's trainer: sets, kept vocabulary, checkpoints)

from speech_transformer.model import checkpoint  # noqa: E402
from speech_transformer.training.student import distilled_student  # noqa: E402

SILENCE = 1.0  # seconds appended to each input
DECODING = {"method": "attention", "attention": {"beam_size": 1}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("/var/tmp/st-distil"), help="the labelling run's folder")
    p.add_argument("--ctc", default="ctc-head", help="the CTC head's training folder, in --run")
    p.add_argument("--average", type=int, default=2)
    p.add_argument("--v3", type=Path, default=Path(train.__file__).resolve().parents[2] / "speech_transformer" /
                   "pretrained" / "default", help="the model whose CTC vocabulary (256 pieces) v4 spells in")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    teacher = a.run / "teacher" / "whisper-base"
    tokens = checkpoint.model_tokenizer(teacher)
    keep = train.vocabulary_keep(a.run, train.labelled_sets(a.run), tokens, dictionary=True)
    info = {}
    info.update(initialised_from={"encoder": "whisper base", "decoder": "whisper base (all 6 blocks)"},
                teacher="whisper base", recipe="recipes/distil/assemble.py", trailing_silence_s=SILENCE)
    with tempfile.TemporaryDirectory() as tmp:
        model, vocab, _ = distilled_student(teacher, a.v3, keep, Path(tmp) / "vocab.tiktoken", train.FROZEN,
                                            tuple(range(6)), upper_from_teacher=True, trailing_silence=SILENCE,
                                            ctc_branch=True)
        info["vocabulary"] = (f"whisper's, pruned to {vocab.vocab_size} tokens: the training transcripts' and "
                              "CMUdict's words'")
        out = checkpoint.save_model(model, vocab, a.out, info, DECODING,
                                    ctc_tokenizer=checkpoint.model_ctc_tokenizer(a.v3))
    print(f"{out}: {model.num_parameters() / 1e6:.1f} M parameters, {vocab.vocab_size} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
