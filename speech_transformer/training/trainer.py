"""Training: joint CTC/attention loss, one CPU to many GPUs with PyTorch's own launcher.

One process (CPU, or one GPU):
    speech-transformer train --config recipes/librispeech/conf/mini.yaml
One node with 8 GPUs (DDP over NCCL; gloo on CPU):
    torchrun --nproc-per-node 8 -m speech_transformer.training.trainer --config conf/ls960_base.yaml
Two nodes with 8 GPUs each (run on both, node-rank 0 and 1):
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --rdzv-backend c10d \\
        --rdzv-endpoint HOST0:29500 -m speech_transformer.training.trainer --config conf/ls960_base.yaml
Fine-tune an existing model directory (ours, or Whisper weights imported with `speech-transformer whisper`):
    speech-transformer train --config C.yaml --set init_from=models/whisper-base.en --set ctc_weight=0
Override any setting with `--set key=value`. After a kill, run the same command again: training
continues from the newest checkpoint in `out_dir` (model, optimiser, data position and RNG states),
and on CPU ends at bit-identical parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from speech_transformer.model import checkpoint
from speech_transformer.runtime import rss_mb, setup_distributed
from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.training.data import (
    DATA_DIR_ENV,
    DurationBatchSampler,
    SpeechDataset,
    collate,
    default_data_dir,
    filter_by_duration,
    read_manifest,
)
from speech_transformer.audio.features import SpecAugment, SpecAugmentConfig
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer, preset
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import Tokenizer

log = logging.getLogger("speech_transformer.training.trainer")


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
    log_every: int = 10
    valid_every: int = 500
    valid_utterances: int = 200
    save_every: int = 500
    keep_last: int = 5
    average_last: int = 5
    progress: bool = True
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
        return cls(**d)


@dataclass
class TrainState:
    step: int = 0  # optimiser steps taken (skipped non-finite steps included)
    epoch: int = 0
    epoch_step: int = 0  # steps taken in the current epoch
    skipped: int = 0  # steps skipped for a non-finite loss
    audio_seconds: float = 0.0


def learning_rate(c: TrainConfig, step: int) -> float:
    warm = max(1, c.warmup_steps)
    if step < warm:
        return c.lr * (step + 1) / warm
    if c.schedule == "noam":
        return c.lr * math.sqrt(warm / (step + 1))
    if c.schedule == "cosine":
        progress = min(1.0, (step - warm) / max(1, c.max_steps - warm))
        return c.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    return c.lr


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


# --- checkpoints: model + optimiser (safetensors), progress and RNG (JSON + safetensors) ---------

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


# --- the loop ------------------------------------------------------------------------------------

class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def limit_onednn_cache(capacity: int) -> None:
    """Cap oneDNN's primitive cache before the first convolution runs (an explicit environment variable wins).

    On CPU, oneDNN keeps one compiled primitive per convolution input shape, up to 1,024; variable-length
    batches make nearly every shape new, and the cache grew the trainer by GBs (bench/learning_curve.py logs
    RSS). The cache rarely hits with such batches, so a small one costs no speed.
    """
    if capacity >= 0:
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(capacity))


def malloc_trim() -> None:
    """Give freed heap memory back to the OS (glibc only; a no-op elsewhere)."""
    import ctypes
    import ctypes.util
    with contextlib.suppress(OSError, AttributeError, TypeError):
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)


def autocast_dtype(c: TrainConfig, device: torch.device) -> torch.dtype | None:
    precision = c.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def build_optimizer(model: torch.nn.Module, c: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    for name, p in model.named_parameters():
        if name.startswith(tuple(c.freeze)):
            p.requires_grad_(False)
    def scale(name: str) -> float:  # the longest matching prefix of lr_scale, else 1
        return next((c.lr_scale[k] for k in sorted(c.lr_scale, key=len, reverse=True) if name.startswith(k)), 1.0)

    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((scale(name), p.dim() >= 2), []).append(p)  # no decay on biases and norms
    return torch.optim.AdamW([{"params": params, "weight_decay": c.weight_decay if decay else 0.0, "lr_scale": s}
                              for (s, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))],
                             lr=c.lr, betas=tuple(c.betas), fused=device.type == "cuda")


def set_learning_rate(optimizer: torch.optim.Optimizer, c: TrainConfig, step: int) -> None:
    """The schedule's rate for `step`, times each parameter group's `lr_scale` (see `build_optimizer`)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(c, step) * group.get("lr_scale", 1.0)


