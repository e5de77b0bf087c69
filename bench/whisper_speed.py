"""Our code vs openai-whisper on identical Whisper weights: encoder and greedy decoding per 30 s window.

    python bench/whisper_speed.py [--sizes tiny base] [--threads 2] [--tokens 100] [--batch 8]

Random weights (openai-whisper's own model class, converted with `speech_transformer.importers.whisper_convert`), fp32 on
CPU. <|endoftext|> is suppressed on both sides, so every window decodes exactly --tokens tokens after the
same prompt; decoding is timed from the encoder output, so it measures the decoder loops alone.
Each number is the best of 3 runs after a warm-up. Needs the test extra (openai-whisper).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import torch
import whisper
from whisper.decoding import DecodingOptions as TheirOptions
from whisper.decoding import decode as their_decode
from whisper.model import ModelDimensions, Whisper

from model_speed import timed  # bench/ is on sys.path when this script runs
from speech_transformer.model.checkpoint import load_model
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import decode
from speech_transformer.importers.whisper_convert import import_whisper

SIZES = {"tiny": (384, 6, 4), "base": (512, 8, 6), "small": (768, 12, 12)}


def random_pair(size: str, directory: Path):
    d, heads, layers = SIZES[size]
    dims = ModelDimensions(80, 1500, d, heads, layers, 51864, 448, d, heads, layers)
    torch.manual_seed(0)
    theirs = Whisper(dims)
    with torch.no_grad():
        theirs.decoder.positional_embedding.normal_(0, 0.02)  # torch.empty in openai-whisper
    theirs.eval()
    path = directory / f"{size}.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": theirs.state_dict()}, path)
    ours, tokenizer, _ = load_model(import_whisper(path, directory / size))
    return theirs, ours, tokenizer


@torch.inference_mode()
def bench(size: str, batch: int, tokens: int, directory: Path) -> list[dict]:
    theirs, ours, tokenizer = random_pair(size, directory)
    audio = torch.randn(batch, 30 * 16000) * 0.1
    lengths = torch.full((batch,), audio.shape[1])
    mel = whisper.log_mel_spectrogram(audio)  # (B, 80, 3000)
    feats, feat_lengths = ours.frontend(audio, lengths)
    eot = tokenizer.special.eos
    special = dataclasses.replace(tokenizer.special, suppress=tokenizer.special.suppress + (eot,))
    options = DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=tokens, max_repeats=10 * tokens)
    their_options = TheirOptions(language="en", without_timestamps=True, sample_len=tokens, suppress_tokens=str(eot),
                                 suppress_blank=False, fp16=False)
    rows = []
    for n in sorted({1, batch}):
        memory, memory_lengths = ours.encode(feats[:n], feat_lengths[:n])
        their_memory = theirs.encoder(mel[:n])
        ours_tokens = decode(ours, memory, memory_lengths, options, special)
        their_tokens = their_decode(theirs, their_memory, their_options)
        assert all(len(h.tokens) == tokens for h in ours_tokens), "our decoder did not decode --tokens tokens"
        assert all(len(r.tokens) == tokens for r in their_tokens), "openai-whisper did not decode --tokens tokens"
        rows.append({
            "size": size, "windows": n,
            "ours_encoder": timed(lambda: ours.encode(feats[:n], feat_lengths[:n])),
            "theirs_encoder": timed(lambda: theirs.encoder(mel[:n])),
            "ours_decode": timed(lambda: decode(ours, memory, memory_lengths, options, special)),
            "theirs_decode": timed(lambda: their_decode(theirs, their_memory, their_options)),
        })
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=list(SIZES))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=100)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.tokens} tokens per window, fp32 CPU")
    print("| model | windows | encoder s/window ours | theirs | ratio | decode s/window ours | theirs | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for r in bench(size, args.batch, args.tokens, Path(tmp)):
                n = r["windows"]
                print(f"| {r['size']} | {n} | {r['ours_encoder'] / n:.3f} | {r['theirs_encoder'] / n:.3f} | "
                      f"{r['ours_encoder'] / r['theirs_encoder']:.2f} | {r['ours_decode'] / n:.3f} | "
                      f"{r['theirs_decode'] / n:.3f} | {r['ours_decode'] / r['theirs_decode']:.2f} |", flush=True)
    print("ratio = ours / theirs (below 1: ours is faster)")


if __name__ == "__main__":
    main()
