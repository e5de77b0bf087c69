#!/usr/bin/env python3
"""Fine-tune the top of a Whisper student on cached outputs of its frozen lower blocks: CPU-cheap training.

A student (`speech-transformer whisper base --student 4`) whose stem and first K encoder blocks stay frozen
computes the same K-block states for an utterance in every epoch. This script computes them once per
training utterance (float16, in OUT/cache-*.safetensors) and then trains only what learns — encoder blocks
K and up, the final LayerNorm, the CTC head and the decoder — on the cache, with the model's own joint
CTC/attention loss (`SpeechTransformer.loss`). Augmentation moves from the log-mel to the cached states
(time masks, and the trained blocks' dropout); speed perturbation is not used (one copy is cached).

    python recipes/default/train_cached.py --student exp/whisper-student4 --frozen 3 --out /var/tmp/cached \\
        --minutes 40 --threads 2
    python recipes/default/train_cached.py ... --out /var/tmp/cached      # again: continues from OUT/last

The dev subset (first `--dev-utterances` of `--dev`) is scored at every `--valid-every` steps through
`train.validate` (the one inference path, from audio); OUT/log.jsonl has one line per mark with training
CPU-seconds (`time.process_time()`, caching and evaluations counted separately), and OUT/best is the model
directory with the lowest dev CTC-greedy CER so far. A second run continues from OUT/last with a fresh
optimiser (its state is not kept: this is not the trainer's bit-exact resume). With `--average N` the
models of the last N marks are kept in OUT/marks/ and, when the run ends, averaged into OUT/averaged
(scored the same way, OUT/averaged.json).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from speech_transformer.model import checkpoint
from speech_transformer.audio.loading import load_audio
from speech_transformer.training.data import (SpeechDataset, default_data_dir, filter_by_duration, frame_batches,
                                              pad_targets, read_manifest)
from speech_transformer.audio.features import mask_time, pad_waveforms
from speech_transformer.model.transformer import SpeechTransformer
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.training.trainer import TrainConfig, build_optimizer, set_learning_rate, validate

SHARD = 256  # utterances per cache file
STATE_MASKS, STATE_MASK_RATIO = 2, 0.05  # time masks on the cached states: count, longest share of an utterance
TRAIN_SETS = ("librispeech/train.tsv", "an4/train.tsv", "fsdd/train.tsv", "ljspeech/clips.tsv",
              "arctic-cathy/clips.tsv")


def frozen_prefixes(frozen: int) -> list[str]:
    return ["encoder.subsampling.", "encoder.positions."] + [f"encoder.blocks.{i}." for i in range(frozen)]


@torch.no_grad()
def cache_states(model: SpeechTransformer, dataset: SpeechDataset, frozen: int, out: Path
                 ) -> tuple[list[torch.Tensor], float]:
    """The output of blocks 0..frozen-1 for every utterance `(S_i, D)` float16, computed once (eval mode), and
    the CPU-seconds that computing them took (each shard's own, kept in its metadata)."""
    model.eval()
    states: list[torch.Tensor] = []
    cpu = 0.0
    for first in range(0, len(dataset), SHARD):
        path = out / f"cache-{first // SHARD:04d}.safetensors"
        rows = range(first, min(first + SHARD, len(dataset)))
        if not path.exists():
            shard, t = {}, time.process_time()
            order = sorted(rows, key=lambda i: dataset.utterances[i].duration)
            for k in range(0, len(order), 16):
                batch = order[k:k + 16]
                audio, lengths = pad_waveforms([dataset.waveform(i) for i in batch])
                x, n = model.encoder.embed(*model.frontend(audio, lengths))
                x, n, _ = model.encoder.blocks_from(x, n, 0, frozen)
                for j, i in enumerate(batch):
                    shard[str(i)] = x[j, : int(n[j])].to(torch.float16).contiguous()
            save_file(shard, str(path), metadata={"cpu_s": str(time.process_time() - t)})
            print(f"cached {path.name}: {len(shard)} utterances", flush=True)
        with safe_open(str(path), "pt") as f:
            cpu += float((f.metadata() or {}).get("cpu_s", "nan"))
        shard = load_file(str(path))
        states += [shard[str(i)] for i in rows]
    return states, cpu


def train_step(model, optimizer, c: TrainConfig, states, targets, batch, step: int, frozen: int) -> float:
    x = torch.nn.utils.rnn.pad_sequence([states[i].float() for i in batch], batch_first=True)
    lengths = torch.tensor([len(states[i]) for i in batch])
    x = mask_time(x, lengths, STATE_MASKS, STATE_MASK_RATIO)
    padded, target_lengths = pad_targets([targets[i] for i in batch])
    memory, memory_lengths, _ = model.encoder.blocks_from(x, lengths, frozen)
    loss = model.loss(memory, memory_lengths, padded, target_lengths, c.ctc_weight, c.label_smoothing)
    set_learning_rate(optimizer, c, step)
    optimizer.zero_grad(set_to_none=True)
    loss.total.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], c.clip_grad)
    optimizer.step()
    return float(loss.total.detach())