@torch.no_grad()
def validate(model: SpeechTransformer, tokenizer: Tokenizer, waves: list[np.ndarray], texts: list[str],
             batch_size: int = 16) -> dict:
    """Greedy-attention and CTC-greedy WER/CER, and the attention loss, through the one inference path.

    Batches of length-sorted utterances go through `Recognizer.encode` and `decoding.decode`;
    `valid_loss` is -log p(text + <eos> | audio) per utterance (`decoding.sequence_log_probs`, no smoothing).
    """
    import jiwer

    from speech_transformer.decoding.options import DecodingOptions

    from speech_transformer.decoding.search import decode, sequence_log_probs
    from speech_transformer.recognizer import Recognizer

    recognizer = Recognizer(model, tokenizer)  # puts the model in eval mode
    special, has_ctc = tokenizer.special, model.ctc_head is not None
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    attention, ctc, nll = [""] * len(waves), [""] * len(waves), 0.0
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        enc = recognizer.encode([waves[i] for i in rows])
        greedy = decode(model, enc.memory, enc.lengths, DecodingOptions(beam_size=1, ctc_weight=0.0), special)
        best = decode(model, enc.memory, enc.lengths, DecodingOptions(method="ctc"), special) if has_ctc else greedy
        targets = [tokenizer.encode(texts[i]) for i in rows]
        nll -= float(sequence_log_probs(model, enc.memory, enc.lengths, targets, special).sum())
        for i, g, b in zip(rows, greedy, best):
            attention[i], ctc[i] = tokenizer.decode(g.tokens), tokenizer.decode(b.tokens)
    model.train()
    result = {"valid_loss": nll / max(1, len(waves)), "valid_wer": jiwer.wer(texts, attention),
              "valid_cer": jiwer.cer(texts, attention), "valid_example": attention[0] if attention else ""}
    if has_ctc:
        result.update(valid_ctc_wer=jiwer.wer(texts, ctc), valid_ctc_cer=jiwer.cer(texts, ctc))
    return result


@dataclass
class Window:
    """Sums over the steps since the last log line."""

    loss: float = 0.0
    ctc: float = 0.0
    att: float = 0.0
    n: int = 0
    audio: float = 0.0
    wait: float = 0.0
    time: float = field(default_factory=time.perf_counter)


@dataclass
class Run:
    """A training run's live objects: what the stages below pass around and what a Callback sees."""

    c: TrainConfig
    out_dir: Path
    rank: int
    world: int
    device: torch.device
    tokenizer: Tokenizer
    dataset: SpeechDataset
    sampler: DurationBatchSampler
    model: SpeechTransformer
    ddp: torch.nn.Module  # the model, wrapped in DistributedDataParallel when world > 1
    optimizer: torch.optim.Optimizer
    state: TrainState
    dtype: torch.dtype | None
    augment: SpecAugment | None = None
    scaler: torch.amp.GradScaler | None = None
    metrics: MetricsLog | None = None
    valid_waves: list[np.ndarray] = field(default_factory=list)
    valid_texts: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    window: Window = field(default_factory=Window)  # steps since the last metrics line

    @property
    def main_process(self) -> bool:
        return self.rank == 0

    def save(self) -> Path:
        """A training checkpoint of the current step (all ranks must call it)."""
        return save_training_checkpoint(self.out_dir, self.model, self.optimizer, self.state, self.rank, self.world,
                                        self.c.keep_last)


class Callback:
    """Hooks for code that watches a run (e.g. bench/learning_curve.py). The defaults do nothing."""

    def on_start(self, run: Run) -> None:
        """After setup and any resume, before the first step."""

    def on_step(self, run: Run) -> bool:
        """After each optimiser step (and its logging, validation and checkpoint); True stops the run."""
        return False


