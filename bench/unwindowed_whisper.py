"""Whisper without its 30 s window: WER and CPU cost of a Whisper model fed only the audio's own features, with
some seconds of silence appended by its front end (`ModelConfig.trailing_silence`), against the same model with
its 30 s window, on the first N utterances of `librispeech/dev.tsv` (greedy, no temperature fallback, int8
compute unless --float32).

    OMP_NUM_THREADS=1 python bench/unwindowed_whisper.py [--model whisper:base] [--n 40] [--pads 0 1 3]

The unwindowed model is the same folder with `"frontend": "whisper_log_mel"` and `"trailing_silence"` in its
config.json (a temporary folder of links to the weights and tokenizer). Without anything appended the decoder runs on past the speech
(it has never seen memory end without silence); recipes/distil/RESULTS.md has what one second does.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def unwindowed_copy(model_dir: Path, into: Path, silence: float) -> Path:
    """`into`: links to `model_dir`'s files, and its config.json with the front end that keeps the audio's length
    and appends `silence` seconds."""
    into.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (into / f.name).symlink_to(f.resolve())
    config = json.loads((model_dir / "config.json").read_text())
    config["model"].update(frontend="whisper_log_mel", trailing_silence=silence)
    (into / "config.json").write_text(json.dumps(config, indent=1))
    return into


def run(model_dir: Path, waves: list[np.ndarray], texts: list[str], compute: str, batch: int) -> str:
    from speech_transformer.apps.systems import SpeechTransformerSystem
    from speech_transformer.text.scoring import score_utterances

    system = SpeechTransformerSystem(model_dir, beam_size=1, ctc_weight=0.0, temperatures=(0.0,),
                                     no_speech_threshold=1.0, compute=compute)
    system.load()
    system.transcribe([np.zeros(16000, np.float32)])  # warm-up
    start, hyps = time.process_time(), []
    for i in range(0, len(waves), batch):
        hyps += system.transcribe(waves[i:i + batch])
    cpu = time.process_time() - start
    score = score_utterances(texts, hyps, "english-v1")
    audio = sum(len(w) for w in waves) / 16000
    return (f"{100 * score.wer:.2f} | {score.insertions} | {score.substitutions} | {score.deletions} | "
            f"{cpu / audio:.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="whisper:base", help="whisper:NAME or an imported Whisper model folder")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--pads", type=float, nargs="+", default=[0.0, 1.0, 3.0], help="seconds of silence appended "
                   "(trailing_silence)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--float32", action="store_true")
    args = p.parse_args()
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.audio.manifests import default_data_dir, read_manifest
    from speech_transformer.importers.whisper import resolve

    model_dir = Path(resolve(args.model.removeprefix("whisper:")) if args.model.startswith("whisper:") else args.model)
    utterances = read_manifest(default_data_dir() / "librispeech/dev.tsv")[: args.n]
    waves, texts = [load_audio(u.audio) for u in utterances], [u.text for u in utterances]
    compute = "float32" if args.float32 else "int8"
    print(f"{model_dir.name}, {compute}, greedy, librispeech/dev.tsv first {args.n}, batches of {args.batch_size}, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| input | WER % | insertions | substitutions | deletions | CPU RTF |\n|---|---:|---:|---:|---:|---:|")
    print(f"| 30 s window | {run(model_dir, waves, texts, compute, args.batch_size)} |", flush=True)
    for pad in args.pads:
        with tempfile.TemporaryDirectory() as tmp:
            unwindowed = unwindowed_copy(model_dir, Path(tmp) / model_dir.name, pad)
            print(f"| unwindowed + {pad:g} s of silence | {run(unwindowed, waves, texts, compute, args.batch_size)} |",
                  flush=True)


if __name__ == "__main__":
    main()
