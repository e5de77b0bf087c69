"""Training throughput of the real trainer: audio-seconds trained per wall-second and data-wait share.

    python bench/train_speed.py --preset tiny --steps 30 --batch-seconds 60
    python bench/train_speed.py --preset small --steps 30 --batch-seconds 200     # on a GPU: bf16 is automatic

Runs speech_transformer.training.trainer on the shared LibriSpeech train split (decoded once into an int16 cache
first, as a real run's later epochs are), and reports the second half of the steps, after warm-up.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from speech_transformer.training.data import SpeechDataset, default_data_dir, filter_by_duration, read_manifest, \
    write_manifest
from speech_transformer.text.normalize import normalize_transcript
from speech_transformer.text.tokenizer import train_tokenizer
from speech_transformer.training.trainer import TrainConfig, train


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-seconds", type=float, default=60.0)
    p.add_argument("--utterances", type=int, default=400, help="training utterances used")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--data", type=Path, default=default_data_dir() / "librispeech" / "train.tsv")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "st-train-speed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    utts = filter_by_duration(read_manifest(args.data), 17.0)[: args.utterances]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "train.jsonl"
    write_manifest(utts, manifest)
    tok = train_tokenizer([normalize_transcript(u.text) for u in utts], args.work / "tok.model", 256)
    t = time.perf_counter()
    cache = SpeechDataset(utts, tok, cache_dir=args.work / "cache")
    for i in range(len(utts)):
        cache.waveform(i)
    print(f"audio cache ready ({time.perf_counter() - t:.1f} s)")
    out = args.work / f"run-{args.preset}-{int(time.time())}"
    config = TrainConfig(out_dir=str(out), train=[str(manifest)], tokenizer=str(args.work / "tok.model"),
                         preset=args.preset, batch_seconds=args.batch_seconds, max_steps=args.steps,
                         warmup_steps=10, log_every=args.steps // 2, save_every=0, valid_every=0,
                         num_workers=args.workers, cache_dir=str(args.work / "cache"), progress=False)
    summary = train(config)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    device = "cuda" if torch.cuda.is_available() else f"cpu x{args.threads} threads"
    print(f"preset {args.preset} on {device}: {last['audio_seconds_per_second']:.1f} audio-s/s, "
          f"{last['steps_per_second']:.2f} steps/s, "
          f"data wait {100 * last['data_wait_share']:.1f} % of step time, batch {args.batch_seconds:.0f} s padded, "
          f"{summary['steps']} steps")


if __name__ == "__main__":
    main()