# --- stages of train(): setup, data, model and optimiser, the step loop, validation, checkpoints ---

def setup_run(c: TrainConfig) -> tuple[int, int, torch.device, Path]:
    """Processes, the output folder (with the resolved config) and the seeds."""
    limit_onednn_cache(c.onednn_primitive_cache)
    rank, world, device = setup_distributed()
    out_dir = Path(c.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(asdict(c), sort_keys=False))
    torch.manual_seed(c.seed + rank)
    random.seed(c.seed + rank)
    np.random.seed(c.seed + rank)
    return rank, world, device, out_dir


def build_data(c: TrainConfig, tokenizer: Tokenizer, rank: int, world: int):
    """Training utterances, the dataset and its duration-bucketed sampler."""
    utterances = filter_by_duration([u for m in c.train for u in read_manifest(m)], c.max_duration, c.min_duration)
    dataset = SpeechDataset(utterances, tokenizer, tuple(c.speed_perturb), c.cache_dir, c.seed)
    sampler = DurationBatchSampler([u.duration * (1.0 / min(c.speed_perturb)) for u in utterances], c.batch_seconds,
                                   world, rank, c.accumulation, shuffle=True, seed=c.seed,
                                   sorted_first_epoch=c.sorted_first_epoch)
    return utterances, dataset, sampler


def model_config_for(c: TrainConfig, out_dir: Path, initial, tokenizer: Tokenizer, resume: Path | None) -> ModelConfig:
    """The architecture: a resumed run's stored one, the init_from model's, or the preset with overrides."""
    architecture = out_dir / "model_config.json"  # resolved once, so a run outlives later changes to the presets
    if resume and architecture.exists():
        model_config = ModelConfig.from_dict(json.loads(architecture.read_text()))
    elif initial is not None:
        model_config = replace(initial.config, **c.model)
    else:
        model_config = preset(c.preset, vocab_size=tokenizer.vocab_size, **c.model)
    if not model_config.ctc and c.ctc_weight > 0:
        raise ValueError(f"the model has no CTC head (e.g. an imported Whisper model): set ctc_weight: 0, "
                         f"not {c.ctc_weight}")
    return model_config


def build_run(c: TrainConfig) -> Run:
    """Everything before the first step: data, model (fresh, fine-tuned or resumed), optimiser, validation audio."""
    rank, world, device, out_dir = setup_run(c)
    initial, tokenizer, _ = checkpoint.load_model(c.init_from) if c.init_from else (None, Tokenizer(c.tokenizer), None)
    utterances, dataset, sampler = build_data(c, tokenizer, rank, world)
    resume = latest_checkpoint(out_dir)
    model_config = model_config_for(c, out_dir, initial, tokenizer, resume)
    model = SpeechTransformer(model_config).to(device)
    if initial is not None and not resume:
        model.load_state_dict(initial.state_dict())
    if rank == 0:
        (out_dir / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=1))
    optimizer = build_optimizer(model, c, device)
    if resume:
        state = load_training_checkpoint(resume, model, optimizer, rank)
        log.info("resumed from %s (step %d)", resume, state.step)
    else:
        state = TrainState()
        if initial is None and model_config.frontend == "log_mel":
            sample = sorted(range(len(utterances)), key=lambda i: utterances[i].id)[: c.stats_utterances]
            model.frontend.fit_global_stats([dataset.waveform(i) for i in sample])
    ddp = torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False) if world > 1 else model
    dtype = autocast_dtype(c, device)
    valid = read_manifest(c.valid)[: c.valid_utterances] if c.valid and rank == 0 else []
    run = Run(c, out_dir, rank, world, device, tokenizer, dataset, sampler, model, ddp, optimizer, state, dtype,
              augment=SpecAugment(SpecAugmentConfig(**c.spec_augment)).train() if c.spec_augment is not None else None,
              scaler=torch.amp.GradScaler(enabled=dtype == torch.float16),
              metrics=MetricsLog(out_dir / "metrics.jsonl", rank == 0),
              valid_waves=[load_audio(u.audio) for u in valid], valid_texts=[normalize_transcript(u.text) for u in valid])
    if rank == 0:
        log.info("%d training utterances (%.2f h), %d parameters, %d process(es) on %s", len(utterances),
                 sum(u.duration for u in utterances) / 3600, model.num_parameters(), world, device)
    return run


