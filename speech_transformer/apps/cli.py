"""`speech-transformer`: one command, a subcommand per stage of the pipeline.

    speech-transformer presets                      model presets and their sizes
    speech-transformer tokenizer --manifest M ...   train a SentencePiece tokenizer on transcripts
    speech-transformer lm --model DIR --text T ...  train a token n-gram LM for shallow fusion (DIR/lm.json)
    speech-transformer lm-words ...                 word n-gram LMs (ARPA) for lexicon decoding: build, convert, mix
    speech-transformer download --sets dev-clean    fetch and prepare LibriSpeech (see recipes/librispeech)
    speech-transformer train --config C.yaml        train (also under torchrun)
    speech-transformer average --exp DIR            average the last checkpoints into a model directory
    speech-transformer transcribe PATHS -o OUT      batch transcription: txt, json, srt, vtt, tsv
    speech-transformer evaluate --data M            WER benchmark, side by side with peer systems
    speech-transformer commands --grammar G AUDIO   voice commands: the grammar command each input is, or rejected
    speech-transformer listen [--grammar G]         live: partial and final text (or commands) from the microphone
    speech-transformer demo [--model DIR]           the Gradio voice demo on 127.0.0.1:7860 (= python app.py)
    speech-transformer whisper SRC -o DIR           import Whisper weights (.pt, Hugging Face or faster-whisper folder)

Exit codes, the same in every subcommand (`speech_transformer.apps.exitcodes`): 0 done; 1 some inputs failed
(each reported with its reason, the others done and written) or the work failed; 2 usage error (bad
arguments, or a model, manifest or config that cannot be used: nothing was done); 130 interrupted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

# subcommands implemented by a module's own `main(argv)`
DELEGATED = {"train": "speech_transformer.training.trainer", "evaluate": "speech_transformer.apps.evaluate",
             "download": "speech_transformer.training.download", "demo": "speech_transformer.apps.demo",
             "transcribe": "speech_transformer.apps.transcribe_cli", "whisper": "speech_transformer.apps.whisper_cli",
             "lm-words": "speech_transformer.apps.lm_cli", "commands": "speech_transformer.apps.commands_cli",
             "listen": "speech_transformer.apps.listen"}


def presets(argv: list[str]) -> int:
    from speech_transformer.model.transformer import PRESETS, SpeechTransformer

    argparse.ArgumentParser(prog="speech-transformer presets", description="List model presets.").parse_args(argv)
    print(f"{'preset':8} {'params':>9} {'d_model':>7} {'heads':>5} {'d_ff':>5} {'enc':>4} {'dec':>4}")
    for name, c in PRESETS.items():
        n = SpeechTransformer(c).num_parameters()
        print(f"{name:8} {n / 1e6:8.2f}M {c.d_model:7} {c.n_heads:5} {c.d_ff:5} {c.encoder_layers:4} {c.decoder_layers:4}"
              f"   (vocab {c.vocab_size})")
    return 0


def tokenizer(argv: list[str]) -> int:
    from speech_transformer.training.data import read_manifest
    from speech_transformer.text.normalize import normalize_transcript
    from speech_transformer.text.tokenizer import train_tokenizer

    p = argparse.ArgumentParser(prog="speech-transformer tokenizer",
                                description="Train a SentencePiece tokenizer on normalised transcripts.")
    p.add_argument("--manifest", nargs="+", required=True, help="TSV/JSONL manifests or LibriSpeech folders")
    p.add_argument("--text", nargs="*", default=[], help="extra text files, one sentence a line (`id<TAB>text` ok)")
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--type", choices=["unigram", "bpe"], default="unigram")
    p.add_argument("--output", required=True, help="the .model file to write")
    args = p.parse_args(argv)
    texts = [normalize_transcript(u.text) for m in args.manifest for u in read_manifest(m)]
    for path in args.text:
        texts += [normalize_transcript(line.split("\t")[-1]) for line in Path(path).read_text().splitlines()]
    tok = train_tokenizer(texts, args.output, args.vocab_size, args.type)
    print(f"{args.output}: {tok.vocab_size} tokens ({args.type}) from {len(texts)} sentences")
    return 0


def average(argv: list[str]) -> int:
    from speech_transformer.training.trainer import export_model

    p = argparse.ArgumentParser(prog="speech-transformer average",
                                description="Average the last N checkpoints of a training run into a model directory.")
    p.add_argument("--exp", required=True, help="the training out_dir (holds checkpoints/ and config.yaml)")
    p.add_argument("--last", type=int, default=5)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    out = export_model(Path(args.exp), args.last, Path(args.output))
    print(f"{out}: averaged {args.last} checkpoint(s) of {args.exp}")
    return 0


def lm(argv: list[str]) -> int:
    from speech_transformer.model import checkpoint
    from speech_transformer.training.data import read_manifest
    from speech_transformer.decoding.token_lm import LM_FILE, NgramLM
    from speech_transformer.text.normalize import normalize_transcript

    p = argparse.ArgumentParser(prog="speech-transformer lm", description="Train a token n-gram language model "
                                "with a model's tokenizer, for shallow fusion (beam search, lm_weight > 0).")
    p.add_argument("--model", required=True, help="the model directory (its tokenizer; the LM goes to DIR/lm.json)")
    p.add_argument("--manifest", nargs="*", default=[], help="TSV/JSONL manifests whose transcripts are text")
    p.add_argument("--text", nargs="*", default=[], help="text files, one sentence a line (`id<TAB>text` ok)")
    p.add_argument("--order", type=int, default=4)
    p.add_argument("--min-count", type=int, default=1, help="drop n-grams (n >= 3) seen fewer times")
    p.add_argument("--output", help="default: DIR/lm.json")
    args = p.parse_args(argv)
    directory = Path(args.model)
    tok = checkpoint.model_tokenizer(directory)
    texts = [normalize_transcript(u.text) for m in args.manifest for u in read_manifest(m)]
    for path in args.text:
        texts += [normalize_transcript(line.split("\t")[-1]) for line in Path(path).read_text().splitlines()]
    sentences = [tok.encode(t) for t in texts if t.strip()]
    model = NgramLM.train(sentences, args.order, tok.vocab_size, tok.special.prompt[-1], tok.special.eos,
                          args.min_count)
    out = model.save(args.output or directory / LM_FILE)
    print(f"{out}: order {args.order}, {len(model.counts)} contexts from {len(sentences)} sentences "
          f"({out.stat().st_size / 1e6:.1f} MB)")
    return 0


LOCAL = {"presets": presets, "tokenizer": tokenizer, "average": average, "lm": lm}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = sorted([*LOCAL, *DELEGATED])
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + f"\n\ncommands: {', '.join(commands)}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command in LOCAL:
        return LOCAL[command](rest)
    if command in DELEGATED:
        return importlib.import_module(DELEGATED[command]).main(rest) or 0
    print(f"speech-transformer: unknown command {command!r}; choose from {', '.join(commands)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
