"""Batch transcription speed and memory: real-time factor and peak RSS, ours (batched and one chunk
at a time) against PocketSphinx on the same VAD chunks, on LibriSpeech dev and on one long file.

    python bench/transcribe_speed.py [--model DIR] [--threads 2] [--hours 1.0] [--sets dev long]
        [--systems batch single pocketsphinx] [--limit N] [--out-dir bench/results/transcribe]

Every (set, system) pair runs in a fresh child process, so peak RSS (ru_maxrss) is that run's own,
model loading included. `batch` is `speech-transformer transcribe` with its defaults; `single` is the
same with --batch-seconds 0 (every chunk decoded alone, no cross-file pooling); `pocketsphinx` streams
each input through the same reader and Silero VAD and decodes each chunk with PocketSphinx 5 (shipped
en-us model). The long input is built once from LibriSpeech dev clips with 0.3-1.5 s pauses of faint
noise, written block by block as 16 kHz FLAC.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SYSTEMS = ("batch", "single", "pocketsphinx")


def build_long_file(data_dir: Path, hours: float, path: Path) -> Path:
    import soundfile as sf

    from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
    from speech_transformer.training.data import read_manifest

    if path.exists() and abs(sf.info(path).duration - hours * 3600) < 60:
        return path
    clips = read_manifest(data_dir / "librispeech" / "dev.tsv")
    rng = np.random.default_rng(0)
    target, written, k = int(hours * 3600 * SAMPLE_RATE), 0, 0
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(tmp, "w", SAMPLE_RATE, 1, format="FLAC", subtype="PCM_16") as f:
        while written < target:
            pause = rng.normal(size=int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)).astype(np.float32) * 1e-3
            block = np.concatenate([pause, load_audio(clips[k % len(clips)].audio)])[: target - written]
            f.write(block)
            written += len(block)
            k += 1
    os.replace(tmp, path)
    return path


def child(system: str, inputs: list[str], model: str | None, threads: int) -> dict:
    """Runs one system over the inputs in this process; returns wall/CPU time, audio seconds and peak RSS."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    if system == "pocketsphinx":
        audio_seconds, failed = pocketsphinx_over_vad(inputs)
    else:
        from speech_transformer.apps import transcribe_cli as transcribe

        with tempfile.TemporaryDirectory() as out:
            argv = [*inputs, "-o", out, "--format", "json", "--no-progress", "--device", "cpu"]
            argv += ["--model", model] if model else []
            argv += ["--batch-seconds", "0"] if system == "single" else []
            rc = transcribe.main(argv)
            results = [json.loads(p.read_text()) for p in Path(out).rglob("*.json")]
        audio_seconds = sum(r["duration"] for r in results)
        failed = int(rc != 0)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"system": system, "wall_s": time.perf_counter() - start, "cpu_s": usage.ru_utime + usage.ru_stime,
            "audio_s": audio_seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "failed": failed, "threads": threads}


def pocketsphinx_over_vad(inputs: list[str]) -> tuple[float, int]:
    from pocketsphinx import Decoder

    from speech_transformer.audio.loading import SAMPLE_RATE
    from speech_transformer.audio.sources import FileSource, cut_chunks
    from speech_transformer.apps.transcribe import find_speech
    from speech_transformer.audio.vad import SileroVad

    decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")
    vad = SileroVad()
    total, failed = 0.0, 0
    for path in expand(inputs):
        try:
            source = FileSource(path)
            chunks, n = find_speech(vad, source)
            for _, wave in cut_chunks(source.blocks(), chunks):
                decoder.start_utt()
                decoder.process_raw((np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes(), full_utt=True)
                decoder.end_utt()
            total += n / SAMPLE_RATE
        except Exception:
            failed += 1
    return total, failed


def expand(inputs: list[str]) -> list[str]:
    from speech_transformer.audio.sources import expand_inputs

    return [str(f.path) for f in expand_inputs(inputs)[0]]


def main(argv: list[str] | None = None) -> int:
    from speech_transformer.training.data import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--out-dir", type=Path, default=Path("bench/results/transcribe"))
    p.add_argument("--sets", nargs="+", choices=["dev", "long"], default=["dev", "long"])
    p.add_argument("--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS))
    p.add_argument("--hours", type=float, default=1.0, help="length of the long input")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N dev utterances (smoke runs)")
    p.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    p.add_argument("--inputs", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.inputs, args.model, args.threads)), flush=True)
        return 0

    args.out_dir.mkdir(parents=True, exist_ok=True)
    inputs = {}
    if "dev" in args.sets:
        dev = args.data_dir / "librispeech" / "dev.tsv"
        if args.limit:
            lines = dev.read_text().splitlines()[: args.limit + 1]
            dev = args.out_dir / f"dev-first{args.limit}.tsv"
            dev.write_text("\n".join(lines[:1] + [str((args.data_dir / "librispeech" / l.split("\t")[0]).resolve())
                                                  + "\t" + l.split("\t", 1)[1] for l in lines[1:]]) + "\n")
        inputs["librispeech-dev"] = [str(dev)]
    if "long" in args.sets:
        inputs[f"long-{args.hours:g}h"] = [str(build_long_file(args.data_dir, args.hours,
                                                               args.out_dir / f"long-{args.hours:g}h.flac"))]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    rows = []
    for name, paths in inputs.items():
        for system in args.systems:
            cmd = [sys.executable, __file__, "--child", system, "--threads", str(args.threads), "--inputs", *paths]
            cmd += ["--model", args.model] if args.model else []
            print(f"$ {' '.join(cmd)}", file=sys.stderr, flush=True)
            r = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(r.stdout[-2000:] + r.stderr[-3000:], file=sys.stderr)
                continue
            result = {"set": name, **json.loads(line[len("RESULT "):])}
            print(json.dumps(result), file=sys.stderr, flush=True)
            rows.append(result)
    (args.out_dir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    cpu = platform.processor() or platform.machine()
    print(f"\n{cpu}, {os.cpu_count()} CPUs visible, torch threads {args.threads}\n")
    print("| Input | System | Audio h | Wall s | RTF | CPU s / audio s | Peak RSS MB | RTF / PocketSphinx |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        rtf = r["wall_s"] / r["audio_s"] if r["audio_s"] else float("nan")
        peer = next((x for x in rows if x["set"] == r["set"] and x["system"] == "pocketsphinx"), None)
        ratio = rtf / (peer["wall_s"] / peer["audio_s"]) if peer and peer["audio_s"] else float("nan")
        cpu_rtf = r["cpu_s"] / r["audio_s"] if r["audio_s"] else float("nan")
        print(f"| {r['set']} | {r['system']} | {r['audio_s'] / 3600:.3f} | {r['wall_s']:.1f} | {rtf:.3f} | "
              f"{cpu_rtf:.3f} | {r['peak_rss_mb']:.0f} | {ratio:.2f} |")
    return 0 if all(not r["failed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
