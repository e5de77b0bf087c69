#!/usr/bin/env python3
"""LibriSpeech recipe: numbered, resumable stages from download to a WER table.

    python run.py --config conf/mini.yaml                     # the shared train-clean-5 split, CPU is fine
    python run.py --config conf/ls100_small.yaml --nproc-per-node 8
    python run.py --config conf/ls960_base.yaml --data-dir /corpora   # use an existing LibriSpeech tree
    python run.py --config conf/mini.yaml --stage 6 --stop-stage 6    # only decode + score again

Stages (each skips work already done; training resumes from its last checkpoint):
  1 download   fetch and verify the OpenSLR archives, extract them (skipped for sets under --data-dir)
  2 manifests  one JSONL manifest per set in EXP/data/
  3 tokenizer  SentencePiece on the training transcripts -> EXP/tokenizer.model; with `student:` in the
               recipe, also EXP/student (Whisper's stem and first encoder blocks + new heads) to train from
  4 train      speech_transformer.training.trainer (under torchrun when --nproc-per-node > 1)
  5 average    average the last checkpoints -> EXP/model
  6 decode     beam search on each test set + score -> EXP/decode/<set>.json and EXP/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from speech_transformer.training import download
from speech_transformer.apps import evaluate
from speech_transformer.training.student import student
from speech_transformer.apps.cli import tokenizer as tokenizer_command
from speech_transformer.training.data import DATA_DIR_ENV, default_data_dir
from speech_transformer.text.tokenizer import Tokenizer
from speech_transformer.training.trainer import TrainConfig, export_model
from speech_transformer.training.trainer import main as train_main

HERE = Path(__file__).resolve().parent


def stage_banner(n: int, name: str) -> None:
    print(f"\n=== stage {n}: {name} ===", flush=True)


def manifests(recipe: dict, exp: Path) -> dict[str, str]:
    """Set name -> manifest path: given ones from the config, else EXP/data/<set>.jsonl."""
    given = {k: os.path.expandvars(v) for k, v in (recipe.get("manifests") or {}).items()}
    sets = set(recipe["train_sets"]) | {recipe["valid_set"]} | set(recipe["test_sets"])
    return {s: given.get(s, str(exp / "data" / f"{s}.jsonl")) for s in sorted(sets)}


def make_student(settings: dict, tokenizer_path: Path, directory: Path) -> None:
    """EXP/student: Whisper's stem and first encoder blocks with a new CTC head and decoder over our tokenizer."""
    if (directory / "config.json").is_file():
        print(f"{directory} exists")
        return
    settings = dict(settings)
    print(student(str(settings.pop("source", "base")), Tokenizer(str(tokenizer_path)), directory, **settings))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--exp", help="experiment folder (default exp/<config name>)")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--stop-stage", type=int, default=6)
    p.add_argument("--data-dir", help="existing tree with LibriSpeech/<set>/; missing sets are downloaded to EXP/download")
    p.add_argument("--mirror", action="append", default=[], help="OpenSLR mirror root URL")
    p.add_argument("--nproc-per-node", type=int, default=1)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training setting")
    args = p.parse_args(argv)
    os.environ.setdefault(DATA_DIR_ENV, str(default_data_dir()))
    config_path = Path(args.config).resolve()
    config = yaml.safe_load(config_path.read_text())
    recipe = config["recipe"]
    exp = Path(args.exp or Path("exp") / config_path.stem).resolve()
    exp.mkdir(parents=True, exist_ok=True)
    sets = manifests(recipe, exp)
    to_prepare = [s for s, path in sets.items() if not Path(path).exists()]
    run = lambda n: args.stage <= n <= args.stop_stage  # noqa: E731

    if run(1) and to_prepare:
        stage_banner(1, f"download + extract {' '.join(to_prepare)}")
        cmd = ["get", "--sets", *to_prepare, "--dest", str(exp / "download"), "--manifest-dir", str(exp / "data")]
        cmd += ["--data-dir", args.data_dir] if args.data_dir else []
        for m in args.mirror:
            cmd += ["--mirror", m]
        if download.main(cmd) != 0:
            return 1
    if run(2):
        stage_banner(2, "manifests")
        missing = [s for s, path in sets.items() if not Path(path).exists()]
        if missing:
            tree = args.data_dir or str(exp / "download")
            if download.main(["prepare", "--data-dir", tree, "--sets", *missing, "--manifest-dir", str(exp / "data")]):
                return 1
        for s, path in sets.items():
            print(f"{s}: {path}")
    tokenizer_path = exp / "tokenizer.model"
    if run(3):
        stage_banner(3, "tokenizer")
        if tokenizer_path.exists():
            print(f"{tokenizer_path} exists")
        else:
            tokenizer_command(["--manifest", *[sets[s] for s in recipe["train_sets"]], "--vocab-size",
                               str(recipe.get("vocab_size", 256)), "--type", recipe.get("token_type", "unigram"),
                               "--output", str(tokenizer_path)])
    student_dir = exp / "student"  # recipes that start from Whisper's encoder (`student:` in the recipe)
    if run(3) and recipe.get("student"):
        make_student(recipe["student"], tokenizer_path, student_dir)
    if run(4):
        stage_banner(4, "train")
        train_args = ["--config", str(exp / "train.yaml")]
        train_settings = dict(config.get("train") or {})
        train_settings.update(out_dir=str(exp / "train"), tokenizer=str(tokenizer_path),
                              train=[sets[s] for s in recipe["train_sets"]], valid=sets[recipe["valid_set"]])
        if recipe.get("student"):
            train_settings["init_from"] = str(student_dir)
        (exp / "train.yaml").write_text(yaml.safe_dump(train_settings, sort_keys=False))
        overrides = [a for s in args.set for a in ("--set", s)]
        if args.nproc_per_node > 1:
            cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={args.nproc_per_node}",
                   "-m", "speech_transformer.training.trainer", *train_args, *overrides]
            if subprocess.call(cmd) != 0:
                return 1
        elif train_main(train_args + overrides) != 0:
            return 1
    model_dir = exp / "model"
    if run(5):
        stage_banner(5, "average")
        export_model(exp / "train", int(TrainConfig.load(exp / "train.yaml").average_last), model_dir)
        print(f"{model_dir}")
    if run(6):
        stage_banner(6, "decode + score")
        decode = recipe.get("decode", {})
        spec = f"model:{model_dir},beam={decode.get('beam_size', 10)},ctc={decode.get('ctc_weight', 0.3)},name=ours"
        rows = []
        for s in recipe["test_sets"]:
            out = exp / "decode" / f"{s}.json"
            code = evaluate.main(["--data", sets[s], "--system", spec, "--output", str(out), "--no-progress"])
            if code == 1:
                return 1
            report = json.loads(out.read_text())
            rows.append((s, report))
        write_results(exp, rows, decode)
    return 0


def write_results(exp: Path, rows: list[tuple[str, dict]], decode: dict) -> None:
    """EXP/RESULTS.md: WER per set, as in ESPnet/icefall RESULTS files."""
    lines = [f"# Results: {exp.name}", "", f"Model: `{exp / 'model'}`; beam {decode.get('beam_size', 10)}, "
             f"CTC weight {decode.get('ctc_weight', 0.3)}; normaliser in each report.", "",
             "| set | utterances | WER % | CER % | RTF | errors |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        ours = r["systems"][0]
        lines.append(f"| {name} | {ours['n_utts']} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | {r['rtf']:.3f} | "
                     f"{ours['n_errors']} |")
    (exp / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
