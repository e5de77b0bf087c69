"""The LibriSpeech recipe's stages, end to end, on a handful of real utterances with a tiny model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from speech_transformer.training.data import read_manifest, write_manifest

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "librispeech"


def test_mini_recipe_runs_all_stages(tmp_path, data_dir):
    train = sorted(read_manifest(data_dir / "librispeech" / "train.tsv"), key=lambda u: u.duration)[:12]
    dev = sorted(read_manifest(data_dir / "librispeech" / "dev.tsv"), key=lambda u: u.duration)[:3]
    write_manifest(train, tmp_path / "train.jsonl")
    write_manifest(dev, tmp_path / "dev.jsonl")
    config = yaml.safe_load((RECIPE / "conf" / "mini.yaml").read_text())
    config["recipe"]["manifests"] = {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl")}
    config["recipe"]["vocab_size"] = 64
    config["recipe"]["decode"] = {"beam_size": 2, "ctc_weight": 0.3}
    config["train"].update(preset="tiny", model={"encoder_layers": 1, "decoder_layers": 1, "d_model": 64, "d_ff": 128},
                           max_steps=4, warmup_steps=2, save_every=2, valid_every=4, batch_seconds=40,
                           num_workers=0, progress=False, average_last=2)
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(config))
    exp = tmp_path / "exp"
    result = subprocess.run([sys.executable, str(RECIPE / "run.py"), "--config", str(tmp_path / "mini.yaml"),
                             "--exp", str(exp)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for stage in range(2, 7):
        assert f"=== stage {stage}:" in result.stdout
    assert (exp / "tokenizer.model").is_file() and (exp / "model" / "model.safetensors").is_file()
    results = (exp / "RESULTS.md").read_text()
    assert "| dev | 3 |" in results and "WER %" in results
    # a second run finds every stage done and still writes the table
    again = subprocess.run([sys.executable, str(RECIPE / "run.py"), "--config", str(tmp_path / "mini.yaml"),
                            "--exp", str(exp), "--stage", "3", "--stop-stage", "3"], capture_output=True, text=True)
    assert again.returncode == 0 and "tokenizer.model exists" in again.stdout


DEFAULT_RECIPE = RECIPE.parent / "default"


def test_default_recipe_trains_and_ships(tmp_path, data_dir):
    """recipes/default: conf/cpu_tiny.yaml on a few utterances of every manifest it lists, then `run.sh ship`."""
    config = yaml.safe_load((DEFAULT_RECIPE / "conf" / "cpu_tiny.yaml").read_text())
    recipe = config["recipe"]
    manifests = {}
    for name, path in recipe["manifests"].items():
        n = 4 if name in recipe["train_sets"] else 2
        utterances = sorted(read_manifest(path.replace("$SPEECH_TRANSFORMER_DATA", str(data_dir))),
                            key=lambda u: (u.duration, u.id))[:n]
        write_manifest(utterances, tmp_path / f"{name}.jsonl")
        manifests[name] = str(tmp_path / f"{name}.jsonl")
    recipe.update(manifests=manifests, vocab_size=48, decode={"beam_size": 2, "ctc_weight": 0.3})
    config["train"].update(model={"encoder_layers": 1, "decoder_layers": 1, "d_model": 64, "d_ff": 128},
                           max_steps=4, warmup_steps=2, save_every=2, valid_every=4, log_every=2, batch_seconds=30,
                           num_workers=0, progress=False, average_last=2, valid_utterances=2, max_minutes=0,
                           cache_dir=str(tmp_path / "audio-cache"))
    (tmp_path / "cpu_tiny.yaml").write_text(yaml.safe_dump(config))
    exp = tmp_path / "exp"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    run_sh = str(DEFAULT_RECIPE / "run.sh")
    result = subprocess.run(["bash", run_sh, "--config", str(tmp_path / "cpu_tiny.yaml"), "--exp", str(exp)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for stage in range(2, 7):
        assert f"=== stage {stage}:" in result.stdout
    train = yaml.safe_load((exp / "train.yaml").read_text())
    assert train["train"] == [manifests[s] for s in recipe["train_sets"]]
    assert train["valid"] == manifests["librispeech-dev"]
    results = (exp / "RESULTS.md").read_text()
    for name in recipe["test_sets"]:
        assert f"| {name} | 2 |" in results

    dest = tmp_path / "pretrained" / "default"
    reports = [a for name in recipe["test_sets"] for a in ("--report", f"{name}={exp / 'decode' / f'{name}.json'}")]
    shipped = subprocess.run(["bash", run_sh, "ship", "--exp", str(exp), "--dest", str(dest), "--hardware", "CI",
                              "--recipe-command", "run.sh on a tiny subset"] + reports,
                             capture_output=True, text=True, env=env, timeout=300)
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr
    card = (dest / "MODEL_CARD.md").read_text()
    assert "4 optimiser steps" in card and "| an4-test (`" in card and "| 4 |" in card
    for name in recipe["test_sets"]:
        report = json.loads((exp / "decode" / f"{name}.json").read_text())
        assert f"{100 * report['wer']:.2f}" in card


def test_cached_student_training_learns_and_keeps_the_frozen_blocks(tmp_path, data_dir):
    """recipes/default/train_cached.py: a Whisper student's frozen blocks cached once, the rest trained on
    the cache; the saved model still reads audio (validate at the mark), its frozen blocks unchanged."""
    import dataclasses

    import torch
    from whisper.model import ModelDimensions, Whisper

    from speech_transformer.model.checkpoint import load_model
    from speech_transformer.apps.whisper_cli import main as whisper_main
    from speech_transformer.pretrained import default_model_dir

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": Whisper(dims).state_dict()}, tmp_path / "t.pt")
    assert whisper_main([str(tmp_path / "t.pt"), "--student", "2", "-o", str(tmp_path / "student"),
                        "--tokenizer-from", str(default_model_dir())]) == 0
    write_manifest(read_manifest(data_dir / "fsdd" / "train.tsv")[::50][:30], tmp_path / "train.jsonl")
    write_manifest(read_manifest(data_dir / "fsdd" / "test.tsv")[:3], tmp_path / "dev.jsonl")
    script = RECIPE.parent / "default" / "train_cached.py"
    cmd = [sys.executable, str(script), "--student", str(tmp_path / "student"), "--out", str(tmp_path / "run"),
           "--frozen", "1", "--train", str(tmp_path / "train.jsonl"), "--dev", str(tmp_path / "dev.jsonl"),
           "--dev-utterances", "3", "--average", "2", "--minutes", "0.15", "--valid-every", "10", "--lr", "0.003"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert len(list((tmp_path / "run").glob("cache-*.safetensors"))) == 1
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log and log[-1]["step"] > log[0]["step"] >= 10 and log[-1]["loss"] < log[0]["loss"]
    assert all(r["train_cpu_s"] > 0 and 0 <= r["ctc_cer"] for r in log)
    start, last = load_model(tmp_path / "student")[0].state_dict(), load_model(tmp_path / "run" / "last")[0].state_dict()
    for name, value in start.items():
        frozen = name.startswith(("encoder.subsampling.", "encoder.positions.", "encoder.blocks.0."))
        assert torch.equal(last[name], value) == frozen, name
    # --average 2: the last two marks kept, their mean written and scored
    marks = sorted((tmp_path / "run" / "marks").glob("step-*"))
    assert [m.name for m in marks] == [f"step-{r['step']:06d}" for r in log[-2:]]
    averaged = load_model(tmp_path / "run" / "averaged")[0].state_dict()
    kept = [load_model(m)[0].state_dict() for m in marks]
    torch.testing.assert_close(averaged["ctc_head.weight"], (kept[0]["ctc_head.weight"] + kept[1]["ctc_head.weight"]) / 2)
    scored = json.loads((tmp_path / "run" / "averaged.json").read_text())
    assert scored["averaged"] == [m.name for m in marks] and 0 <= scored["valid_ctc_cer"]
    # again: the cache is read back, training continues from `last`
    again = subprocess.run(cmd[:-6] + ["--minutes", "0.05", "--valid-every", "5", "--lr", "0.003"],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert again.returncode == 0 and "cached cache-" not in again.stdout and "training from" in again.stdout
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] > log[-1]["step"]


def test_ship_reads_a_distilled_model_whose_run_folder_is_gone(data_dir):
    """ship.py's card facts from the model's own info and the recipe command's train.sh flags."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship", RECIPE.parent / "default" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    info = {"recipe": "recipes/distil/train.py", "train": ["an4/train.tsv", "fsdd/train.tsv"], "steps": 496,
            "train_cpu_s": 1221.1, "initialised_from": {"decoder": "whisper base decoder blocks [0, 1, 2, 3, 4, 5]"}}
    command = "OUT=student-v4e recipes/distil/train.sh --sets an4-train --train decoder --ctc-weight 0 --lr 2e-5"
    facts = ship.training_facts(Path("/nonexistent/student-v4e"), 496, info, command)
    assert facts["init"]["teacher_layers"] == [0, 1, 2, 3, 4, 5] and facts["steps"] == 496
    assert [s["n_utts"] for s in facts["sets"]] == [len(read_manifest(data_dir / m)) for m in info["train"]]
    settings = facts["sessions"][-1]["settings"]
    assert (settings["train"], settings["ctc_weight"], settings["lr"]) == ("decoder", 0.0, 2e-5)
    lines = ship.distil_training_lines({"training": facts, "recipe_command": command, "hardware": "CI"})
    assert any("the decoder (the CTC side is v3's, unchanged)" in line for line in lines)