def forward_backward(run: Run, batch: dict[str, torch.Tensor], step_utterances: int, last: bool) -> list[float]:
    """One micro-batch: features, augmentation, loss, backward. -> [loss, ctc, attention] summed over utterances."""
    c, model, B = run.c, run.model, batch["audio"].shape[0]
    sync = run.ddp.no_sync() if run.world > 1 and not last else contextlib.nullcontext()
    with sync:
        with torch.no_grad():
            feats, feat_lengths = model.frontend(batch["audio"], batch["audio_lengths"])
        if run.augment is not None:
            feats = run.augment(feats, feat_lengths)
        dtype = run.dtype
        with torch.autocast(run.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = run.ddp(feats, feat_lengths, batch["targets"], batch["target_lengths"], c.ctc_weight,
                           c.label_smoothing, run.tokenizer.special.prompt, run.tokenizer.special.eos,
                           c.intermediate_ctc_weight)
        # each utterance of the step weighs the same, however the step is split over ranks
        run.scaler.scale(loss.total * (B * run.world / step_utterances)).backward()
    return [float(loss.total.detach()) * B, float(loss.ctc) * B, float(loss.attention) * B]


def optimizer_step(run: Run, batches, step_utterances: int, window: Window) -> bool:
    """One optimiser step over `accumulation` micro-batches; False when a non-finite loss skipped it."""
    c, state, optimizer = run.c, run.state, run.optimizer
    set_learning_rate(optimizer, c, state.step)
    sums = torch.zeros(4, dtype=torch.float64)  # loss, ctc, attention (sums over utterances), non-finite
    for j in range(c.accumulation):
        t0 = time.perf_counter()
        batch = {k: v.to(run.device, non_blocking=True) for k, v in next(batches).items()}
        window.wait += time.perf_counter() - t0
        total, ctc, att = forward_backward(run, batch, step_utterances, last=j == c.accumulation - 1)
        sums += torch.tensor([total, ctc, att, 0.0 if math.isfinite(total) else 1.0], dtype=torch.float64)
        window.audio += float(batch["audio_lengths"].sum()) / SAMPLE_RATE
    if run.world > 1:
        dist.all_reduce(sums)
    state.step += 1
    state.epoch_step += 1
    if sums[3] > 0:  # a non-finite loss anywhere: every rank skips this update
        optimizer.zero_grad(set_to_none=True)
        state.skipped += 1
        log.warning("step %d: non-finite loss, update skipped (%d so far)", state.step, state.skipped)
        return False
    run.scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), c.clip_grad)
    run.scaler.step(optimizer)
    run.scaler.update()
    optimizer.zero_grad(set_to_none=True)
    window.loss += float(sums[0]) / step_utterances
    window.ctc += float(sums[1]) / step_utterances
    window.att += float(sums[2]) / step_utterances
    window.n += 1
    return True


def log_window(run: Run, window: Window, bar) -> Window:
    """One metrics.jsonl line for the steps since the last one (and the progress bar); a fresh window."""
    elapsed = time.perf_counter() - window.time
    audio = window.audio * run.world
    run.state.audio_seconds += audio
    record = {"step": run.state.step, "epoch": run.state.epoch, "loss": window.loss / window.n,
              "ctc": window.ctc / window.n, "attention": window.att / window.n,
              "lr": learning_rate(run.c, run.state.step - 1), "audio_seconds_per_second": audio / elapsed,
              "steps_per_second": window.n / elapsed, "data_wait_share": window.wait / elapsed,
              "skipped": run.state.skipped, "elapsed_s": time.perf_counter() - run.started, "rss_mb": rss_mb()}
    run.metrics.write(**record)
    if bar is not None:
        bar.set_postfix(loss=f"{record['loss']:.2f}", lr=f"{record['lr']:.2e}",
                        audio_h_per_s=f"{audio / elapsed / 3600:.3f}")
    return Window()