def write_trainer_files(out: Path, manifests: list[str], dev: str, n_dev: int, batch_seconds: float, c: TrainConfig,
                        log: list[dict]) -> None:
    """OUT/train.yaml and OUT/train/metrics.jsonl in the trainer's form, so `ship.py --exp OUT` can write the
    card (training data, steps, wall time, audio seen, last dev score)."""
    import yaml

    settings = {"train": manifests, "valid": dev, "valid_utterances": n_dev, "max_duration": 30.0,
                "batch_seconds": batch_seconds, "preset": "whisper-student", "lr": c.lr,
                "warmup_steps": c.warmup_steps, "ctc_weight": c.ctc_weight, "freeze": c.freeze, "lr_scale": c.lr_scale,
                "speed_perturb": [1.0], "spec_augment": None}
    (out / "train.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    (out / "train").mkdir(exist_ok=True)
    lines, rate = [], log[-1]["audio_s"] / max(1e-9, log[-1]["wall_s"])  # the average: ship.py sums rate x time
    for r in log:
        lines.append({"step": r["step"], "elapsed_s": r["wall_s"], "audio_seconds_per_second": rate,
                      "valid_wer": r["att_wer"] / 100, "valid_cer": r.get("att_cer", float("nan")) / 100,
                      "valid_ctc_wer": r["ctc_wer"] / 100,
                      "valid_ctc_cer": r["ctc_cer"] / 100})
    (out / "train" / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, required=True, help="model directory to start from (whisper --student)")
    p.add_argument("--out", type=Path, required=True, help="run folder: cache, log, last and best models")
    p.add_argument("--frozen", type=int, default=3, help="encoder blocks kept frozen and cached")
    p.add_argument("--train", nargs="*", default=None, help="manifests (default: every training split)")
    p.add_argument("--dev", default="librispeech/dev.tsv")
    p.add_argument("--dev-utterances", type=int, default=40)
    p.add_argument("--minutes", type=float, default=30.0, help="training wall time of this run")
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--encoder-lr-scale", type=float, default=0.1, help="learning-rate factor of the trained blocks")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ctc-weight", type=float, default=0.5)
    p.add_argument("--valid-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--audio-cache", type=Path, default=None, help="decoded-audio cache (default OUT/audio)")
    p.add_argument("--average", type=int, default=0, help="average the models of the last N marks at the end")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    data = default_data_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    start_dir = args.out / "last" if (args.out / "last" / checkpoint.CONFIG_FILE).is_file() else args.student
    model, tokenizer, _ = checkpoint.load_model(start_dir)
    manifests = args.train or [str(data / m) for m in TRAIN_SETS]
    utterances = filter_by_duration([u for m in manifests for u in read_manifest(m)], 30.0)
    dataset = SpeechDataset(utterances, tokenizer, cache_dir=args.audio_cache or args.out / "audio")
    states, cache_cpu = cache_states(model, dataset, args.frozen, args.out)
    dev_path = data / args.dev if not Path(args.dev).is_absolute() else Path(args.dev)
    dev = read_manifest(dev_path)[: args.dev_utterances]
    dev_waves, dev_texts = [load_audio(u.audio) for u in dev], [normalize_transcript(u.text) for u in dev]
    c = TrainConfig(lr=args.lr, warmup_steps=args.warmup, schedule="noam", ctc_weight=args.ctc_weight,
                    freeze=frozen_prefixes(args.frozen), lr_scale={"encoder.": args.encoder_lr_scale})
    optimizer = build_optimizer(model, c, torch.device("cpu"))
    log_path = args.out / "log.jsonl"
    done = [json.loads(line) for line in log_path.read_text().splitlines()] if log_path.exists() else []
    step, cpu, wall, audio_s = ((done[-1]["step"], done[-1]["train_cpu_s"], done[-1]["wall_s"], done[-1]["audio_s"])
                                if done else (0, 0.0, 0.0, 0.0))
    best = min((r["ctc_cer"] for r in done), default=float("inf"))
    frames = int(args.batch_seconds / model.encoder_frame_seconds)
    print(f"{len(states)} utterances cached ({cache_cpu:.0f} CPU-s in all); training from {start_dir}, step {step}",
          flush=True)
    deadline, epoch = time.monotonic() + 60 * args.minutes, 0
    while time.monotonic() < deadline:
        for batch in frame_batches([len(s) for s in states], frames, rng):
            model.train()
            t, w = time.process_time(), time.monotonic()
            loss = train_step(model, optimizer, c, states, dataset.targets, batch, step, args.frozen)
            cpu, wall = cpu + time.process_time() - t, wall + time.monotonic() - w
            audio_s += sum(len(states[i]) for i in batch) * model.encoder_frame_seconds
            step += 1
            if step % args.valid_every == 0 or time.monotonic() >= deadline:
                scores = validate(model, tokenizer, dev_waves, dev_texts)
                record = {"step": step, "epoch": epoch, "train_cpu_s": cpu, "wall_s": wall, "audio_s": audio_s,
                          "cache_cpu_s": cache_cpu, "loss": loss,
                          "ctc_cer": 100 * scores["valid_ctc_cer"], "ctc_wer": 100 * scores["valid_ctc_wer"],
                          "att_wer": 100 * scores["valid_wer"], "att_cer": 100 * scores["valid_cer"], "example": scores["valid_example"]}
                with log_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                done.append(record)
                write_trainer_files(args.out, manifests, str(dev_path), args.dev_utterances, args.batch_seconds, c, done)
                print(json.dumps(record), flush=True)
                info = {"train": manifests, "steps": step, "train_cpu_s": cpu, "frozen_blocks": args.frozen,
                        "recipe": "recipes/default/train_cached.py"}
                checkpoint.save_model(model, tokenizer, args.out / "last", info)
                if record["ctc_cer"] < best:
                    best = record["ctc_cer"]
                    checkpoint.save_model(model, tokenizer, args.out / "best", info)
                if args.average > 1:
                    keep_mark(model, tokenizer, args.out / "marks", step, info, args.average)
            if time.monotonic() >= deadline:
                break
        epoch += 1
    if args.average > 1:
        write_average(args.out, tokenizer, dev_waves, dev_texts)
    return 0


