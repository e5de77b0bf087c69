#!/usr/bin/env python3
"""Ship a trained model as the package's embedded default model, with a generated model card.

    python recipes/default/ship.py --hardware "1x H100 80GB" \\
        --report an4-test=reports/an4-test.json --report fsdd-test=reports/fsdd-test.json --regression

Steps: load the model directory (default recipes/default/exp/cpu_tiny/model), store its parameters
as float16 (`--dtype float32` keeps them; `--dtype int8` stores the matrices as int8 with per-row scales,
`checkpoint.quantize_int8`, `--dtype int4` in 4 bits per group of 64 columns, `checkpoint.quantize_int4`,
and the other parameters as float16; buffers such as the feature statistics
always keep their dtype, and `checkpoint.load_model` copies the values back into the float32 model), write it with
`checkpoint.save_model` (so config.json carries the right hashes) into a staging folder, optionally
measure the regression WERs on that copy (`--regression`, writes regression.json), write
MODEL_CARD.md from the training run (EXP/train.yaml, EXP/train/metrics.jsonl) and the
`speech-transformer evaluate --output X.json` reports given with `--report NAME=PATH`, and move the
result into `--dest` (default speech_transformer/pretrained/default).

Shipping the same weights again keeps the model files (so evaluation reports stay valid) and only
rewrites the card (and regression.json with `--regression`); new weights drop a stale regression.json.

Exit status 0 when shipped, 2 when refused (folder over `--max-mb`, an evaluation set overlapping the
training data, weights that overflow float16, bad inputs); nothing in `--dest` changes on refusal.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch

from speech_transformer.model import checkpoint
from speech_transformer import pretrained
from speech_transformer.training import synthetic
from speech_transformer.training.data import default_data_dir, filter_by_duration, read_manifest
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.apps import regression
from speech_transformer.recognition.recognizer import Recognizer
from speech_transformer.training.trainer import TrainConfig

HERE = Path(__file__).resolve().parent
CARD_FILE = "MODEL_CARD.md"
MODEL_FILES = (checkpoint.WEIGHTS_FILE, checkpoint.TOKENIZER_FILE, "tokenizer.tiktoken", checkpoint.CTC_TOKENIZER_FILE,
               checkpoint.CONFIG_FILE)  # those a model directory may have; a new model's replace them all
MANAGED_FILES = (*MODEL_FILES, CARD_FILE, regression.REGRESSION_FILE)
FLOAT16_MAX = 65504.0
# the shared corpora (../shared/data/README.md) by top-level folder: (what the speech is, licence)
DATA_SETS = {"librispeech": ("audiobook readings (LibriSpeech)", "CC BY 4.0"),
             "an4": ("spelled letters, digits and commands (AN4)", "CMU AN4 terms (BSD-style)"),
             "fsdd": ("isolated digits (FSDD)", "CC BY-SA 4.0"),
             "ljspeech": ("one reader of non-fiction (LJ Speech)", "public domain"),
             "arctic-cathy": ("one speaker reading ARCTIC prompts", "CC0 1.0"),
             "speech-commands": ("one-word commands of 1,412 speakers (Speech Commands v0.01)", "CC BY 4.0"),
             "wake-words": ("wake words: alexa, computer, jarvis, ... (Picovoice wake-word benchmark)", "Apache 2.0"),
             "synthetic": ("LJ Speech sentences and digits spoken by espeak-ng, flite and festival voices "
                           "(speech_transformer.training.synthetic)",
                           "text public domain; voices: espeak-ng GPL-3.0, flite and festival BSD-style "
                           "(their output is not restricted)")}


DTYPE_WORDS = {"int8": "int8 (matrices, symmetric per-row scales; vectors float16)",
               "int4": "4 bits (matrix rows in groups of 64 columns, a float16 scale and offset per group; "
                       "convolutions int8; vectors float16)"}


class ShipError(Exception):
    """Shipping refused: the message says why."""


# --- the model files ---------------------------------------------------------------------------

def stage_model(source: Path, stage: Path, dtype: str, decoding: dict, commands: dict | None = None,
                int4_groups: dict[str, int] | None = None) -> Path:
    """Write `source` into `stage` through `checkpoint.save_model`, parameters cast to `dtype` (int4: groups of
    64 columns, or `int4_groups` by name prefix), with its preferred decoding and its grammar-matching settings
    (`commands`, default: the source's own); paths of the training machine become names relative to the data
    folder or the repo."""
    model, tokenizer, config = checkpoint.load_model(source)
    if dtype in ("float16", "int8", "int4"):
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.detach().abs().max() > FLOAT16_MAX:
                raise ShipError(f"{source}: parameter {name} exceeds the float16 range; ship with --dtype float32")
            p.data = p.data.to(torch.float16)
    info = portable_info(config.get("info", {}))
    info["shipped"] = {"source": repo_name(source), "dtype": dtype, "source_weights_sha256": config.get("weights_sha256"),
                       **({"int4_groups": int4_groups} if dtype == "int4" and int4_groups else {})}
    commands = config.get("commands") if commands is None else commands
    ctc = checkpoint.model_ctc_tokenizer(source, config) if config.get("ctc_tokenizer") else None
    weights = dtype if dtype in ("int8", "int4") else "float32"  # float16 parameters are stored as they are
    return checkpoint.save_model(model, tokenizer, stage, info, decoding, weights, commands=commands, ctc_tokenizer=ctc,
                                 int4_groups=int4_groups)


def repo_name(path: Path) -> str:
    """A path relative to the repository where it lies inside it, else its last two parts."""
    try:
        return str(path.resolve().relative_to(HERE.parents[1].resolve()))
    except ValueError:
        return str(Path(*path.resolve().parts[-2:]))


def portable_info(info: dict) -> dict:
    """A model's info without the absolute paths of the machine it was trained on."""
    out = dict(info)
    for key in ("train", "valid"):
        if isinstance(out.get(key), list):
            out[key] = [data_name(p) for p in out[key]]
        elif isinstance(out.get(key), str):
            out[key] = data_name(out[key])
    if isinstance(out.get("shipped"), dict) and "source" in out["shipped"]:
        out["shipped"] = {**out["shipped"], "source": repo_name(Path(out["shipped"]["source"]))}
    return out


def preferred_decoding(spec: str, reports: list[dict]) -> dict:
    """`--decoding`: a JSON object of DecodingOptions fields, or `best:NAME[:SPEED]`, the decoding of our row
    with the lowest WER in report NAME among those at least SPEED (default 10) times faster than real time."""
    if not spec.startswith("best:"):
        try:
            return DecodingOptions.from_dict(json.loads(spec)).to_dict()
        except (json.JSONDecodeError, TypeError, ValueError) as e:
            raise ShipError(f"--decoding {spec!r}: not DecodingOptions fields as JSON ({e})") from None
    name, _, speed = spec[5:].partition(":")
    rows = [r for rep in reports if rep["name"] == name for r in rep["rows"] if r["ours"] and r["wer"] is not None]
    fast = [r for r in rows if r["rtf"] is not None and r["rtf"] <= 1.0 / float(speed or 10)]
    if not fast:
        raise ShipError(f"--decoding {spec!r}: no system of ours in report {name!r} is fast enough")
    return min(fast, key=lambda r: r["wer"])["decoding"]


def folder_bytes(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def same_model(a: Path, b: Path) -> bool:
    """Whether two model directories hold the same weights and tokenizer (by their recorded hashes)."""
    try:
        ca, cb = checkpoint.read_config(a), checkpoint.read_config(b)
    except checkpoint.CheckpointError:
        return False
    return (all(ca.get(k) and ca.get(k) == cb.get(k) for k in ("weights_sha256", "tokenizer_sha256"))
            and ca.get("ctc_tokenizer_sha256") == cb.get("ctc_tokenizer_sha256"))


def install(stage: Path, dest: Path, keep_model: bool) -> None:
    """Move the staged files into `dest`; config.json after the files it vouches for, and always (the same
    weights may ship with another preferred decoding or grammar-matching settings)."""
    dest.mkdir(parents=True, exist_ok=True)
    kept = [name for name in MODEL_FILES if name != checkpoint.CONFIG_FILE]
    names = ([] if keep_model else kept) + [checkpoint.CONFIG_FILE, CARD_FILE, regression.REGRESSION_FILE]
    for name in names:
        if (stage / name).is_file():
            os.chmod(stage / name, 0o644)  # staged in a private temp folder: readable by all once installed
            os.replace(stage / name, dest / name)
        elif name in kept or name == regression.REGRESSION_FILE:
            (dest / name).unlink(missing_ok=True)  # the old model's (another tokenizer), or measured other weights


# --- facts for the card ------------------------------------------------------------------------

def data_name(path: str | Path) -> str:
    """A manifest path relative to the shared data folder where it lies there; a synthetic set (made by
    `speech_transformer.training.synthetic`, anywhere) as synthetic/FOLDER."""
    if Path(path).name == synthetic.MANIFEST:
        return f"synthetic/{Path(path).parent.name}"
    try:
        return str(Path(path).resolve().relative_to(default_data_dir().resolve()))
    except ValueError:
        return str(path)


def model_step(info: dict) -> int | None:
    """The last training step in a model directory's weights: info.steps, else its newest averaged checkpoint."""
    if isinstance(info.get("steps"), int):
        return info["steps"]
    steps = [int(name.split("-")[-1]) for name in info.get("averaged", []) if name.split("-")[-1].isdigit()]
    return max(steps) if steps else None


def training_facts(exp: Path, up_to_step: int | None, info: dict, recipe_command: str) -> dict:
    """What the run trained on and for how long, from EXP/train.yaml and EXP/train/metrics.jsonl (the trainer's
    runs), or from a distillation run's folder (`distil_facts`), or, where that folder is gone, from what the
    distilled model's config.json says of its training (`info`).

    Only log records up to `up_to_step` count: training may have gone on after the shipped weights were taken.
    """
    if (exp / "init" / "config.json").is_file():
        return distil_facts(exp, up_to_step)
    if not exp.exists() and info.get("recipe") == "recipes/distil/train.py":
        return distil_facts_from_info(info, recipe_command)
    if not (exp / "train.yaml").is_file():
        raise ShipError(f"{exp / 'train.yaml'} not found: pass --exp, the recipe's experiment folder")
    c = TrainConfig.load(exp / "train.yaml")
    sets = []
    for manifest in c.train:
        utts = filter_by_duration(read_manifest(manifest), c.max_duration, c.min_duration)
        sets.append({"name": data_name(manifest), "n_utts": len(utts), "hours": sum(u.duration for u in utts) / 3600,
                     "audio": {str(Path(u.audio).resolve()) for u in utts}})
    metrics = exp / "train" / "metrics.jsonl"
    if not metrics.is_file():
        raise ShipError(f"{metrics} not found: the card needs the training log")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    logged = max((r["step"] for r in records), default=0)
    if up_to_step is not None and logged > up_to_step:
        print(f"ship.py: the training log goes on to step {logged}; the card counts steps up to {up_to_step}, "
              "where the shipped weights were taken", file=sys.stderr)
        records = [r for r in records if r["step"] <= up_to_step]
    steps, sessions, wall, audio, previous = 0, 0, 0.0, 0.0, None
    for r in (r for r in records if "elapsed_s" in r):
        if previous is None or r["elapsed_s"] < previous:  # elapsed_s restarts when a run resumes
            sessions += 1
            wall += previous or 0.0
            window = r["elapsed_s"]
        else:
            window = r["elapsed_s"] - previous
        audio += r.get("audio_seconds_per_second", 0.0) * window
        steps = max(steps, r["step"])
        previous = r["elapsed_s"]
    wall += previous or 0.0
    valid = [r for r in records if "valid_wer" in r]
    return {"kind": "trainer", "config": c, "sets": sets, "steps": steps, "sessions": sessions, "wall_s": wall,
            "audio_hours": audio / 3600, "last_valid": valid[-1] if valid else None}


def distil_module():
    """recipes/distil/train.py, imported from its file (recipes are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distil_train", HERE.parent / "distil" / "train.py")
    distil = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distil)
    return distil


def distil_facts(exp: Path, up_to_step: int | None) -> dict:
    """A distillation run (recipes/distil/train.py, EXP = its --out folder, beside the labelling run's labels/):
    the labelled sets it trained on, its settings per session, CPU time and dev curve up to `up_to_step`."""
    distil = distil_module()
    init = json.loads((exp / "init" / "config.json").read_text())
    sets = []
    read = lambda f: [json.loads(x) for x in (exp / f).read_text().splitlines() if x.strip()] if (exp / f).is_file() else []
    this_run = {s for r in read("sessions.jsonl") for s in r.get("sets", [])}
    for name in distil.trained_sets(exp):
        rows = distil.read_labels(exp.parent, name)
        labels = exp.parent / "labels" / name
        # who wrote what a set taught: the teacher (labels DONE), its human transcripts alone (--human), or only
        # the run of the --init-from model (not a set of this run's calls)
        source = ("inherited" if name not in this_run and init.get("init_from") else
                  "teacher" if (labels / "DONE").exists() else "human")
        sets.append({"name": distil.MANIFESTS[name], "n_utts": len(rows), "hours": sum(r["duration_s"] for r in rows) / 3600,
                     "audio": {str((exp.parent / "data" / r["root"] / r["audio"]).resolve()) for r in rows},
                     "teacher_wer": json.loads((labels / "summary.json").read_text()).get("corpus_wer_pct")
                     if source == "teacher" else None, "source": source})
    step = up_to_step if up_to_step is not None else 1 << 62
    curve = [r for r in read("log.jsonl") if r["step"] <= step]
    sessions = [r for r in read("sessions.jsonl") if r["step"] < max(step, 1)]  # a call from `step` on added nothing
    return {"kind": "distil", "init": init, "sets": sets, "steps": curve[-1]["step"] if curve else 0,
            "sessions": sessions, "curve": curve, "cpu_s": curve[-1]["train_cpu_s"] if curve else 0.0,
            "last_valid": curve[-1] if curve else None}


def distil_facts_from_info(info: dict, recipe_command: str) -> dict:
    """A distilled model whose run folder is gone: the manifests its info names (all their rows: subsampling
    and the teacher's per-set WER went with the folder), its steps and CPU time, and the settings that the
    train.sh/train.py flags of `recipe_command` give; no curve."""
    data = default_data_dir()
    sets = []
    for manifest in info["train"]:
        utts = read_manifest(data / manifest)
        sets.append({"name": manifest, "n_utts": len(utts), "hours": sum(u.duration for u in utts) / 3600,
                     "audio": {str(Path(u.audio).resolve()) for u in utts}, "teacher_wer": None})
    words = shlex.split(recipe_command)
    start = next((i + 1 for i, w in enumerate(words) if w.endswith(("distil/train.sh", "distil/train.py"))), None)
    if start is None:
        raise ShipError("--recipe-command must give the recipes/distil/train.sh command (its flags are the settings)")
    flags = list(itertools.takewhile(lambda w: w not in (";", "&&", "|"), words[start:]))
    distil = distil_module()
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(distil.parse_args(flags)).items()}
    return {"kind": "distil", "init": {"teacher_layers": distil.exported_teacher_layers(info)}, "sets": sets, "steps": info["steps"],
            "sessions": [{"step": info["steps"], "settings": settings}], "curve": [], "cpu_s": info["train_cpu_s"],
            "last_valid": None}


def decoding_label(decoding: dict) -> str:
    o = DecodingOptions.from_dict(decoding)
    if o.method == "ctc":
        return "CTC greedy"
    if o.method == "lexicon":
        lm = {"generic": "generic LM", None: "no LM", "none": "no LM"}.get(o.word_lm, f"LM {o.word_lm}")
        rescore = f", attention rescoring {o.rescore_weight:g}" if o.rescore_weight else ""
        return f"lexicon + {lm} (beam {o.beam_size}, LM weight {o.lm_weight:g}, word score {o.word_score:g}){rescore}"
    if o.beam_size == 1 and o.ctc_weight == 0:
        return "greedy (attention)"
    return f"beam {o.beam_size}, CTC weight {o.ctc_weight:g}"


def system_label(block: dict) -> tuple[str, bool]:
    """(label, is ours) for a system block of an evaluate report."""
    config = block.get("config", {})
    if config.get("class") != "SpeechTransformerSystem":
        version = config.get("version")
        return f"{block['name']} {version}" if version else block["name"], False
    return decoding_label(config.get("decoding", {})), True


def report_row(block: dict, dest: Path, source: Path) -> dict:
    """One system of a report: its label, whether it is ours and which copy it scored, its numbers."""
    label, ours = system_label(block)
    scored = "peer"
    if ours:
        model_dir = Path(block["config"]["model_dir"]).resolve()
        scored = ("shipped copy" if model_dir == dest.resolve() else "source" if model_dir == source.resolve()
                  else "peer")
        if scored == "peer":  # another model in this engine (Whisper base): a peer, named as evaluate named it
            label, ours = f"{block['name']}, {label}", False
    return {"label": label, "ours": ours, "scored": scored, "spec": system_spec(block, dest),
            "decoding": block["config"].get("decoding", {}) if ours else None,
            **{k: block.get(k) for k in ("wer", "cer", "rtf", "rtf_cpu", "n_utts", "n_errors")}}


def system_spec(block: dict, dest: Path) -> str:
    """The `--system` spec that evaluates this system again."""
    config = block["config"]
    if config["class"] == "PocketSphinxSystem":
        return "pocketsphinx"
    if config["class"] == "CommandSystem":
        return f"cmd:{block['name']}={config['command']}"
    if config["class"] == "FasterWhisperSystem":
        return (f"faster-whisper:{config['model']},beam={config['beam_size']},compute={config['compute_type']},"
                f"name={block['name']}")
    decoding = DecodingOptions.from_dict(config.get("decoding", {}))
    chosen = decoding.to_dict().get(decoding.method, {})
    options = [f"method={decoding.method}", *(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                             for k, v in chosen.items())]
    model_dir = Path(config["model_dir"])
    head = "default" if model_dir.resolve() == dest.resolve() else f"model:{model_dir}"
    return ",".join([head, *options, f"name={block['name']}"])


def evaluate_command(report: dict, rows: list[dict]) -> str:
    """The `speech-transformer evaluate` command line that makes this report again."""
    name = data_name(report["data"])
    data = f"../shared/data/{name}" if name != report["data"] else name
    try:
        limited = len(read_manifest(report["data"])) > report["n_utterances"]
    except (OSError, ValueError):
        limited = False
    return shlex.join(["speech-transformer", "evaluate", "--data", data,
                       *[a for r in rows for a in ("--system", r["spec"])],
                       *(["--limit", str(report["n_utterances"])] if limited else [])])


def read_reports(specs: list[str], train_audio: set[str], dest: Path, source: Path) -> list[dict]:
    """The `NAME=PATH` evaluate reports, checked against the training audio; reports of one NAME are merged."""
    out = []
    for spec in specs:
        name, eq, path = spec.partition("=")
        if not eq or not name or not path:
            raise ShipError(f"--report {spec!r}: expected NAME=PATH")
        try:
            report = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ShipError(f"--report {spec!r}: cannot read the report ({e})") from None
        try:
            scored = {str(Path(u["audio"]).resolve()) for b in report["systems"] for u in b["utterances"] + b["errors"]}
            rows = [report_row(b, dest, source) for b in report["systems"]]
            summary = {"data": data_name(report["data"]), "normalizer": report["normalizer"]["name"],
                       "commands": [evaluate_command(report, rows)]}
        except (KeyError, TypeError) as e:
            raise ShipError(f"--report {spec!r}: not a `speech-transformer evaluate --output` report ({e!r})") from None
        if overlap := sorted(scored & train_audio):
            raise ShipError(f"report {name}: {len(overlap)} scored file(s) are in the training data, "
                            f"e.g. {overlap[0]}; the card reports held-out sets only")
        if same := next((r for r in out if r["name"] == name), None):  # more systems on the same set
            if same["data"] != summary["data"]:
                raise ShipError(f"reports named {name} score different data: {same['data']} and {summary['data']}")
            same["rows"] += rows
            same["commands"] += summary["commands"]
        else:
            out.append({"name": name, **summary, "rows": rows})
    return out


def cpu_description() -> str:
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
    except OSError:
        models = []
    return f"{models[0] if models else 'CPU'}, {os.cpu_count()} cores"


# --- the card ----------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"  # None or NaN: not measured


def _num(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _duration(seconds: float) -> str:
    h, m = divmod(round(seconds / 60), 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def worse_than_peers(reports: list[dict]) -> list[str]:
    """'set (peer, ...)' for each set where a peer's WER is below our best on the same number of utterances."""
    out = []
    for r in reports:
        better = []
        for peer in (row for row in r["rows"] if not row["ours"] and row["wer"] is not None):
            ours = [row["wer"] for row in r["rows"] if row["ours"] and row["n_utts"] == peer["n_utts"]]
            if ours and peer["wer"] < min(ours):
                better.append(peer["label"])
        if better:
            out.append(f"{r['name']} ({', '.join(better)})")
    return out


def domains(sets: list[dict]) -> str:
    """What the training speech is, from the manifests' top-level folders."""
    names = dict.fromkeys(DATA_SETS.get(s["name"].split("/")[0], (s["name"], ""))[0] for s in sets)
    return "; ".join(names)


def finer_groups(info: dict) -> str:
    """The card's words for `--int4-group` rules, "" when there were none."""
    groups = info.get("shipped", {}).get("int4_groups") or {}
    return "".join(f", `{prefix}*` in groups of {columns}" for prefix, columns in groups.items())


def render_card(facts: dict) -> str:
    """MODEL_CARD.md from the facts gathered by `ship`."""
    t, model = facts["training"], facts["model"]
    distilled = t["kind"] == "distil"
    lines = [
        "# speech_transformer default model", "",
        "The model `speech-transformer transcribe`, `evaluate` and the demo use when no `--model` is given "
        f"(`Recognizer.from_dir(None)`). Generated by `recipes/default/ship.py` on {facts['date']}.", "",
        "## Model", "", *(distil_model_lines(facts) if distilled else trainer_model_lines(facts)),
        f"- Parameters: {model['params']:,}.",
        f"- Weights: `model.safetensors`, parameters stored as {DTYPE_WORDS.get(model['dtype'], model['dtype'])}"
        f"{finer_groups(model['info'])} ({model['weights_mb']:.1f} MB; "
        f"loaded as float32); averaged checkpoints {', '.join(model['info'].get('averaged', [])) or '-'}.",
        f"- Shipped folder: {facts['folder_mb']:.1f} MB.", "",
        "## Training data", "",
        "Training manifests (paths relative to the shared data folder, `../shared/data`)"
        + (", utterances up to 30 s (the encoder's position table):" if distilled else
           f", utterances of {t['config'].min_duration:g} to {t['config'].max_duration:g} s:"), "",
        "| manifest | utterances | hours | licence |" + (" teacher WER % |" if distilled else ""),
        "|---|---:|---:|---|" + ("---:|" if distilled else "")]
    for s in t["sets"]:
        lines.append(f"| `{s['name']}` | {s['n_utts']:,} | {s['hours']:.2f} | "
                     f"{DATA_SETS.get(s['name'].split('/')[0], ('', 'see the data README'))[1]} |"
                     + ((f" {s['teacher_wer']:.2f} |" if s["teacher_wer"] is not None else " - |") if distilled else ""))
    lines += [f"| total | {sum(s['n_utts'] for s in t['sets']):,} | {sum(s['hours'] for s in t['sets']):.2f} | |"
              + (" |" if distilled else ""), ""]
    if facts["reports"]:
        held_out = ", ".join(f"`{r['data']}`" for r in facts["reports"])
        lines.append(f"None of the audio scored under Evaluation ({held_out}) is in these manifests "
                     "(checked by ship.py).")
    lines += distil_training_lines(facts) if distilled else trainer_training_lines(facts)
    lines += ["", "## Evaluation", ""]
    if facts["reports"]:
        lines += [f"`speech-transformer evaluate` reports, normaliser `{facts['reports'][0]['normalizer']}`; "
                  f"RTF = processing seconds / audio seconds (model loading excluded), measured on "
                  f"{facts['eval_hardware']}.", "",
                  "| test set | utterances | system | scored | WER % | CER % | RTF | CPU RTF |",
                  "|---|---:|---|---|---:|---:|---:|---:|"]
        for r in facts["reports"]:
            for row in r["rows"]:
                failed = f" ({row['n_errors']} failed)" if row["n_errors"] else ""
                lines.append(f"| {r['name']} (`{r['data']}`) | {row['n_utts']}{failed} | {row['label']} | "
                             f"{row['scored']} | {_pct(row['wer'])} | {_pct(row['cer'])} | {_num(row['rtf'])} | "
                             f"{_num(row['rtf_cpu'])} |")
    else:
        lines.append("No evaluation reports were given to ship.py.")
    if reg := facts["regression"]:
        lines += ["", f"Regression check (`tests/test_pretrained.py`, {decoding_label(reg['decoding'])}): "
                  + "; ".join(f"{name} {s['n_utts']} utterances, WER {_pct(s['wer'])} % (bound {_pct(s['max_wer'])} %)"
                              for name, s in reg["sets"].items()) + "."]
    lines += ["", "## Limitations", "",
              f"- Trained on {sum(s['hours'] for s in t['sets']):.1f} h of speech: {domains(t['sets'])}. "
              "Conversational, noisy, far-field or strongly accented speech is out of domain; expect far higher "
              "error rates there.", output_line(facts),
              "- Utterances up to " + ("30" if distilled else f"{t['config'].max_duration:g}") + " s in training: "
              "longer audio relies on the voice-activity chunking of `speech-transformer transcribe`."]
    if worse := worse_than_peers(facts["reports"]):
        lines.append(f"- Worse than a peer system on: {'; '.join(worse)}.")
    lines += [f"- {x}" for x in facts["limitations"]]
    commands = [c for r in facts["reports"] for c in r["commands"]]
    lines += ["", "## Reproduce", "", "```bash", facts["recipe_command"], *commands, facts["ship_command"], "```", ""]
    return "\n".join(lines)


def output_line(facts: dict) -> str:
    if facts["training"]["kind"] == "distil" and facts.get("decoding", {}).get("method", "attention") == "attention":
        return ("- English only. The attention decoder writes cased, punctuated text in Whisper's style (numbers as "
                "Whisper writes them); `method=ctc` and `method=lexicon` write upper-case words without punctuation "
                "(the CTC head's pieces).")
    return "- English only; output is upper-case words without punctuation; " + (
        "the preferred decoding spells only words of its lexicon (pocketsphinx's US-English LM, 72k words; "
        "add your own with `--words`)." if facts.get("decoding", {}).get("method") == "lexicon"
        else "no external language model.")


def trainer_model_lines(facts: dict) -> list[str]:
    mc, cfg = facts["model"]["config"], facts["training"]["config"]
    return [f"- Architecture: `{cfg.preset}` preset, encoder-decoder transformer"
            f"{' with a CTC head' if mc.get('ctc', True) else ''}: d_model {mc['d_model']}, "
            f"{mc['encoder_layers']} encoder + {mc['decoder_layers']} decoder layers, {mc['n_heads']} heads, "
            f"feed-forward {mc['d_ff']}, {mc.get('subsampling', 'conv2d')} subsampling; "
            f"{mc['n_mels']}-bin log-mel input at 16 kHz.",
            f"- Vocabulary: {mc['vocab_size']}-piece SentencePiece (`tokenizer.model`)."]


def distil_model_lines(facts: dict) -> list[str]:
    mc, init = facts["model"]["config"], facts["training"]["init"]
    branch = mc.get("ctc_branch_layers", 0)
    silence = mc.get("trailing_silence", 0.0)
    return [f"- Architecture: a student distilled from Whisper base: Whisper base's encoder ({mc['encoder_layers']} "
            f"blocks, d_model {mc['d_model']}, {mc['n_heads']} heads) over the audio as given (no 30 s window: "
            f"its cost grows with the audio" + (f"; {silence:g} s of silence appended to each input, where the "
                                                "decoder sees the speech end" if silence else "") + "), "
            + (f"a CTC head reading its own copy of the top {branch} block(s) (v3's, trained for CTC) beside the "
               "teacher's, " if branch else "a CTC head, ")
            + f"and a {mc['decoder_layers']}-block decoder initialised from the teacher's decoder blocks "
            f"{init.get('teacher_layers')}; {mc['n_mels']}-bin log-mel input at 16 kHz (Whisper's front end).",
            f"- Vocabularies: the decoder's, Whisper's byte-level BPE pruned to {mc['vocab_size']:,} of 51,865 "
            f"tokens (`tokenizer.tiktoken`: every token of the teacher's transcripts and of the training sets' "
            f"words, all 256 single bytes, so any text still encodes); the CTC head's, "
            f"{mc['ctc_vocab_size']} SentencePiece pieces (`ctc_tokenizer.model`, v3's)."]


def trainer_training_lines(facts: dict) -> list[str]:
    t, cfg = facts["training"], facts["training"]["config"]
    lines = [f"Validation during training: the first {cfg.valid_utterances} utterances of "
             f"`{data_name(cfg.valid)}`."] if cfg.valid else []
    lines += [f"Augmentation: speed perturbation {cfg.speed_perturb}, SpecAugment {cfg.spec_augment}.", "",
              "## Training", "",
              f"- Recipe: `{facts['recipe_command']}`.",
              f"- {t['steps']:,} optimiser steps of {cfg.batch_seconds:g} s padded audio, {cfg.schedule} schedule, "
              f"peak learning rate {cfg.lr:g}, {cfg.warmup_steps} warmup steps, CTC weight {cfg.ctc_weight:g}, "
              f"label smoothing {cfg.label_smoothing:g}.",
              f"- Training time: {_duration(t['wall_s'])} of wall time in {t['sessions']} session(s); "
              f"{t['audio_hours']:.1f} h of (speed-perturbed) audio processed, about "
              f"{t['audio_hours'] / max(sum(s['hours'] for s in t['sets']), 1e-9):.1f} passes over the data.",
              f"- Hardware: {facts['hardware']}."]
    if v := t["last_valid"]:
        lines.append(f"- Last validation during training (step {v['step']}, first {cfg.valid_utterances} utterances "
                     f"of `{data_name(cfg.valid)}`, greedy decoding of the weights of that step): "
                     f"WER {_pct(v['valid_wer'])} %, CER {_pct(v['valid_cer'])} %.")
    return lines


TRAINED = {"all": "block 5, the final LayerNorm, the CTC head and the decoder",
           "heads": "the CTC head and the decoder", "decoder": "the decoder (the CTC side is v3's, unchanged)",
           "ctc": "the CTC head"}  # recipes/distil/train.py --train


def distil_training_lines(facts: dict) -> list[str]:
    t = facts["training"]
    settings = t["sessions"][-1]["settings"] if t["sessions"] else {}
    human, inherited = ([s["name"] for s in t["sets"] if s.get("source") == kind] for kind in ("human", "inherited"))
    lines = ["The teacher, Whisper base in this engine, labelled " + ("every utterance" if not human else
             "the utterances of the sets with a teacher WER") + " (recipes/distil/label.py: greedy, "
             "30 s window; its transcripts and top-32 token distributions). Teacher WER is against the human "
             "transcripts (english-v1)" + ("; not known here: it was in the run folder, which is gone (ship.py "
                                           "read the model's own record of its training)." if not t["curve"]
                                           and all(s["teacher_wer"] is None for s in t["sets"]) else ".")
             + (f" Not labelled, learnt from their human transcripts alone (`--human`): {', '.join(human)}."
                if human else "")
             + (f" Learnt only in the run of the model this one started from (`--init-from`), labelled there: "
                f"{', '.join(inherited)}." if inherited else ""),
             "", "## Training", "",
             f"- Recipe: `{facts['recipe_command']}`.",
             "- Frozen: the stem and encoder blocks 0-4 (their output cached once per utterance); trained: "
             + TRAINED.get(settings.get("train", "all"), TRAINED["all"]) + "."]
    if settings:
        lines.append((f"- Losses: CTC on the human transcript (weight {settings['ctc_weight']:g}); " if
                      settings["ctc_weight"] > 0 and settings.get("train") != "decoder" else "- Losses: ") +
                     "for the decoder, "
                     f"where the teacher's transcript is within {100 * settings['max_wer']:g} % WER of the human one, "
                     f"{settings['kl_weight']:g} x cross-entropy to the teacher's distributions + "
                     f"{1 - settings['kl_weight']:g} x cross-entropy on its tokens, elsewhere cross-entropy on the "
                     "human transcript in Whisper's style" + (
                         f" (of {settings['human_style']} only: other sets learn from the teacher alone)"
                         if settings.get("human_style") else "") + ". AdamW, learning rate "
                     f"{settings['lr']:g} after {settings['warmup']} warmup steps, {settings['frames']} encoder "
                     "frames per batch, 2 time masks on the cached states.")
    lines += [f"- {t['steps']:,} optimiser steps, {t['cpu_s'] / 3600:.2f} CPU-hours of training (one thread) in "
              f"{len(t['sessions'])} call(s); curve in `recipes/distil/RESULTS.md`.",
              f"- Hardware: {facts['hardware']}."]
    if v := t["last_valid"]:
        lines.append(f"- Last evaluation during training (step {v['step']}, first 40 utterances of "
                     f"`librispeech/dev.tsv`, greedy): WER {v['wer']:.2f} %"
                     + (f", CTC greedy {v['ctc_wer']:.2f} %." if "ctc_wer" in v else "."))
    return lines


# --- the command ---------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp", type=Path, default=HERE / "exp" / "cpu_tiny", help="the recipe's experiment folder")
    p.add_argument("--model", type=Path, help="the model directory to ship (default EXP/model)")
    p.add_argument("--dest", type=Path, default=pretrained.PRETRAINED_DIR / pretrained.DEFAULT_MODEL,
                   help="where to ship it (default: speech_transformer/pretrained/default)")
    p.add_argument("--dtype", choices=["float16", "float32", "int8", "int4"], default="float16",
                   help="how parameters are stored (int8: matrices int8 with per-row scales, the rest float16)")
    p.add_argument("--int4-group", action="append", default=[], metavar="PREFIX=COLUMNS",
                   help="with --dtype int4: groups of COLUMNS for the matrices whose names start with PREFIX "
                        "(repeatable; the first match wins; others 64), e.g. decoder.blocks.=32")
    p.add_argument("--report", action="append", default=[], metavar="NAME=PATH",
                   help="a `speech-transformer evaluate --output` JSON report (repeatable; the same NAME twice "
                        "merges the systems of two reports on one set, e.g. ours and a peer's)")
    p.add_argument("--hardware", required=True, help="what the model was trained on, e.g. '1x NVIDIA H100 80GB'")
    p.add_argument("--eval-hardware", default=None, help="where the reports were measured (default: this machine)")
    p.add_argument("--recipe-command", default=None,
                   help="how the model was trained (default: run.sh --config conf/<EXP name>.yaml)")
    p.add_argument("--limitation", action="append", default=[], help="an extra line for the card's limitations")
    p.add_argument("--regression", action="store_true", help="measure and store the regression WERs")
    p.add_argument("--margin", type=float, default=regression.DEFAULT_MARGIN, help="regression bound - measured WER")
    p.add_argument("--decoding", default='{"beam_size": 4, "ctc_weight": 0.3}',
                   help="the preferred decoding stored in config.json: DecodingOptions fields as JSON, or best:NAME[:SPEED] "
                        "= our fastest-enough lowest-WER system of report NAME (tune on dev; default: %(default)s)")
    p.add_argument("--commands", type=json.loads, default=None,
                   help="the grammar matcher's settings stored in config.json: MatchOptions fields as JSON, e.g. "
                        '\'{"ctc_weight": 0.85, "reject_threshold": -21.6}\' (bench/commands.py --tune); '
                        "default: the source model's")
    p.add_argument("--max-mb", type=float, default=40.0, help="refuse a shipped folder larger than this (10^6 bytes)")
    return p


def ship(args: argparse.Namespace, argv: list[str]) -> Path:
    source = args.model or args.exp / "model"
    dest = args.dest
    if not (source / checkpoint.CONFIG_FILE).is_file():
        raise ShipError(f"{source}: not a model directory (train it first: recipes/default/run.sh)")
    if args.int4_group and args.dtype != "int4":
        raise ShipError(f"--int4-group rounds matrices to 4 bits: it needs --dtype int4 (not {args.dtype})")
    if dest.is_dir() and (unmanaged := sorted(f.name for f in dest.iterdir() if f.name not in MANAGED_FILES)):
        raise ShipError(f"{dest} holds files ship.py does not manage: {unmanaged}; remove them first")
    recipe_command = args.recipe_command or default_recipe_command(args.exp)
    info = checkpoint.read_config(source).get("info", {})
    training = training_facts(args.exp, model_step(info), info, recipe_command)
    train_audio = set().union(*(s["audio"] for s in training["sets"]))
    reports = read_reports(args.report, train_audio, dest, source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".ship-", dir=dest.parent))
    try:
        stage = stage_model(source, work / "model", args.dtype, preferred_decoding(args.decoding, reports),
                            args.commands, int4_groups(args.int4_group))
        check_size(stage, args.max_mb)
        keep_model = same_model(stage, dest)
        model, tokenizer, config = checkpoint.load_model(stage)  # what users will load: float32 parameters
        if args.regression:
            preferred = DecodingOptions.from_dict(checkpoint.read_config(stage).get("decoding"))  # its own
            measured = regression.measure(Recognizer.from_dir(stage), default_data_dir())  # as users load it
            regression.write(stage, measured, preferred, margin=args.margin)
        elif keep_model and (dest / regression.REGRESSION_FILE).is_file():
            shutil.copy2(dest / regression.REGRESSION_FILE, stage / regression.REGRESSION_FILE)
        facts = {
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "training": training, "reports": reports,
            "model": {"config": config["model"], "params": model.num_parameters(), "dtype": args.dtype,
                      "info": config.get("info", {}),
                      "weights_mb": (stage / checkpoint.WEIGHTS_FILE).stat().st_size / 1e6},
            "decoding": config.get("decoding", {}),
            "hardware": args.hardware, "eval_hardware": args.eval_hardware or cpu_description(),
            "recipe_command": recipe_command,
            "ship_command": shlex.join(["python", "recipes/default/ship.py", *argv]),
            "regression": regression.read(stage) if (stage / regression.REGRESSION_FILE).is_file() else None,
            "limitations": args.limitation, "folder_mb": 0.0}
        (stage / CARD_FILE).write_text(render_card(facts))
        facts["folder_mb"] = folder_bytes(stage) / 1e6  # the card included
        (stage / CARD_FILE).write_text(render_card(facts))
        check_size(stage, args.max_mb)
        install(stage, dest, keep_model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return dest


def int4_groups(specs: list[str]) -> dict[str, int]:
    """--int4-group PREFIX=COLUMNS options -> {prefix: columns}, in the order given."""
    out = {}
    for spec in specs:
        prefix, _, columns = spec.rpartition("=")
        if not prefix or not columns.isdigit() or int(columns) % 2 or int(columns) < 2:
            raise ShipError(f"--int4-group {spec!r}: want PREFIX=COLUMNS, COLUMNS even (e.g. decoder.blocks.=32)")
        out[prefix] = int(columns)
    return out


def default_recipe_command(exp: Path) -> str:
    """run.sh with EXP's config, by the recipe's convention that EXP is exp/<config name>."""
    if (HERE / "conf" / f"{exp.name}.yaml").is_file():
        return f"cd recipes/default && ./run.sh --config conf/{exp.name}.yaml"
    raise ShipError(f"no recipes/default/conf/{exp.name}.yaml for {exp}: say how it was trained with --recipe-command")


def check_size(directory: Path, max_mb: float) -> None:
    size = folder_bytes(directory)
    if size > max_mb * 1e6:
        raise ShipError(f"the shipped folder would be {size / 1e6:.1f} MB, over the {max_mb:g} MB limit "
                        "(a wheel must stay small): ship a smaller model, or float16 or int8 weights")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        dest = ship(args, argv)
    except (ShipError, checkpoint.CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"ship.py: refused: {e}", file=sys.stderr)
        return 2
    print(f"shipped {dest} ({folder_bytes(dest) / 1e6:.1f} MB); card: {dest / CARD_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
