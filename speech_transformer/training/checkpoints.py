"""A training run's checkpoints: model + optimiser (safetensors), progress and RNG states (JSON + safetensors),
written so that a resume continues exactly (on CPU, to bit-identical parameters); the last ones averaged into a
model directory."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from speech_transformer.model import checkpoint
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer
from speech_transformer.text.tokenizer import Tokenizer
from speech_transformer.training.config import TrainConfig, TrainState


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def save_training_checkpoint(out_dir: Path, model, optimizer, state: TrainState, rank: int, world: int,
                             keep_last: int) -> Path:
    root = out_dir / "checkpoints"
    final = root / f"step-{state.step:08d}"
    tmp = root / f".step-{state.step:08d}.tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier(world)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    checkpoint.save_state_dict(rng, tmp / f"rng-{rank}.safetensors")
    (tmp / f"rng-{rank}.json").write_text(json.dumps({"python": random.getstate(),
                                                        "numpy": _numpy_state_to_json(np.random.get_state())}))
    if rank == 0:
        checkpoint.save_state_dict(model.state_dict(), tmp / checkpoint.WEIGHTS_FILE)
        opt = optimizer.state_dict()
        tensors = {f"{i}.{k}": v for i, s in opt["state"].items() for k, v in s.items()}
        checkpoint.save_state_dict(tensors, tmp / "optimizer.safetensors")
        (tmp / "trainer.json").write_text(json.dumps({"state": asdict(state), "param_groups": opt["param_groups"],
                                                       "world_size": world}, indent=1))
    barrier(world)
    if rank == 0:
        os.replace(tmp, final)  # the checkpoint appears complete or not at all
        for old in sorted(root.glob("step-*"))[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old)
    barrier(world)
    return final


def _numpy_state_to_json(s) -> list:
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((out_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_training_checkpoint(path: Path, model, optimizer, rank: int) -> TrainState:
    meta = json.loads((path / "trainer.json").read_text())
    checkpoint.load_weights(model, checkpoint.load_state_dict(path / checkpoint.WEIGHTS_FILE), path)
    tensors = checkpoint.load_state_dict(path / "optimizer.safetensors")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for group in meta["param_groups"]:
        group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    rng_file = path / f"rng-{rank}.safetensors"
    if rng_file.exists():  # the same rank's RNG; a resume with another world size starts fresh streams
        rng = checkpoint.load_state_dict(rng_file)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        py = json.loads((path / f"rng-{rank}.json").read_text())
        random.setstate((py["python"][0], tuple(py["python"][1]), py["python"][2]))
        n = py["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    return TrainState(**meta["state"])


def export_model(out_dir: Path, last: int, output: Path, info: dict | None = None) -> Path:
    """Average the last `last` checkpoints of a training run into a model directory."""
    c = TrainConfig.load(out_dir / "config.yaml")
    tokenizer = checkpoint.model_tokenizer(c.init_from) if c.init_from else Tokenizer(c.tokenizer)
    chosen = sorted((out_dir / "checkpoints").glob("step-*"))[-max(1, last):]
    if not chosen:
        raise checkpoint.CheckpointError(f"no checkpoints in {out_dir / 'checkpoints'}")
    model = SpeechTransformer(ModelConfig.from_dict(json.loads((out_dir / "model_config.json").read_text())))
    checkpoint.load_weights(model, checkpoint.average_state_dicts([p / checkpoint.WEIGHTS_FILE for p in chosen]),
                            out_dir)
    info = {"averaged": [p.name for p in chosen], "train": c.train, "preset": c.preset, **(info or {})}
    return checkpoint.save_model(model, tokenizer, output, info)
