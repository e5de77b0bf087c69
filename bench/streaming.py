"""Live listening, measured: streaming WER against offline WER, latency, partial interval, CPU, memory, commands.

    OMP_NUM_THREADS=1 python bench/streaming.py [--model DIR] [--threads 1] [--limit-dev 40] [--limit-an4 130]
        [--limit-fsdd 100] [--long-minutes 20] [--clock simulated|real] [--options JSON] [--final-method M]
        [--split test|train] [--json OUT]

Every utterance is its own stream: 0.5 s of faint noise, the utterance, 1.5 s of faint noise, in 50 ms blocks
at the file's own rate, through `StreamingRecognizer` (the same path as `speech-transformer listen`). The
finals joined are scored against the transcript (english-v1) beside the same model's offline recognition of
the whole utterance with the same decoding. With `--clock simulated` (the default) each block arrives at its
time in the stream and is processed as soon as it has arrived and the previous block is done, and the clock
runs with the measured compute time in between: what real-time pacing gives on an otherwise idle machine,
without waiting through the silences, timed in CPU seconds of this process (on a shared machine wall time
also counts the time other processes took). `--clock real` sleeps and reads the wall clock instead. FSDD digits go through the digits
grammar: command latency and accuracy, beside `commands` (`match`) on the same clips. The long stream is
LibriSpeech dev with pauses (bench/transcribe_speed.py's fixture), fed as fast as possible; the process's
RSS is sampled as it goes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BLOCK = 0.05


class SimulatedClock:
    """Real time without the waiting: a block starts when it has arrived and the previous block is done, and
    the clock runs with this process's CPU time (one thread): what a core of its own would take, however
    busy the shared machine is."""

    def __init__(self):
        self.done, self.started, self.t0 = 0.0, 0.0, time.process_time()

    def begin(self, arrival: float) -> None:
        self.started, self.t0 = max(arrival, self.done), time.process_time()

    def end(self) -> None:
        self.done = self()

    def __call__(self) -> float:
        return self.started + time.process_time() - self.t0


class RealClock:
    def __init__(self):
        self.zero = time.monotonic()

    def begin(self, arrival: float) -> None:
        time.sleep(max(0.0, self.zero + arrival - time.monotonic()))

    def end(self) -> None:
        pass

    def __call__(self) -> float:
        return time.monotonic() - self.zero


def noise(seconds: float, rate: int, rng) -> np.ndarray:
    return (rng.normal(size=int(seconds * rate)) * 1e-3).astype(np.float32)


def stream_clip(recognizer, path: str, clock_kind: str, options, grammar=None, rng=None) -> dict:
    """One clip as a stream: its events with emission times, and the compute time it took."""
    from speech_transformer.recognition.streaming import StreamingRecognizer

    data, rate = sf.read(path, dtype="float32", always_2d=True)
    rng = rng or np.random.default_rng(0)
    audio = np.concatenate([noise(0.5, rate, rng), data.mean(1), noise(1.5, rate, rng)])
    clock = SimulatedClock() if clock_kind == "simulated" else RealClock()
    stream = StreamingRecognizer(recognizer, options, grammar, clock=clock)
    step, events, cpu = int(rate * BLOCK), [], time.process_time()
    for i in range(0, len(audio), step):
        arrival = min(len(audio), i + step) / rate
        clock.begin(arrival)
        events += [(e, clock()) for e in stream.accept(audio[i:i + step], rate, arrival)]
        clock.end()
    clock.begin(len(audio) / rate)
    events += [(e, clock()) for e in stream.flush()]
    return {"events": events, "cpu": time.process_time() - cpu, "seconds": len(audio) / rate,
            "speech": (0.5, 0.5 + len(data) / rate)}


def speech_set(recognizer, manifest: Path, limit: int, clock: str, options) -> dict:
    """Streaming against offline WER, final latency, partial intervals (between the partial events of one
    utterance) and CPU on one manifest."""
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.text.scoring import score_utterances
    from speech_transformer.training.data import read_manifest

    clips = read_manifest(manifest)[:limit]
    refs, live, offline, latencies, gaps, cpu, seconds = [], [], [], [], [], 0.0, 0.0
    for u in clips:
        run = stream_clip(recognizer, u.audio, clock, options)
        finals = [e for e, _ in run["events"] if e.type == "final"]
        latencies += [e.latency_s for e in finals]
        by_utterance: dict[float, list[float]] = {}
        for e, t in run["events"]:
            if e.type == "partial":
                by_utterance.setdefault(e.start, []).append(t)
        gaps += [g for times in by_utterance.values() for g in np.diff(times)]
        refs.append(u.text)
        live.append(" ".join(e.text for e in finals))
        offline.append(recognizer.recognize([load_audio(u.audio)], options.decoding)[0].text)
        cpu, seconds = cpu + run["cpu"], seconds + run["seconds"]
    return {"utterances": len(clips), "audio_s": round(seconds, 1), "streaming_wer": score_utterances(refs, live).wer,
            "offline_wer": score_utterances(refs, offline).wer, **_stats("final_latency", latencies),
            **_stats("partial_interval", gaps), "cpu_cores": cpu / seconds}


def _stats(name: str, values) -> dict:
    if not len(values):
        return {f"{name}_median": None, f"{name}_p95": None}
    return {f"{name}_median": float(np.median(values)), f"{name}_p95": float(np.percentile(values, 95)),
            f"{name}_max": float(np.max(values))}


def digits(recognizer, manifest: Path, limit: int, clock: str, options) -> dict:
    """FSDD digits streamed through the digits grammar, beside `match` on the same clips."""
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.commands.grammar import Grammar
    from speech_transformer.commands.matching import match
    from speech_transformer.training.data import read_manifest

    grammar = Grammar.load("digits")
    clips = read_manifest(manifest)[::max(1, len(read_manifest(manifest)) // limit)][:limit]
    right_live = right_offline = 0
    latencies = []
    for u in clips:
        run = stream_clip(recognizer, u.audio, clock, options, grammar)
        said = [e for e, _ in run["events"] if e.type in ("command", "rejected")]
        latencies += [e.latency_s for e in said]
        right_live += len(said) == 1 and said[0].type == "command" and said[0].text == u.text
        (m,) = match(recognizer, [load_audio(u.audio)], grammar)
        right_offline += m is not None and m.text == u.text
    return {"clips": len(clips), "streaming_accuracy": right_live / len(clips),
            "commands_accuracy": right_offline / len(clips), **_stats("command_latency", latencies)}


def long_stream(recognizer, data_dir: Path, minutes: float, options) -> dict:
    """A long stream fed as fast as possible: RSS and buffered audio sampled every 5 minutes of audio."""
    from transcribe_speed import build_long_file

    from speech_transformer.recognition.streaming import StreamingRecognizer

    path = build_long_file(data_dir, minutes / 60, Path("bench/results/streaming") / f"long-{minutes:g}min.flac")
    stream = StreamingRecognizer(recognizer, options)
    samples, finals, rss, buffered = [], 0, [], 0
    with sf.SoundFile(path) as f:
        for k, block in enumerate(f.blocks(int(f.samplerate * BLOCK), dtype="float32")):
            finals += sum(e.type == "final" for e in stream.accept(block, f.samplerate))
            buffered = max(buffered, len(stream.audio))
            if k % int(300 / BLOCK) == 0:
                samples.append((round(k * BLOCK / 60, 1), _rss_mb()))
    return {"minutes": minutes, "finals": finals, "rss_mb_by_minute": samples,
            "max_buffered_s": buffered / 16000, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def main() -> None:
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.recognition.streaming import StreamOptions
    from speech_transformer.training.data import default_data_dir

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit-dev", type=int, default=40)
    p.add_argument("--limit-an4", type=int, default=130)
    p.add_argument("--limit-fsdd", type=int, default=100)
    p.add_argument("--long-minutes", type=float, default=20.0, help="0: skip the long stream")
    p.add_argument("--clock", choices=["simulated", "real"], default="simulated")
    p.add_argument("--options", default="{}", help="StreamOptions fields as JSON, e.g. '{\"end_silence_seconds\": 0.5}'")
    p.add_argument("--final-method", default=None, choices=["attention", "ctc", "lexicon"],
                   help="decode finals with this method of the model's decoding instead of its preferred one")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="AN4 and FSDD split: train to tune options (dev is always librispeech/dev.tsv)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = default_data_dir()
    recognizer = Recognizer.from_dir(args.model)
    decoding = recognizer.options.override(method=args.final_method)
    options = StreamOptions(**json.loads(args.options), decoding=decoding)
    results = {"options": json.loads(args.options), "threads": args.threads, "clock": args.clock, "split": args.split,
               "decoding": decoding.describe()}
    for name, manifest, limit in (("librispeech/dev", data / "librispeech" / "dev.tsv", args.limit_dev),
                                  (f"an4/{args.split}", data / "an4" / f"{args.split}.tsv", args.limit_an4)):
        if limit:
            results[name] = speech_set(recognizer, manifest, limit, args.clock, options)
            print(name, json.dumps(results[name]), flush=True)
    if args.limit_fsdd:
        name = f"fsdd/{args.split} digits"
        results[name] = digits(recognizer, data / "fsdd" / f"{args.split}.tsv", args.limit_fsdd, args.clock, options)
        print(name, json.dumps(results[name]), flush=True)
    if args.long_minutes:
        results["long"] = long_stream(recognizer, data, args.long_minutes, options)
        print("long", json.dumps(results["long"]), flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
