"""A training run's settings (`TrainConfig`, a YAML file plus `--set key=value`) and its progress (`TrainState`)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from speech_transformer.training.data import DATA_DIR_ENV, default_data_dir


@dataclass
class TrainConfig:
    out_dir: str = "exp/run"
    train: list[str] = field(default_factory=list)  # manifests (TSV, JSONL or LibriSpeech folders)
    valid: str | None = None
    tokenizer: str = ""  # SentencePiece .model
    init_from: str = ""  # a model directory to fine-tune (ours, or an imported Whisper model): its architecture,
    # weights and tokenizer replace preset/tokenizer; `model` overrides still apply (e.g. dropout)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes left as they are, e.g. the lower
    # blocks of an encoder initialised from Whisper ("encoder.subsampling.", "encoder.blocks.0.")
    lr_scale: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> learning-rate factor,
    # e.g. {"encoder.": 0.03}: pretrained blocks move slowly while new heads learn at the full rate
    # model
    preset: str = "tiny"
    model: dict = field(default_factory=dict)  # ModelConfig overrides, e.g. {dropout: 0.1}
    # data
    batch_seconds: float = 200.0  # padded audio per optimiser step, over all ranks and accumulation
    max_duration: float = 20.0
    min_duration: float = 0.1
    speed_perturb: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    spec_augment: dict | None = field(default_factory=dict)  # SpecAugmentConfig fields; null disables
    num_workers: int = 2
    cache_dir: str | None = None  # decoded-audio cache (int16 .npy)
    sorted_first_epoch: bool = True
    stats_utterances: int = 200  # utterances used for the global feature mean/std
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 500
    schedule: str = "noam"  # "noam" (inverse square root), "cosine" or "constant" after warmup
    max_steps: int = 10_000
    max_minutes: float = 0.0  # stop (with a checkpoint) after this much wall time; 0 = no limit
    accumulation: int = 1
    clip_grad: float = 5.0
    ctc_weight: float = 0.3
    intermediate_ctc_weight: float = 0.3  # share of the intermediate-layer CTC in the CTC term (model's
    # intermediate_ctc_layer > 0 only)
    label_smoothing: float = 0.1
    precision: str = "auto"  # "auto" (bf16 on GPU, fp32 on CPU), "fp32", "bf16", "fp16"
    # bookkeeping
    seed: int = 0
    log_every: int = 10  # steps between metrics.jsonl lines
    valid_every: int = 500  # steps between validations on `valid` (0: none)
    valid_utterances: int = 200  # the first ones of `valid`
    save_every: int = 500  # steps between training checkpoints
    keep_last: int = 5  # training checkpoints kept in out_dir/checkpoints
    average_last: int = 5  # the last checkpoints averaged into out_dir/model at the end
    progress: bool = True  # a progress bar on stderr
    malloc_trim_every: int = 0  # >0: return freed heap to the OS (glibc malloc_trim) every this many steps
    onednn_primitive_cache: int = 16  # oneDNN primitives kept (one per conv input shape); -1: oneDNN's 1,024

    @classmethod
    def load(cls, path: str | os.PathLike | None, overrides: list[str] = ()) -> "TrainConfig":
        """YAML file + `key=value` overrides (values parsed as YAML). `$SPEECH_TRANSFORMER_DATA` expands."""
        d = yaml.safe_load(Path(path).read_text()) if path else {}
        for item in overrides:
            key, _, value = item.partition("=")
            d[key.strip()] = yaml.safe_load(value)
        known = {f.name for f in fields(cls)}
        if unknown := set(d or {}) - known:
            raise ValueError(f"unknown training settings: {sorted(unknown)}")
        os.environ.setdefault(DATA_DIR_ENV, str(default_data_dir()))
        expand = lambda v: os.path.expandvars(v) if isinstance(v, str) else v  # noqa: E731
        d = {k: [expand(x) for x in v] if isinstance(v, list) else expand(v) for k, v in (d or {}).items()}
        for f in fields(cls):  # YAML reads 5e-4 (no dot) as a string
            if f.type == "float" and isinstance(d.get(f.name), str):
                try:
                    d[f.name] = float(d[f.name])
                except ValueError:
                    raise ValueError(f"training setting {f.name}: not a number: {d[f.name]!r}") from None
        return cls(**d)


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken (skipped non-finite steps included)
    epoch: int = 0
    epoch_step: int = 0  # steps taken in the current epoch
    skipped: int = 0  # steps skipped for a non-finite loss
    audio_seconds: float = 0.0
