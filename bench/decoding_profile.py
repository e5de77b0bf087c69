"""Where a model's recognition time goes, stage by stage: CPU seconds of each stage of `Recognizer.recognize`
on the first N utterances of `librispeech/dev.tsv`, at the model's preferred decoding (or one given).

    OMP_NUM_THREADS=2 python bench/decoding_profile.py [--model default|whisper:base|DIR] [--compute int8]
        [--n 40] [--threads 2] [--batch-seconds 120] [--decoding '{"method": "attention", ...}']

Each stage is timed by wrapping the function that does it (CPU time of the process, `time.process_time`):
features (the front end), encoder (`Encoder.forward` or `forward_with_ctc`), CTC head, decoder network
(`DecoderScorer.logits`: its forward step, cache included, and the logit filters), the cross-attention keys
and values (`Decoder.memory_kv`), CTC prefix scoring (`CTCScorer.score` + `select`), LM (`LMScorer`), the
search itself (the rest of `decode_with_fallback`: candidates, beams, reordering), alignment (word times),
and the rest (batching, padding, text). Printed as seconds, per audio second and share of the total.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict


class Stopwatch:
    """Inclusive CPU seconds of wrapped functions, by stage name."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.running: set[str] = set()  # a stage's functions calling each other count once

    def wrap(self, owner, name: str, stage: str) -> None:
        function = getattr(owner, name)

        def timed(*args, **kwargs):
            if stage in self.running:
                return function(*args, **kwargs)
            self.running.add(stage)
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] += time.process_time() - start
                self.running.discard(stage)

        setattr(owner, name, timed)


def instrument(recognizer) -> Stopwatch:
    from speech_transformer.decoding import fallback, scorers
    from speech_transformer.recognition import recognizer as recognition

    watch = Stopwatch()
    model = recognizer.model
    watch.wrap(model.frontend, "forward", "features")
    watch.wrap(model.encoder, "forward", "encoder")  # without the CTC head (`Recognizer.encode(ctc=False)`)
    watch.wrap(model.encoder, "forward_with_ctc", "encoder")
    watch.wrap(model, "_ctc", "CTC head")
    watch.wrap(model.decoder, "memory_kv", "cross-attention keys/values")
    watch.wrap(scorers.DecoderScorer, "logits", "decoder network")
    watch.wrap(scorers.CTCScorer, "score", "CTC prefix scoring")
    watch.wrap(scorers.CTCScorer, "select", "CTC prefix scoring")
    watch.wrap(scorers.LMScorer, "score", "LM")
    watch.wrap(recognition, "decode_with_fallback", "decoding (all)")
    watch.wrap(recognizer, "_align", "alignment")
    return watch


def table(seconds: dict[str, float], total: float, audio: float) -> str:
    inner = ("cross-attention keys/values", "decoder network", "CTC prefix scoring", "LM")
    rows = {k: seconds.get(k, 0.0) for k in ("features", "encoder", "CTC head")}
    rows.update({k: seconds.get(k, 0.0) for k in inner})
    rows["search (candidates, beams, filters)"] = seconds.get("decoding (all)", 0.0) - sum(rows[k] for k in inner)
    rows["alignment"] = seconds.get("alignment", 0.0)
    rows["rest (batching, text)"] = total - sum(rows.values())
    lines = ["| stage | CPU s | CPU s per audio s | share |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {v:.2f} | {v / audio:.4f} | {100 * v / total:.1f} % |" for k, v in rows.items()]
    lines.append(f"| **total** | {total:.2f} | {total / audio:.4f} ({audio / total:.1f}x real time) | 100 % |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="default, whisper:NAME or a model directory")
    p.add_argument("--compute", default="int8", choices=["float32", "int8"])
    p.add_argument("--n", type=int, default=40, help="first N utterances of librispeech/dev.tsv")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-seconds", type=float, default=120.0)
    p.add_argument("--decoding", help="DecodingOptions as JSON (default: the model's preferred decoding)")
    args = p.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.audio.manifests import default_data_dir, read_manifest
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.recognition.recognizer import Recognizer

    name = None if args.model == "default" else args.model
    recognizer = Recognizer.from_dir(name, compute=args.compute)
    options = DecodingOptions.from_dict(json.loads(args.decoding)) if args.decoding else recognizer.options
    utterances = read_manifest(default_data_dir() / "librispeech/dev.tsv")[: args.n]
    audio = [load_audio(u.audio) for u in utterances]
    recognizer.recognize([np.zeros(16000, dtype=np.float32)], options)  # warm-up: first-call allocations
    watch = instrument(recognizer)
    start = time.process_time()
    recognizer.recognize(audio, options, args.batch_seconds)
    total = time.process_time() - start
    seconds = sum(len(a) for a in audio) / 16000
    print(f"{args.model} ({args.compute}), {options.describe()}, librispeech/dev.tsv first {args.n} utterances "
          f"({seconds / 60:.1f} min), {args.threads} thread(s)\n")
    print(table(watch.seconds, total, seconds))


if __name__ == "__main__":
    main()