def after_step(run: Run, callback: Callback) -> bool:
    """Periodic work after a step: memory trim, validation, checkpoint, the callback. True stops the run."""
    c, step = run.c, run.state.step
    if c.malloc_trim_every and step % c.malloc_trim_every == 0:
        malloc_trim()
    if c.valid_every and step % c.valid_every == 0 and run.valid_waves:
        run.metrics.write(step=step, **validate(run.model, run.tokenizer, run.valid_waves, run.valid_texts))
    if c.save_every and step % c.save_every == 0:
        run.save()
    return callback.on_step(run)


def out_of_time(run: Run) -> bool:
    c = run.c
    return run.state.step >= c.max_steps or bool(c.max_minutes and
                                                 time.perf_counter() - run.started > 60 * c.max_minutes)


def run_epoch(run: Run, callback: Callback, bar) -> bool:
    """The rest of the current epoch (from `state.epoch_step`). True when the run should stop."""
    c, state, device = run.c, run.state, run.device
    run.sampler.set_epoch(state.epoch, state.epoch_step)
    run.dataset.set_epoch(state.epoch)
    loader = torch.utils.data.DataLoader(run.dataset, batch_sampler=run.sampler, collate_fn=collate,
                                         num_workers=c.num_workers, pin_memory=device.type == "cuda",
                                         generator=torch.Generator(), prefetch_factor=4 if c.num_workers else None)
    batches = iter(loader)
    for step_utterances in run.sampler.step_sizes():
        if out_of_time(run):
            return True
        if not optimizer_step(run, batches, step_utterances, run.window):
            continue
        if state.step % c.log_every == 0 and run.window.n:
            run.window = log_window(run, run.window, bar)
        if bar is not None:
            bar.update(1)
        if after_step(run, callback):
            return True
    state.epoch += 1
    state.epoch_step = 0
    return False


def train(c: TrainConfig, callback: Callback | None = None) -> dict:
    """Train (or resume) the run `c` describes; the final checkpoints averaged into `out_dir/model`."""
    run = build_run(c)
    callback = callback or Callback()
    bar = None
    if run.main_process and c.progress:
        from tqdm import tqdm
        bar = tqdm(total=c.max_steps, initial=run.state.step, unit="step", dynamic_ncols=True, file=sys.stderr)
    run.model.train()
    callback.on_start(run)
    while not run_epoch(run, callback, bar) and run.state.step < c.max_steps:
        pass
    latest = latest_checkpoint(run.out_dir)
    if latest is None or not latest.name.endswith(f"{run.state.step:08d}"):
        run.save()
    if bar is not None:
        bar.close()
    return finish(run)


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


def finish(run: Run) -> dict:
    """Average the last checkpoints into `out_dir/model`, check that all ranks agree, write a summary."""
    c, state, model, world = run.c, run.state, run.model, run.world
    checksum = torch.tensor([sum(float(p.detach().double().sum()) for p in model.parameters())], dtype=torch.float64)
    checksums = [torch.zeros_like(checksum) for _ in range(world)]
    if world > 1:
        dist.all_gather(checksums, checksum)
    else:
        checksums = [checksum]
    summary = {"steps": state.step, "epochs": state.epoch, "skipped_steps": state.skipped,
               "audio_hours": state.audio_seconds / 3600, "world_size": world,
               "rank_param_checksums": [float(x) for x in checksums]}
    if run.main_process:
        model_dir = export_model(run.out_dir, c.average_last, run.out_dir / "model",
                                 {"steps": state.step, "audio_hours_seen": state.audio_seconds / 3600})
        if run.valid_waves:
            averaged, _, _ = checkpoint.load_model(model_dir, model.device)
            summary.update(validate(averaged, run.tokenizer, run.valid_waves, run.valid_texts))
        summary["model_dir"] = str(model_dir)
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speech-transformer train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML training config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = TrainConfig.load(args.config, args.set)
    summary = train(config)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
