"""The default model v2's learning curve beside the learning-curve benchmark's: dev CTC-greedy CER against
CPU-minutes (the benchmark's variants: training CPU on one thread; train_cached.py: caching + training CPU on
two threads), on the same first 40 LibriSpeech dev utterances.

    python bench/student_curve.py --bench /var/tmp/lc/run --cached /var/tmp/st14/cached \\
        --out recipes/default/learning_curve_v2.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", type=Path, required=True, help="bench/learning_curve.py run folder")
    p.add_argument("--cached", type=Path, required=True, help="recipes/default/train_cached.py run folder")
    p.add_argument("--variants", nargs="*", default=["base", "bs30", "conformer", "whisper_student4",
                                                    "whisper_student4_lr"])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = [json.loads(line) for line in (args.bench / "log.jsonl").read_text().splitlines()]
    fig, ax = plt.subplots(figsize=(8, 5))
    for name in args.variants:
        marks = [r for r in log if r.get("variant") == name and "mark" in r]
        ax.plot([r["cpu_s"] / 60 for r in marks], [r["ctc_cer"] for r in marks], marker="o", label=name)
    cached = [json.loads(line) for line in (args.cached / "log.jsonl").read_text().splitlines()]
    ax.plot([(r["cache_cpu_s"] + r["train_cpu_s"]) / 60 for r in cached], [r["ctc_cer"] for r in cached],
            marker="s", color="black", label="train_cached.py (v2; CPU incl. caching)")
    reference = next((r for r in log if r.get("variant") == "reference"), None)
    if reference:
        ax.axhline(reference["ctc_cer"], color="grey", linestyle="--", label="shipped model v1")
    ax.set_xlabel("CPU-minutes")
    ax.set_ylabel("dev CTC-greedy CER % (first 40 utterances)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
