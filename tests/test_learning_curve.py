"""bench/learning_curve.py end to end: two variants of a tiny recipe, a few CPU-seconds each, on real digits."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from speech_transformer.training.data import read_manifest, write_manifest
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import train_tokenizer

BENCH = Path(__file__).resolve().parents[1] / "bench" / "learning_curve.py"


def write_spec(tmp_path: Path, data_dir: Path, marks: list[float]) -> Path:
    train = read_manifest(data_dir / "fsdd" / "train.tsv")[::60][:40]
    write_manifest(train, tmp_path / "train.jsonl")
    write_manifest(read_manifest(data_dir / "fsdd" / "test.tsv")[:3], tmp_path / "dev.jsonl")
    train_tokenizer([normalize_transcript(u.text) for u in train] * 5, tmp_path / "tok.model", vocab_size=40)
    small = {"encoder_layers": 2, "decoder_layers": 1, "d_model": 64, "d_ff": 128, "subsampling_channels": 16}
    recipe = {"recipe": {"manifests": {"digits": str(tmp_path / "train.jsonl")}, "train_sets": ["digits"]},
              "train": {"preset": "tiny", "model": small, "batch_seconds": 6, "warmup_steps": 3, "lr": 0.003,
                        "spec_augment": None, "speed_perturb": [1.0]}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    stack = yaml.safe_dump({**small, "subsampling": "stack"}, default_flow_style=True).strip()
    spec = {"base": str(tmp_path / "recipe.yaml"), "tokenizer": str(tmp_path / "tok.model"), "marks": marks,
            "dev": str(tmp_path / "dev.jsonl"), "dev_utterances": 3, "threads": 1,
            "set": ["num_workers=0", "max_steps=100000", "save_every=0", "valid_every=0", "log_every=1",
                    "progress=false", "average_last=1"],
            "variants": {"base": [], "stack": [f"model={stack}"]}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    return tmp_path / "spec.yaml"


def bench(spec: Path, out: Path, *extra: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(BENCH), "--spec", str(spec), "--out", str(out), *extra], env=env,
                            capture_output=True, text=True, timeout=240, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result.stdout


def marks_of(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "mark" in r]


def test_two_variants_write_log_table_and_plot_and_resume_at_the_next_mark(tmp_path, data_dir):
    out = tmp_path / "out"
    spec = write_spec(tmp_path, data_dir, marks=[0.03])
    bench(spec, out)
    first = marks_of(out)
    assert [(r["variant"], r["mark"]) for r in first] == [("base", 0.03), ("stack", 0.03)]
    for r in first:
        assert r["cpu_s"] >= 0.03 * 60 and r["step"] > 0 and r["wall_s"] > 0 and r["rss_mb"] > 0
        assert r["ctc_cer"] >= 0 and r["att_wer"] >= 0 and r["eval_cpu_s"] > 0
    table = (out / "results.md").read_text()
    assert "| base | (base) |" in table and "| stack |" in table and "CTC-greedy CER %" in table
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    model = json.loads((out / "stack" / "train" / "model_config.json").read_text())
    assert model["subsampling"] == "stack"  # the variant's override reached the trainer

    # a later mark: each variant continues from its checkpoint at the first mark, with that mark's CPU count
    write_spec(tmp_path, data_dir, marks=[0.03, 0.06])
    stdout = bench(spec, out, "--only", "base", "--only", "stack")  # in one process (the first run: one each)
    assert stdout.count("resuming") == 2
    second = marks_of(out)
    assert second[:2] == first and [(r["variant"], r["mark"]) for r in second[2:]] == [("base", 0.06),
                                                                                        ("stack", 0.06)]
    for before, after in zip(first, second[2:]):
        assert after["step"] > before["step"] and after["cpu_s"] >= 0.06 * 60
    results = json.loads((out / "results.json").read_text())
    assert [len(v["marks"]) for v in results["variants"].values()] == [2, 2]


def test_report_only_rebuilds_tables_from_the_log(tmp_path, data_dir):
    spec = importlib.util.spec_from_file_location("learning_curve", BENCH)
    lc = importlib.util.module_from_spec(spec)
    sys.modules["learning_curve"] = lc  # dataclasses look their module up there
    spec.loader.exec_module(lc)
    out = tmp_path / "out"
    out.mkdir()
    rows = [{"variant": "a", "mark": m, "step": 10 * m, "cpu_s": 60 * m, "wall_s": 70 * m, "audio_hours": 0.1,
             "epoch": 0, "ctc_cer": 90 - m, "ctc_wer": 99.0, "att_wer": 100.0, "att_cer": 80.0, "dev_loss": 1.0,
             "example": "", "eval_cpu_s": 1.0, "rss_mb": 500.0, "max_rss_mb": 600.0} for m in (1, 2)]
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = lc.Spec(base="x", tokenizer="y", marks=[1, 2, 3], variants={"a": ["lr=0.01"], "b": []})
    results = lc.report(s, out)
    table = (out / "results.md").read_text()
    assert "| a | `lr=0.01` | 89.0 | 88.0 | – |" in table and "| b | (base) | – | – | – |" in table
    assert results["variants"]["a"]["marks"][1]["ctc_cer"] == 88.0


def test_a_variant_can_start_from_a_whisper_student_built_in_the_run_folder(tmp_path, data_dir):
    """`students:` builds OUT/<name> from a Whisper checkpoint once; `marks_for` gives that variant more marks."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()},
               tmp_path / "teacher.pt")
    spec_path = write_spec(tmp_path, data_dir, marks=[0.02])
    spec = yaml.safe_load(spec_path.read_text())
    spec["students"] = {"st": {"source": str(tmp_path / "teacher.pt"), "encoder_layers": 1, "decoder_layers": 1}}
    spec["variants"]["student"] = ["init_from=$LEARNING_CURVE_OUT/st", "model={}", "freeze=[encoder.blocks.0.]"]
    spec["marks_for"] = {"student": [0.02, 0.04]}
    spec_path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    bench(spec_path, out, "--only", "student")
    assert [(r["variant"], r["mark"]) for r in marks_of(out)] == [("student", 0.02), ("student", 0.04)]
    model = json.loads((out / "student" / "train" / "model_config.json").read_text())
    assert (model["d_model"], model["encoder_layers"], model["frontend"]) == (64, 1, "whisper_log_mel")
    assert "| student |" in (out / "results.md").read_text() and "0.04 min" in (out / "results.md").read_text()
