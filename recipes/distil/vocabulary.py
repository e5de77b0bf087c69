"""How much of Whisper's vocabulary a student needs: the teacher's encoder and whole decoder, unwindowed with
1 s of silence (`trailing_silence`), over a vocabulary pruned two ways, evaluated untrained through the
recogniser (greedy, float32) on the first N utterances of `librispeech/dev.tsv`.

    OMP_NUM_THREADS=1 python recipes/distil/vocabulary.py [--run /var/tmp/st-distil] [--n 40]

Kept: the tokens of the training transcripts (`train.vocabulary_keep`, what `train.py` keeps), then those plus
the tokens of every word of CMUdict (pocketsphinx's English dictionary), as " word" and " Word".
Needs the labelling run's folder (its teacher and labels): recipes/distil/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (this recipe's trainer: the kept vocabulary)

from speech_transformer.apps.systems import SpeechTransformerSystem  # noqa: E402
from speech_transformer.audio.loading import load_audio  # noqa: E402
from speech_transformer.audio.manifests import default_data_dir, read_manifest  # noqa: E402
from speech_transformer.model import checkpoint  # noqa: E402
from speech_transformer.text.scoring import score_utterances  # noqa: E402
from speech_transformer.training.student import distilled_student  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("/var/tmp/st-distil"))
    p.add_argument("--n", type=int, default=40)
    args = p.parse_args()
    torch.set_num_threads(1)
    teacher, v3 = args.run / "teacher" / "whisper-base", Path(train.__file__).resolve().parents[2] / \
        "speech_transformer" / "pretrained" / "default"
    tokenizer = checkpoint.model_tokenizer(teacher)
    keep = train.vocabulary_keep(args.run, train.labelled_sets(args.run), tokenizer)
    utterances = read_manifest(default_data_dir() / "librispeech/dev.tsv")[: args.n]
    waves = [load_audio(u.audio) for u in utterances]
    print("| vocabulary kept | tokens | WER % |\n|---|---:|---:|")
    for label, kept in (("training transcripts", keep), ("+ CMUdict words", keep | train.dictionary_tokens(tokenizer))):
        with tempfile.TemporaryDirectory() as tmp:
            model, vocab, _ = distilled_student(teacher, v3, kept, Path(tmp) / "vocab.tiktoken", train.FROZEN,
                                                tuple(range(6)), upper_from_teacher=True, trailing_silence=1.0)
            folder = checkpoint.save_model(model, vocab, Path(tmp) / "model", {}, {"method": "attention",
                                           "attention": {"beam_size": 1}},
                                           ctc_tokenizer=checkpoint.model_ctc_tokenizer(v3))
            system = SpeechTransformerSystem(folder, temperatures=(0.0,), no_speech_threshold=1.0)
            system.load()
            score = score_utterances([u.text for u in utterances], system.transcribe(waves), "english-v1")
            print(f"| {label} | {vocab.vocab_size} | {100 * score.wer:.2f} |", flush=True)


if __name__ == "__main__":
    main()
