"""The default model's learning curves: dev CTC-greedy CER against CPU-minutes, on the same first 40
LibriSpeech dev utterances (train_cached.py's logs: caching + training CPU on two threads; the learning-curve
benchmark's variants, if given: training CPU on one thread).

    python bench/student_curve.py --run "v3=/var/tmp/st15/c6" --run "v3 + TTS=/var/tmp/st15/c6b" \\
        --run "v2=recipes/default/curves/v2.jsonl" [--bench /var/tmp/lc/run] --out recipes/default/learning_curve_v3.png

A run is LABEL=PATH: a train_cached.py run folder (its log.jsonl) or such a log itself.

The distilled student's curve (recipes/distil/train.py's log.jsonl: dev WER of greedy decoding and of CTC greedy
against training CPU-minutes, one thread; caching excluded), with the teacher's and v3's WER as lines:

    python bench/student_curve.py --distil "v4=/var/tmp/st-distil/student" --teacher 4.33 --v3 27.98 \
        --out recipes/distil/learning_curve.png
    python bench/student_curve.py --distil "v4 -> v5=/var/tmp/st-distil/student-v4f" --teacher 4.33 --top 10 \
        --out recipes/distil/learning_curve_v5.png
    python bench/student_curve.py --distil "control=ctl.jsonl" --distil "+ augmented copy=aug.jsonl" \
        --distil "+ synthetic speech=tts.jsonl" --line "v5 (float)=6.48" --dev-utterances 120 --top 10 \
        --out recipes/distil/learning_curve_ingredients.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH_VARIANTS = ["base", "bs30", "conformer", "whisper_student4", "whisper_student4_lr"]


def read_log(path: Path) -> list[dict]:
    log = path / "log.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", action="append", default=[], metavar="LABEL=PATH", help="a train_cached.py run or log")
    p.add_argument("--bench", type=Path, default=None, help="bench/learning_curve.py run folder")
    p.add_argument("--variants", nargs="*", default=BENCH_VARIANTS)
    p.add_argument("--distil", action="append", default=[], metavar="LABEL=PATH", help="a distil train.py run")
    p.add_argument("--teacher", type=float, help="with --distil: the teacher's dev WER %%, drawn as a line")
    p.add_argument("--v3", type=float, help="with --distil: v3's dev WER %% on the same utterances")
    p.add_argument("--top", type=float, default=60.0, help="with --distil: the WER axis's top")
    p.add_argument("--line", action="append", default=[], metavar="LABEL=WER",
                   help="with --distil: another model's dev WER %%, drawn as a line")
    p.add_argument("--dev-utterances", type=int, default=40, help="with --distil: how many dev utterances the "
                   "runs scored (train.py --dev-utterances)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    if args.distil:
        return distil_curve(args, fig, ax)
    if args.bench:
        log = read_log(args.bench)
        for name in args.variants:
            marks = [r for r in log if r.get("variant") == name and "mark" in r]
            ax.plot([r["cpu_s"] / 60 for r in marks], [r["ctc_cer"] for r in marks], marker="o", label=name)
        reference = next((r for r in log if r.get("variant") == "reference"), None)
        if reference:
            ax.axhline(reference["ctc_cer"], color="grey", linestyle="--", label="shipped model v1")
    for spec in args.run:
        label, _, path = spec.partition("=")
        run = read_log(Path(path))
        ax.plot([(r["cache_cpu_s"] + r["train_cpu_s"]) / 60 for r in run], [r["ctc_cer"] for r in run],
                marker="s", label=f"{label} (train_cached.py; CPU incl. caching)")
    return save(fig, ax, "CPU-minutes", "dev CTC-greedy CER % (first 40 utterances)", 60 if not args.bench else 105,
                args.out)


def distil_curve(args, fig, ax) -> int:
    """Each --distil run's dev WER against its training CPU-minutes, with the teacher's and v3's as lines."""
    for spec in args.distil:
        label, _, path = spec.partition("=")
        run = read_log(Path(path))
        minutes = [r["train_cpu_s"] / 60 for r in run]
        ax.plot(minutes, [r["wer"] for r in run], marker="o", label=f"{label}: decoder, greedy")
        ctc = [(m, r["ctc_wer"]) for m, r in zip(minutes, run) if "ctc_wer" in r]  # absent: --train decoder
        if ctc:
            ax.plot(*zip(*ctc), marker="s", label=f"{label}: CTC greedy")
    lines = [(args.teacher, "teacher (Whisper base, 30 s window)", "--"), (args.v3, "v3", ":")]
    lines += [(float(v), label, "-.") for label, _, v in (spec.rpartition("=") for spec in args.line)]
    for value, label, style in lines:
        if value is not None:
            ax.axhline(value, color="grey", linestyle=style, label=f"{label}: {value:.2f} %")
    return save(fig, ax, "training CPU-minutes (one thread)",
                f"dev WER % (first {args.dev_utterances} utterances, english-v1)", args.top, args.out)


def save(fig, ax, xlabel: str, ylabel: str, top: float, out: Path) -> int:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, top)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
