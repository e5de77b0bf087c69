"""Score checkpoints or model directories of a distil run on the first N dev utterances, clean and noisy,
from cached frozen-block states (greedy decoding, float32): what train.py's evaluations score, plus the
same clips with noise (5-20 dB, coloured or babble of librispeech-train speakers) and a simulated room for
30 % of them, one fixed seed (`training.augment`), so every model is scored on the same noisy audio.

    python recipes/distil/score_dev.py --out /var/tmp/st-distil/student-ctl --n 120 \\
        /tmp/v5 /var/tmp/st-distil/student-ctl/checkpoints/step-00004107

Prints one JSON line per model: {"weights", "n", "clean", "noisy"} (WER %). The states are cached once in
RUN/eval-cache (dev-N, dev-N-noisy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as T  # noqa: E402  (recipes/distil/train.py)

from speech_transformer.model import checkpoint  # noqa: E402
from speech_transformer.training.augment import AugmentOptions  # noqa: E402

NOISY = AugmentOptions(speeds=(1.0,), room_probability=0.3, noise_probability=1.0)
NOISY_COPY = 99  # the seed's copy number: not one that training uses


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("weights", nargs="+", type=Path, help="checkpoint folders or model directories (model.safetensors)")
    p.add_argument("--run", type=Path, default=Path("/var/tmp/st-distil"))
    p.add_argument("--out", type=Path, required=True, help="the student run whose init/ (vocabulary) they share")
    p.add_argument("--v3", type=Path, default=T.parse_args([]).v3, help="the model whose CTC tokenizer the run uses "
                   "(train.py's --v3)")
    p.add_argument("--dev", default="librispeech/dev.tsv")
    p.add_argument("--n", type=int, default=120)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    model, vocab, _, _ = T.load_student(a.out, "decoder", 0.0)
    dev = T.dev_rows(a.run, a.dev, a.n)
    cache = a.run / "eval-cache"
    clean = T.cache_states(model, dev, a.run, cache / f"dev-{a.n}")
    noisy = T.cache_states(model, dev, a.run, cache / f"dev-{a.n}-noisy",
                           T.set_augmenter(a.run, "librispeech-train", NOISY), NOISY_COPY)
    ctc = checkpoint.model_ctc_tokenizer(a.v3)
    for weights in a.weights:
        checkpoint.load_weights(model, checkpoint.load_state_dict(weights / checkpoint.WEIGHTS_FILE), weights)
        model.eval()
        wer = {name: round(T.evaluate(model, states, dev, vocab, ctc)["wer"], 2)
               for name, states in (("clean", clean), ("noisy", noisy))}
        print(json.dumps({"weights": str(weights), "n": a.n, **wer}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
