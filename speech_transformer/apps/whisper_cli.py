"""`speech-transformer whisper`: import Whisper's weights into a model directory of ours, or write a student.

See `speech_transformer.importers.whisper_convert` for the formats it reads, `importers.whisper` for names.
"""

from __future__ import annotations

import argparse
import sys

from speech_transformer.apps import exitcodes
from speech_transformer.importers import whisper
from speech_transformer.importers.whisper import resolve
from speech_transformer.importers.whisper_convert import import_whisper
from speech_transformer.model.checkpoint import CheckpointError, model_ctc_tokenizer
from speech_transformer.training.student import student


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speech-transformer whisper", description=whisper.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", help="openai-whisper .pt file, Hugging Face folder, faster-whisper folder, or a model name (tiny.en, base, ...)")
    p.add_argument("-o", "--output", help="model directory to write (default: the cache, printed)")
    p.add_argument("--vocab", help="the .tiktoken vocabulary (default: the one openai-whisper ships)")
    p.add_argument("--language", default="en", help="multilingual models: the language to transcribe")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"])
    p.add_argument("--student", type=int, metavar="N", help="write a model to fine-tune instead: Whisper's stem and "
                   "first N encoder blocks, a new CTC head and decoder over the tokenizer of --tokenizer-from")
    p.add_argument("--decoder-layers", type=int, default=1, help="--student: blocks of its new decoder")
    p.add_argument("--tokenizer-from", default=None, help="--student: a model directory whose CTC head's "
                   "vocabulary it uses (our pieces: e.g. speech_transformer/pretrained/default)")
    args = p.parse_args(argv)
    try:
        if args.student:
            if not args.output or not args.tokenizer_from:
                p.error("--student needs -o/--output and --tokenizer-from MODEL_DIR")
            out = student(args.source, model_ctc_tokenizer(args.tokenizer_from), args.output,
                          args.student, args.decoder_layers)
        elif args.output:
            out = import_whisper(args.source, args.output, args.vocab, args.language, args.task)
        else:
            out = resolve(args.source, args.language)
    except (CheckpointError, FileNotFoundError, ConnectionError, ValueError) as e:
        print(f"speech-transformer whisper: {e}", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