def test_ship_reads_int4_group_rules_and_says_them_in_the_card():
    """--int4-group PREFIX=COLUMNS: parsed in order, refused when malformed, written into the card's weights line."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ship", RECIPE.parent / "default" / "ship.py")
    ship = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ship)
    assert ship.int4_groups(["decoder.blocks.=32", "encoder.=128"]) == {"decoder.blocks.": 32, "encoder.": 128}
    for bad in ("decoder.blocks.", "=32", "decoder.blocks.=31", "decoder.blocks.=x"):
        with pytest.raises(ship.ShipError, match="want PREFIX=COLUMNS"):
            ship.int4_groups([bad])
    from speech_transformer.pretrained import default_model_dir

    args = ship.build_parser().parse_args(["--model", str(default_model_dir()), "--dtype", "int8",
                                           "--int4-group", "decoder.blocks.=32", "--dest", "/nonexistent/x",
                                           "--hardware", "CI"])
    with pytest.raises(ship.ShipError, match="needs --dtype int4"):  # not silently ignored
        ship.ship(args, [])
    info = {"shipped": {"dtype": "int4", "int4_groups": {"decoder.blocks.": 32}}}
    assert ship.finer_groups(info) == ", `decoder.blocks.*` in groups of 32" and ship.finer_groups({}) == ""


def test_distil_sets_augmented_copies_and_outside_manifests(tmp_path, data_dir):
    """recipes/distil/train.py: "SET+augK" is copy K of SET (SET's labels, its own reproducible audio), and
    `--manifest NAME=PATH` adds a set from outside the shared data, read with absolute paths."""
    import importlib.util

    import numpy as np

    spec = importlib.util.spec_from_file_location("distil_train", RECIPE.parent / "distil" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.base_set("librispeech-train+aug2") == "librispeech-train" and train.augment_copy("x+aug2") == 2
    assert train.augment_copy("librispeech-train") is None and train.augment_copy("x+aug0") is None
    assert train.base_set("x+aug0") == "x+aug0"  # not a copy: an unknown set
    clips = read_manifest(data_dir / "librispeech" / "train.tsv")[:3]
    write_manifest(clips, tmp_path / "extra.jsonl")
    train.add_manifests([f"extra={tmp_path / 'extra.jsonl'}"])
    with pytest.raises(SystemExit, match="NAME=PATH"):
        train.add_manifests([f"other={tmp_path / 'missing.jsonl'}"])
    assert train.set_source("extra") == str(tmp_path / "extra.jsonl")
    assert train.set_source("an4-train") == "an4/train.tsv"
    run = tmp_path / "run"  # no labels: the set is learnt from its transcripts
    rows = train.read_labels(run, "extra+aug1")
    assert [r["text"] for r in rows] == [c.text for c in clips] and rows[0]["labels"] == "extra"
    augmenter = train.set_augmenter(run, "extra+aug1")
    one, again = (train.row_audio(run, rows[0], augmenter, 1) for _ in range(2))
    clean = train.row_audio(run, rows[0])
    assert np.array_equal(one, again) and not np.array_equal(one, train.row_audio(run, rows[0], augmenter, 2))
    assert abs(len(clean) - len(one)) <= 0.12 * len(clean) and not np.array_equal(clean[:len(one)], one[:len(clean)])
