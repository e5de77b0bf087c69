"""`speech-transformer lm-words`: word n-gram LMs (ARPA) for lexicon decoding: build from text, convert the
packaged generic English LM, or mix both into one file."""

from __future__ import annotations

import argparse
import sys

from speech_transformer.decoding.arpa import read_arpa, read_corpus, write_arpa
from speech_transformer.decoding.sphinx_lm import packaged_arpa
from speech_transformer.decoding.word_lm import build_kneser_ney, interpolate


def main(argv: list[str] | None = None) -> int:
    """`lm-words`: build a word LM from text, convert the packaged LM, or mix both into one ARPA file."""
    p = argparse.ArgumentParser(prog="speech-transformer lm-words", description=main.__doc__)
    p.add_argument("output", help="ARPA file to write (.arpa or .arpa.gz)")
    p.add_argument("--text", nargs="*", default=[], help="manifests (.tsv/.jsonl) or text files to build from")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--generic", action="store_true", help="mix in the packaged generic English LM")
    p.add_argument("--generic-weight", type=float, default=0.5, help="its interpolation weight (0..1)")
    args = p.parse_args(argv)
    if not args.text and not args.generic:
        p.error("give --text and/or --generic")
    models, weights = [], []
    if args.text:
        sentences = [s for path in args.text for s in read_corpus(path)]
        models.append(build_kneser_ney(sentences, args.order))
        weights.append(1.0 - args.generic_weight if args.generic else 1.0)
        print(f"in-domain: {len(sentences)} sentences, n-grams {models[-1].counts()}", file=sys.stderr)
    if args.generic:
        models.append(read_arpa(packaged_arpa()))
        weights.append(args.generic_weight if args.text else 1.0)
    lm = models[0] if len(models) == 1 else interpolate(models, weights)
    write_arpa(lm, args.output)
    print(f"{args.output}: n-grams {lm.counts()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
