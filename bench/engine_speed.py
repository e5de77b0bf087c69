"""Engine speed on the same weights: our engine (float32, int8) against faster-whisper int8 on Whisper base,
greedy and beam 5, and the default model at its preferred decoding, on the same utterances.

    OMP_NUM_THREADS=1 python bench/engine_speed.py [--n 20] [--threads 1] [--systems KEY ...] [--batch-size 8]

Every system runs in a fresh child process (its peak memory is its own, model loading excluded from the
times) through `speech_transformer.apps.evaluate` on the first N utterances of `librispeech/dev.tsv`, in
batches of --batch-size (faster-whisper transcribes one utterance per call, as its `evaluate` system does).
Our Whisper decoding is openai-whisper's `decode`: no temperature fallback, no silence decision.

Columns: WER (normaliser english-v1); RTF and CPU RTF (wall / CPU seconds per audio second); x real time
(1 / CPU RTF); peak RSS; encoder CPU seconds per utterance (the encoder call alone; our Whisper encoder and
CTranslate2's both run one 30 s window per utterance); ms per output token = the CPU time of everything but
the encoder (features, search, text) per output token (the transcript's tokens + <|endoftext|>, counted with
the model's own tokenizer); and our RTF / faster-whisper's RTF with the same search in the same run, wall and
CPU. On a shared machine wall time includes waiting for a core: compare the CPU columns.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from decoding_profile import Stopwatch  # bench/ is on the path of its scripts

SYSTEMS = {  # key: (label, peer key for the ratio); run in this order
    "ours-greedy": ("ours float32, greedy", "fw-int8-greedy"),
    "ours-int8-greedy": ("ours int8, greedy", "fw-int8-greedy"),
    "fw-int8-greedy": ("faster-whisper int8, greedy", None),
    "ours-beam5": ("ours float32, beam 5", "fw-int8-beam5"),
    "ours-int8-beam5": ("ours int8, beam 5", "fw-int8-beam5"),
    "fw-int8-beam5": ("faster-whisper int8, beam 5", None),
    "default": ("default model float32, preferred decoding", None),
    "default-int8": ("default model int8, preferred decoding", None),
}


def make_system(key: str, threads: int):
    from speech_transformer.apps.systems import FasterWhisperSystem, SpeechTransformerSystem
    from speech_transformer.importers.whisper import resolve
    from speech_transformer.pretrained import default_model_dir

    label = SYSTEMS[key][0]
    beam = 5 if key.endswith("beam5") else 1
    compute = "int8" if "int8" in key else "float32"
    if key.startswith("fw-"):
        return FasterWhisperSystem("base", beam_size=beam, compute_type="int8", name=label, threads=threads)
    if key.startswith("default"):
        return SpeechTransformerSystem(default_model_dir(), name=label, compute=compute)
    return SpeechTransformerSystem(resolve("base"), beam_size=beam, ctc_weight=0.0, temperatures=(0.0,),
                                   no_speech_threshold=1.0, name=label, compute=compute)


def timed_encoder(system) -> Stopwatch:
    """The system's encoder call timed (CPU seconds under "encoder")."""
    watch = Stopwatch()
    if hasattr(system, "_model") and system._model is not None:  # faster-whisper's
        watch.wrap(system._model, "encode", "encoder")
    else:
        watch.wrap(system._recognizer.model.encoder, "forward_with_ctc", "encoder")
    return watch


def count_tokens(system, texts: list[str]) -> int:
    """Output tokens of the transcripts (+ one end token each), with the model's own tokenizer."""
    if hasattr(system, "_recognizer"):
        return sum(len(system._recognizer.tokenizer.encode(t)) + 1 for t in texts)
    return sum(len(system._model.hf_tokenizer.encode(t, add_special_tokens=False).ids) + 1 for t in texts)


def worker(key: str, args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from speech_transformer.apps.evaluate import run_system, system_report
    from speech_transformer.audio.manifests import default_data_dir, read_manifest

    utterances = read_manifest(default_data_dir() / "librispeech/dev.tsv")[: args.n]
    system = make_system(key, args.threads)
    system.load()
    system.transcribe([__import__("numpy").zeros(16000, dtype="float32")])  # warm-up: first-call allocations
    watch = timed_encoder(system)
    report = system_report(run_system(system, utterances, args.batch_size, progress=False), utterances, "english-v1")
    hyps = [u["hyp"] for u in report["utterances"]]
    tokens = count_tokens(system, hyps)
    row = {k: report[k] for k in ("name", "wer", "n_words", "n_utts", "rtf", "rtf_cpu", "peak_rss_mb",
                                  "audio_seconds", "wall_seconds", "cpu_seconds")}
    row.update(key=key, encoder_seconds=watch.seconds["encoder"], tokens=tokens, hyps=hyps)
    print("RESULT " + json.dumps(row), flush=True)


def table(rows: dict[str, dict], args: argparse.Namespace) -> str:
    lines = [f"librispeech/dev.tsv first {args.n} utterances, {args.threads} thread(s), batches of {args.batch_size}",
             "", "| system | WER % | RTF | CPU RTF | x real time | peak RSS MB | encoder s/utt | ms/token (rest) "
             "| RTF / faster-whisper | CPU RTF / faster-whisper |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for key, r in rows.items():
        peer = rows.get(SYSTEMS[key][1] or "")
        ratios = [f"{r[k] / peer[k]:.2f}" if peer else "-" for k in ("rtf", "rtf_cpu")]
        rest_ms = 1000 * (r["cpu_seconds"] - r["encoder_seconds"]) / max(r["tokens"], 1)
        lines.append(f"| {r['name']} | {100 * r['wer']:.2f} | {r['rtf']:.3f} | {r['rtf_cpu']:.3f} | "
                     f"{1 / r['rtf_cpu']:.1f} | {r['peak_rss_mb']:.0f} | {r['encoder_seconds'] / r['n_utts']:.3f} | "
                     f"{rest_ms:.1f} | {' | '.join(ratios)} |")
    same = [(a, b) for a, b in (("ours-greedy", "ours-int8-greedy"), ("ours-beam5", "ours-int8-beam5"),
                                ("default", "default-int8")) if a in rows and b in rows]
    for a, b in same:
        n = sum(x != y for x, y in zip(rows[a]["hyps"], rows[b]["hyps"]))
        lines.append(f"\n{rows[b]['name']}: {n} of {rows[a]['n_utts']} transcripts differ from float32")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20, help="first N utterances of librispeech/dev.tsv")
    p.add_argument("--threads", type=int, default=2, help="threads of both engines")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=list(SYSTEMS))
    p.add_argument("--worker", choices=list(SYSTEMS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    rows = {}
    for key in args.systems:
        cmd = [sys.executable, __file__, "--worker", key, "--n", str(args.n), "--threads", str(args.threads),
               "--batch-size", str(args.batch_size)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        result = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
        if out.returncode or not result:
            print(f"{key}: failed (status {out.returncode})\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
            continue
        rows[key] = json.loads(result[0][len("RESULT "):])
        print(f"{key}: RTF {rows[key]['rtf']:.3f}, WER {100 * rows[key]['wer']:.2f} %", file=sys.stderr, flush=True)
    print(table(rows, args))


if __name__ == "__main__":
    main()