def keep_mark(model, tokenizer, marks: Path, step: int, info: dict, keep: int) -> None:
    """OUT/marks/step-NNNNNN: the model at this mark; only the last `keep` marks stay."""
    checkpoint.save_model(model, tokenizer, marks / f"step-{step:06d}", info)
    for old in sorted(marks.glob("step-*"))[:-keep]:
        shutil.rmtree(old)


def write_average(out: Path, tokenizer, dev_waves, dev_texts) -> None:
    """OUT/averaged: the mean of the kept marks' weights, scored on the dev subset (OUT/averaged.json)."""
    chosen = sorted((out / "marks").glob("step-*"))
    if len(chosen) < 2:
        return
    model, _, config = checkpoint.load_model(chosen[-1])
    checkpoint.load_weights(model, checkpoint.average_state_dicts([m / checkpoint.WEIGHTS_FILE for m in chosen]), out / "marks")
    info = {**config.get("info", {}), "averaged": [m.name for m in chosen]}
    checkpoint.save_model(model, tokenizer, out / "averaged", info)
    scores = validate(model, tokenizer, dev_waves, dev_texts)
    record = {"averaged": info["averaged"], **{k: 100 * v for k, v in scores.items() if isinstance(v, float)}}
    (out / "averaged.json").write_text(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(main())
