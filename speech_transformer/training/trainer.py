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
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from speech_transformer.model import checkpoint
from speech_transformer.utils.runtime import limit_onednn_cache, malloc_trim, rss_mb, setup_distributed
from speech_transformer.training.checkpoints import (
    export_model,
    latest_checkpoint,
    load_training_checkpoint,
    save_training_checkpoint,
)
from speech_transformer.training.config import TrainConfig, TrainState
from speech_transformer.training.optim import autocast_dtype, build_optimizer, learning_rate, set_learning_rate
from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.training.data import (
    DurationBatchSampler,
    SpeechDataset,
    collate,
    filter_by_duration,
    read_manifest,
)
from speech_transformer.audio.features import SpecAugment, SpecAugmentConfig
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer, preset
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import Tokenizer

log = logging.getLogger("speech_transformer.training.trainer")


# --- the loop ------------------------------------------------------------------------------------

class MetricsLog:
    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


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
    from speech_transformer.recognition.recognizer import Recognizer

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

    losses: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))  # loss, ctc, attention
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
    window.losses += sums[:3] / step_utterances
    window.n += 1
    return True


def log_window(run: Run, window: Window, bar) -> Window:
    """One metrics.jsonl line for the steps since the last one (and the progress bar); a fresh window."""
    elapsed = time.perf_counter() - window.time
    audio = window.audio * run.world
    run.state.audio_seconds += audio
    loss, ctc, attention = (window.losses / window.n).tolist()
    record = {"step": run.state.step, "epoch": run.state.epoch, "loss": loss, "ctc": ctc, "attention": attention,
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
