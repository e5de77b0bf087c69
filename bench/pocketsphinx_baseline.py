"""The PocketSphinx baseline: WER and real-time factor on AN4 test, FSDD test and LibriSpeech dev.

Runs `speech-transformer evaluate --system pocketsphinx` once per set (resumable through the
evaluate cache), then prints a Markdown table of the results.

    python bench/pocketsphinx_baseline.py [--data-dir ../shared/data] [--out-dir bench/results/pocketsphinx]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

from speech_transformer.apps import evaluate
from speech_transformer.training.data import default_data_dir

SETS = {"an4-test": "an4/test.tsv", "fsdd-test": "fsdd/test.tsv", "librispeech-dev": "librispeech/dev.tsv"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=Path("bench/results/pocketsphinx"))
    p.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    p.add_argument("--limit", type=int, help="only the first N utterances of each set (smoke runs)")
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args(argv)

    status = 0
    rows = []
    for name in args.sets:
        out = args.out_dir / f"{name}.json"
        cmd = ["--data", str(args.data_dir / SETS[name]), "--system", "pocketsphinx", "--output", str(out),
               "--batch-size", str(args.batch_size)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        print(f"$ speech-transformer evaluate {' '.join(cmd)}", file=sys.stderr, flush=True)
        status = max(status, evaluate.main(cmd))
        if not out.exists():
            continue
        b = json.loads(out.read_text())["systems"][0]
        rows.append(f"| {name} | {b['n_utts']} | {b['audio_seconds'] / 60:.1f} | {100 * b['wer']:.2f} | "
                    f"{100 * b['cer']:.2f} | {100 * b['ser']:.1f} | {b['rtf']:.3f} | {b['rtf_cpu']:.3f} | "
                    f"{b['n_errors']} |")
    cpu = platform.processor() or platform.machine()
    print(f"\nPocketSphinx 5.1.1, shipped en-us model, normaliser english-v1, {cpu}\n")
    print("| Set | Utts | Audio min | WER % | CER % | SER % | RTF | CPU RTF | Failed |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
