"""Long-form WER of `transcribe`: LibriSpeech dev utterances joined into one stream with 0.3-1.5 s pauses of
faint noise, transcribed whole (VAD chunks, batches) for several VAD merge gaps, scored against the joined
transcripts (english-v1).

    OMP_NUM_THREADS=1 python bench/long_form.py [--model DIR] [--n 30] [--gaps 0.5,1.0,2.0]
        [--max-chunk 20] [--compute auto]

Why: a chunk is all the context the decoder gets; a Whisper-style decoder mishears a short chunk alone
(`samples/jfk.flac`'s "ask not") that it hears within its sentence.
"""

from __future__ import annotations

import argparse
import time

import jiwer
import numpy as np
import soundfile as sf
import torch

from speech_transformer.apps.transcribe import load_model, transcribe
from speech_transformer.text.scoring import normalize_english
from speech_transformer.training.data import default_data_dir, read_manifest


def joined_stream(n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """The first `n` dev utterances with random pauses of faint noise: (16 kHz audio, joined transcript)."""
    rng = np.random.default_rng(seed)
    parts, refs = [], []
    for u in read_manifest(default_data_dir() / "librispeech" / "dev.tsv")[:n]:
        audio, rate = sf.read(u.audio, dtype="float32")
        if rate != 16000:
            raise SystemExit(f"{u.audio}: {rate} Hz, expected 16000")
        pause = rng.standard_normal(int(rng.uniform(0.3, 1.5) * 16000)) * 1e-3
        parts += [audio, pause.astype(np.float32)]
        refs.append(u.text)
    return np.concatenate(parts), " ".join(refs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--n", type=int, default=30, help="dev utterances joined")
    p.add_argument("--gaps", default="0.5,1.0,2.0", help="VadOptions.merge_gap_seconds values, comma-separated")
    p.add_argument("--max-chunk", type=float, default=20.0, help="VadOptions.max_chunk_seconds")
    p.add_argument("--compute", default="auto", choices=["auto", "int8", "float32"])
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    audio, ref = joined_stream(args.n)
    model = load_model(args.model, compute=args.compute)
    print(f"{len(audio) / 16000 / 60:.1f} min of audio, {args.n} utterances, max chunk {args.max_chunk:g} s")
    print("| merge gap s | WER % | chunks | seconds |\n|---:|---:|---:|---:|")
    for gap in (float(g) for g in args.gaps.split(",")):
        start = time.perf_counter()
        t = transcribe(model, audio, merge_gap_seconds=gap, max_chunk_seconds=args.max_chunk)
        wer = jiwer.wer(normalize_english(ref), normalize_english(t.text))
        print(f"| {gap:g} | {100 * wer:.2f} | {len(t.segments)} | {time.perf_counter() - start:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
