"""Model speed on this machine: parameters, encoder time per second of audio, decoding tokens/s.

    python bench/model_speed.py [--presets tiny small base] [--threads 2] [--tokens 50]

Random weights, with <eos> masked so that every search decodes exactly --tokens tokens: the
numbers measure the code, not what a trained model happens to say.
"""

from __future__ import annotations

import argparse
import time

import torch

from speech_transformer.audio.loading import SAMPLE_RATE
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import decode
from speech_transformer.model.transformer import SpeechTransformer, preset
from speech_transformer.text.tokenizer import SOS_EOS_ID


class NoEos(torch.nn.Module):
    """Output layer wrapper that never lets <eos> win (benchmarks only)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        logits = self.linear(x)
        logits[..., SOS_EOS_ID] = -1e4
        return logits


def timed(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


@torch.inference_mode()
def bench(name: str, seconds: float, batch: int, tokens: int) -> dict:
    torch.manual_seed(0)
    model = SpeechTransformer(preset(name)).eval()
    model.decoder.output = NoEos(model.decoder.output)
    audio = torch.randn(batch, int(seconds * SAMPLE_RATE)) * 0.1
    lengths = torch.full((batch,), audio.shape[1])

    def encode():
        feats, n = model.frontend(audio, lengths)
        return model.encode(feats, n)

    encode_s = timed(encode)
    memory, memory_lengths = encode()
    row = {"preset": name, "params_M": model.num_parameters() / 1e6,
           "encode_ms_per_audio_s": 1000 * encode_s / (seconds * batch)}
    for label, options in (("greedy", DecodingOptions(beam_size=1, ctc_weight=0.0)),
                           ("beam4+ctc", DecodingOptions(beam_size=4, ctc_weight=0.3)),
                           ("beam4", DecodingOptions(beam_size=4, ctc_weight=0.0))):
        options = DecodingOptions(**{**options.__dict__, "max_length": tokens, "max_tokens_per_frame": 10.0,
                                     "max_repeats": 10_000})
        elapsed = timed(lambda: decode(model, memory, memory_lengths, options), repeats=2)
        row[f"{label}_tokens_per_s"] = batch * tokens / elapsed
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small", "base"])
    p.add_argument("--seconds", type=float, default=10.0, help="audio per utterance")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--tokens", type=int, default=50)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.seconds:.0f} s audio x {args.batch}, "
          f"{args.tokens} tokens decoded per utterance")
    rows = [bench(n, args.seconds, args.batch, args.tokens) for n in args.presets]
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")


if __name__ == "__main__":
    main()
