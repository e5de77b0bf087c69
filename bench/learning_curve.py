"""Learning curves per CPU-minute: recipe variants, trained one after another by the real trainer, scored on a
fixed dev subset at fixed marks of training CPU time.

    python bench/learning_curve.py --spec recipes/default/conf/learning_curve.yaml --out /var/tmp/lc/run
    python bench/learning_curve.py --spec ... --out ... --only warmup100      # one line of the plot
    python bench/learning_curve.py --spec ... --out ... --report              # table + plot from the log only

The spec names a base recipe config (its `train:` section and the manifests of its `train_sets`), the
tokenizer, the dev subset (the first N utterances of a manifest, in file order), the CPU-minute marks, the
torch thread count, overrides for every variant (`set`) and the variants, each a list of `key=value`
overrides (`--set` style, values parsed as YAML) over the base. `OUT/<variant>/train.yaml` plus its
overrides reproduce any line: `speech-transformer train --config OUT/<v>/train.yaml --set ...`.

CPU time is this process's `time.process_time()` (user + system, all threads), counted from the first step
(setup and model building excluded), minus the CPU time of the evaluations at the marks; the loader runs in
the process (num_workers 0), so data loading is counted. Wall time is logged beside it. At each mark the
trainer writes a checkpoint, the model is scored (CTC-greedy CER/WER and attention-greedy WER through
`speech_transformer.training.trainer.validate`, i.e. Recognizer.encode + decoding.decode), and one JSON line goes to
OUT/log.jsonl. A killed run, started again with the same command, skips finished variants and resumes the
current one from the trainer's checkpoint at its last mark (bit-exact on CPU), with the CPU count of that mark.
Writes OUT/results.json, OUT/results.md (tables) and OUT/learning_curve.png (CER vs CPU-minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from speech_transformer.model import checkpoint
from speech_transformer.training.student import student
from speech_transformer.audio.loading import load_audio
from speech_transformer.training.data import (
    SpeechDataset,
    default_data_dir,
    filter_by_duration,
    read_manifest,
)
from speech_transformer.utils.runtime import rss_mb
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import Tokenizer
from speech_transformer.training.trainer import (
    Callback,
    Run,
    TrainConfig,
    latest_checkpoint,
    train,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
OUT_ENV = "LEARNING_CURVE_OUT"  # the run folder, for variants that name files in it


@dataclass
class Spec:
    base: str  # a recipe config with `recipe:` (manifests, train_sets) and `train:` sections
    tokenizer: str
    marks: list[float]  # CPU-minutes
    variants: dict[str, list[str]]  # name -> key=value overrides over the base
    dev: str = "$SPEECH_TRANSFORMER_DATA/librispeech/dev.tsv"
    dev_utterances: int = 40
    threads: int = 1
    set: list[str] = field(default_factory=list)  # overrides for every variant (budget, bookkeeping)
    reference_model: str = ""  # a model directory scored on the same dev subset (a horizontal line)
    reference_label: str = "reference"
    # model folders made from Whisper before any variant runs: OUT/<name> = training.student.student(**arguments);
    # a variant starts from one with `init_from=$LEARNING_CURVE_OUT/<name>`
    students: dict[str, dict] = field(default_factory=dict)
    marks_for: dict[str, list[float]] = field(default_factory=dict)  # variants measured past the common marks

    def variant_marks(self, name: str) -> list[float]:
        return self.marks_for.get(name, self.marks)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Spec:
        return cls(**yaml.safe_load(Path(path).read_text()))


def resolve(path: str) -> str:
    """`$SPEECH_TRANSFORMER_DATA` expanded; relative paths from the repository root."""
    os.environ.setdefault("SPEECH_TRANSFORMER_DATA", str(default_data_dir()))
    expanded = os.path.expandvars(path)
    return expanded if os.path.isabs(expanded) else str(REPO / expanded)


def base_train_config(spec: Spec) -> dict:
    """The base recipe's training settings, with its training manifests and the spec's tokenizer."""
    recipe_config = yaml.safe_load(Path(resolve(spec.base)).read_text())
    recipe = recipe_config["recipe"]
    return {**recipe_config["train"], "train": [recipe["manifests"][s] for s in recipe["train_sets"]],
            "tokenizer": resolve(spec.tokenizer), "valid": None}


def variant_config(spec: Spec, name: str, out: Path) -> TrainConfig:
    """OUT/<name>/train.yaml (the base) + the spec's and the variant's overrides."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.yaml").write_text(yaml.safe_dump(base_train_config(spec), sort_keys=False))
    overrides = [*spec.set, *spec.variants[name], f"out_dir={folder / 'train'}"]
    (folder / "overrides.txt").write_text("\n".join(overrides) + "\n")
    return TrainConfig.load(folder / "train.yaml", overrides)


