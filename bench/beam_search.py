"""Beam search against beam 1 (greedy) on the same encoder output: ms per output token and peak memory.

    python bench/beam_search.py [--model whisper:base] [--utterances 8] [--beam 5] [--ctc-weight 0]
        [--threads 1] [--json out.json]

The first --utterances of LibriSpeech dev are encoded as one batch; each search then runs in its own child
process (so its peak RSS is its own): beam 1 (greedy without --ctc-weight) and beam --beam, batched over all
utterances. Decoding is timed from the encoder output. Prints per search: decode seconds, output tokens, ms
(wall and CPU) per token, the process's peak RSS and the peak during decoding alone (above what model and
encoder left resident), and the beam/beam-1 ratios. Measured (1 thread, a busy 2-core machine, same run order):

    whisper:base, beam 5:               CPU ms/token 59.4 -> 21.5, peak RSS 2716 -> 1444 MiB
    default, beam 4 with CTC weight 0.3: CPU ms/token 11.4 -> 5.9,  peak RSS 1144 -> 913 MiB

--json also writes every utterance's tokens (to compare two versions of the search).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def child(model: str, utterances: int, beam: int, ctc_weight: float, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.utils.runtime import reset_peak_rss, rss_mb
    from speech_transformer.training.data import read_manifest

    recognizer = Recognizer.from_dir(model)
    waves = [load_audio(u.audio) for u in read_manifest(DATA / "librispeech" / "dev.tsv")[:utterances]]
    enc = recognizer.encode(waves)
    options = DecodingOptions(beam_size=beam, ctc_weight=ctc_weight)
    before = rss_mb()
    reset_peak_rss()
    start, cpu = time.perf_counter(), time.process_time()
    results = recognizer.decode(enc, options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(r.tokens) for r in results)
    return {"beam": beam, "decode_s": seconds, "tokens": tokens, "ms_per_token": 1000 * seconds / max(1, tokens),
            "cpu_ms_per_token": 1000 * cpu / max(1, tokens),
            "peak_rss_mb": rss_mb(peak=True), "decode_peak_mb": rss_mb(peak=True) - before,
            "sequences": [r.tokens for r in results]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper:base")
    p.add_argument("--utterances", type=int, default=8)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--ctc-weight", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the results, tokens included, here")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.model, args.utterances, args.child, args.ctc_weight, args.threads)))
        return
    rows = []
    for beam in (1, args.beam):
        cmd = [sys.executable, __file__, "--model", args.model, "--utterances", str(args.utterances),
               "--ctc-weight", str(args.ctc_weight), "--threads", str(args.threads), "--child", str(beam)]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout))
    print(f"{args.model}, {args.utterances} LibriSpeech dev utterances in one batch, {args.threads} thread(s), "
          f"CTC weight {args.ctc_weight:g}")
    print(f"{'search':>8} {'decode s':>9} {'tokens':>7} {'ms/token':>9} {'CPU ms/token':>13} {'peak MiB':>9} "
          f"{'decode peak MiB':>16}")
    for r in rows:
        name = "greedy" if r["beam"] == 1 and not args.ctc_weight else f"beam {r['beam']}"
        print(f"{name:>8} {r['decode_s']:9.2f} {r['tokens']:7d} {r['ms_per_token']:9.1f} {r['cpu_ms_per_token']:13.1f} "
              f"{r['peak_rss_mb']:9.0f} {r['decode_peak_mb']:16.0f}")
    greedy, beam = rows
    print(f"beam {args.beam}/beam 1: {beam['ms_per_token'] / greedy['ms_per_token']:.2f}x time per token "
          f"({beam['cpu_ms_per_token'] / greedy['cpu_ms_per_token']:.2f}x CPU time), "
          f"{beam['decode_peak_mb'] / max(1.0, greedy['decode_peak_mb']):.2f}x decode peak memory")
    if args.json:
        Path(args.json).write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