@dataclass
class DevSet:
    waves: list[np.ndarray]
    texts: list[str]

    @classmethod
    def load(cls, manifest: str, n: int) -> DevSet:
        utterances = read_manifest(resolve(manifest))[:n]
        return cls([load_audio(u.audio) for u in utterances], [normalize_transcript(u.text) for u in utterances])


def read_log(out: Path) -> list[dict]:
    path = out / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def append_log(out: Path, record: dict) -> None:
    with open(out / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def score(model, tokenizer, dev: DevSet) -> dict:
    """Dev scores of a model, in percent, and the CPU seconds they took."""
    t0 = time.process_time()
    r = validate(model, tokenizer, dev.waves, dev.texts)
    return {"ctc_cer": 100 * r.get("valid_ctc_cer", float("nan")), "ctc_wer": 100 * r.get("valid_ctc_wer", float("nan")),
            "att_wer": 100 * r["valid_wer"], "att_cer": 100 * r["valid_cer"], "dev_loss": r["valid_loss"],
            "example": r["valid_example"], "eval_cpu_s": time.process_time() - t0}


class Marks(Callback):
    """Stops the run at the last mark; at each mark: a checkpoint, the dev scores, one log line."""

    def __init__(self, variant: str, marks: list[float], dev: DevSet, out: Path):
        self.variant, self.marks, self.dev, self.out = variant, marks, dev, out
        self.done = [r for r in read_log(out) if r.get("variant") == variant and "mark" in r]
        self.offset = self.cpu0 = self.wall0 = self.eval_cpu = 0.0
        self.wall_offset = 0.0

    def pending_file(self, run: Run) -> Path:
        return run.out_dir / "pending_mark.json"

    def on_start(self, run: Run) -> None:
        """The CPU count continues from the mark the trainer resumed at (scoring it first if that was cut off)."""
        step = run.state.step
        last = self.done[-1] if self.done else None
        pending = self.pending_file(run)
        if step and (last is None or last["step"] != step):
            mark = json.loads(pending.read_text()) if pending.exists() else None
            if mark is None or mark["step"] != step:
                raise RuntimeError(f"{run.out_dir}: checkpoint at step {step} matches no mark of {self.out}/log.jsonl")
            self.record(run, mark)
            last = mark
        self.offset, self.wall_offset = (last["cpu_s"], last["wall_s"]) if step else (0.0, 0.0)
        self.cpu0, self.wall0, self.eval_cpu = time.process_time(), time.perf_counter(), 0.0

    def on_step(self, run: Run) -> bool:
        cpu = self.offset + time.process_time() - self.cpu0 - self.eval_cpu
        if len(self.done) >= len(self.marks) or cpu < 60 * self.marks[len(self.done)]:
            return False
        mark = {"variant": self.variant, "mark": self.marks[len(self.done)], "step": run.state.step, "cpu_s": cpu,
                "wall_s": self.wall_offset + time.perf_counter() - self.wall0,
                "audio_hours": run.state.audio_seconds / 3600, "epoch": run.state.epoch}
        self.pending_file(run).write_text(json.dumps(mark))
        run.save()
        self.record(run, mark)
        return len(self.done) >= len(self.marks)

    def record(self, run: Run, mark: dict) -> None:
        scores = score(run.model, run.tokenizer, self.dev)
        self.eval_cpu += scores["eval_cpu_s"]
        import resource
        entry = {**mark, **scores, "rss_mb": rss_mb(),
                 "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "threads": torch.get_num_threads()}
        append_log(self.out, entry)
        self.done.append(entry)
        print(f"[{self.variant}] {mark['mark']:g} CPU-min: step {mark['step']}, CTC CER {scores['ctc_cer']:.1f} %, "
              f"CTC WER {scores['ctc_wer']:.1f} %, attention WER {scores['att_wer']:.1f} %, RSS {entry['rss_mb']:.0f} MB",
              flush=True)


def fill_cache(spec: Spec, cache: Path) -> None:
    """Decode every training utterance into the int16 cache once (as a long run's later epochs read it)."""
    c = TrainConfig.load(None, [f"train={json.dumps(base_train_config(spec)['train'])}"])
    max_duration = base_train_config(spec).get("max_duration", c.max_duration)
    utterances = filter_by_duration([u for m in c.train for u in read_manifest(m)], max_duration, c.min_duration)
    missing = [i for i, u in enumerate(utterances) if not (cache / f"{u.id}.npy").exists()]  # SpeechDataset's names
    dataset = SpeechDataset(utterances, Tokenizer(resolve(spec.tokenizer)), cache_dir=cache)
    for i in missing:
        dataset.waveform(i)


def make_students(spec: Spec, out: Path) -> None:
    os.environ[OUT_ENV] = str(out)
    for name, arguments in spec.students.items():
        if not (out / name / "config.json").is_file():
            arguments = dict(arguments)
            student(str(arguments.pop("source", "base")), Tokenizer(resolve(spec.tokenizer)), out / name,
                    **arguments)


def run_variant(spec: Spec, name: str, dev: DevSet, out: Path) -> None:
    marks = Marks(name, spec.variant_marks(name), dev, out)
    if len(marks.done) >= len(spec.variant_marks(name)):
        print(f"[{name}] done ({len(marks.done)} marks in the log)")
        return
    c = variant_config(spec, name, out)
    if not read_log(out) or not any(r.get("variant") == name and "config" in r for r in read_log(out)):
        append_log(out, {"variant": name, "config": spec.variants[name], "set": spec.set})
    print(f"[{name}] {'resuming' if latest_checkpoint(Path(c.out_dir)) else 'starting'}: {spec.variants[name]}",
          flush=True)
    train(c, marks)


def score_reference(spec: Spec, dev: DevSet, out: Path) -> None:
    if not spec.reference_model or any(r.get("variant") == "reference" for r in read_log(out)):
        return
    model, tokenizer, _ = checkpoint.load_model(resolve(spec.reference_model))
    append_log(out, {"variant": "reference", "label": spec.reference_label, "model": spec.reference_model,
                     **score(model, tokenizer, dev)})


# --- report: tables and plot from the log ----------------------------------------------------------

def collect(spec: Spec, log: list[dict]) -> dict:
    """Per variant: its overrides and its mark records, in the spec's order (then any others in the log)."""
    names = list(spec.variants) + [r["variant"] for r in log if r["variant"] not in spec.variants]
    variants = {}
    for name in dict.fromkeys(names):
        if name == "reference":
            continue
        variants[name] = {"config": spec.variants.get(name, []),
                          "marks": [r for r in log if r["variant"] == name and "mark" in r]}
    reference = next((r for r in log if r["variant"] == "reference"), None)
    marks = sorted(set(spec.marks).union(*spec.marks_for.values()))
    return {"marks": marks, "variants": variants, "reference": reference}


def cell(records: list[dict], mark: float, key: str) -> str:
    found = [r for r in records if r["mark"] == mark]
    return f"{found[0][key]:.1f}" if found else "–"


def table(results: dict, key: str, title: str) -> list[str]:
    marks = results["marks"]
    lines = [f"{title}", "", "| variant | change over the base | " + " | ".join(f"{m:g} min" for m in marks) + " |",
             "|---|---|" + "---:|" * len(marks)]
    for name, v in results["variants"].items():
        change = ", ".join(f"`{x}`" for x in v["config"]) or "(base)"
        lines.append(f"| {name} | {change} | " + " | ".join(cell(v["marks"], m, key) for m in marks) + " |")
    ref = results["reference"]
    if ref:
        lines.append(f"| {ref['label']} | shipped model | {ref[key]:.1f} (all marks) |" + " |" * (len(marks) - 1))
    return lines + [""]


def throughput_table(results: dict) -> list[str]:
    lines = ["Progress at the last mark reached:", "",
             "| variant | mark | steps | audio h seen | wall min | eval CPU s | RSS MB | max RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, v in results["variants"].items():
        if v["marks"]:
            r = v["marks"][-1]
            lines.append(f"| {name} | {r['mark']:g} | {r['step']} | {r['audio_hours']:.2f} | {r['wall_s'] / 60:.1f} | "
                         f"{r['eval_cpu_s']:.0f} | {r['rss_mb']:.0f} | {r['max_rss_mb']:.0f} |")
    return lines + [""]


def markdown(results: dict, dev_note: str) -> str:
    lines = [f"Dev subset: {dev_note}. Columns: training CPU-minutes (process CPU time, evaluations excluded).", ""]
    lines += table(results, "ctc_cer", "CTC-greedy CER %:")
    lines += table(results, "ctc_wer", "CTC-greedy WER %:")
    lines += table(results, "att_wer", "Attention-greedy WER %:")
    return "\n".join(lines + throughput_table(results))


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=90)
    for name, v in results["variants"].items():
        if v["marks"]:
            ax.plot([r["cpu_s"] / 60 for r in v["marks"]], [r["ctc_cer"] for r in v["marks"]], marker="o", label=name)
    ref = results["reference"]
    if ref:
        ax.axhline(ref["ctc_cer"], color="gray", linestyle="--", label=ref["label"])
    ax.set_xlabel("training CPU-minutes (process time)")
    ax.set_ylabel("dev CTC-greedy CER %")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def report(spec: Spec, out: Path) -> dict:
    results = collect(spec, read_log(out))
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    note = f"the first {spec.dev_utterances} utterances of `{spec.dev}`"
    (out / "results.md").write_text(markdown(results, note))
    plot(results, out / "learning_curve.png")
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spec", type=Path, required=True, help="benchmark YAML (see Spec)")
    p.add_argument("--out", type=Path, required=True, help="run folder (outside the checkout)")
    p.add_argument("--only", action="append", default=[], help="run only these variants (repeatable)")
    p.add_argument("--report", action="store_true", help="only rewrite the tables and plot from the log")
    p.add_argument("--cache-dir", type=Path, help="decoded-audio cache (default OUT/audio-cache), filled before "
                   "the first variant so that no variant pays for decoding")
    args = p.parse_args(argv)
    spec = Spec.load(args.spec)
    torch.set_num_threads(spec.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spec.yaml").write_text(args.spec.read_text())
    if not args.report:
        cache = args.cache_dir or args.out / "audio-cache"
        spec.set = [*spec.set, f"cache_dir={cache}"]
        fill_cache(spec, cache)
        dev = DevSet.load(spec.dev, spec.dev_utterances)
        score_reference(spec, dev, args.out)
        make_students(spec, args.out)
        if args.only:
            for name in args.only:
                run_variant(spec, name, dev, args.out)
        else:  # one process per variant: its own CPU clock and memory (RSS) history
            for name in spec.variants:
                cmd = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:]), "--only", name]
                subprocess.run(cmd, check=True)
                report(spec, args.out)
    report(spec, args.out)
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
