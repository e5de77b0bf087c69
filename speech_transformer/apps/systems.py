"""Systems to score: anything that turns utterances into transcripts.

A `System` takes a batch of 16 kHz mono float32 waveforms and returns one transcript each.
A system that reads files itself (an external command) sets `reads_files` and implements
`transcribe_paths`; the evaluator then hands it the original audio paths instead of decoded audio.

Adapters:
- `SpeechTransformerSystem`: our model (a model folder, or the embedded default), with decoding options.
- `PocketSphinxSystem`: PocketSphinx 5 with its shipped US English acoustic model, LM and dictionary.
- `CommandSystem`: any shell command that prints a transcript, `{audio}` replaced by the file path.

`parse_system` turns a `--system` spec into a System:
  pocketsphinx                    PocketSphinx baseline
  cmd:NAME=COMMAND                a shell command with {audio} in it, e.g. "cmd:whisper=whisper-cli {audio}"
  model:DIR[,beam=N,ctc=W,...]    our model from a folder (or whisper:NAME); device, name, and any decoding
                                  setting by name or short key (`decoding.options.OPTIONS`): method, beam, ctc,
                                  compute=int8|float32|auto (int8/bfloat16 matrices on the CPU; auto, the
                                  default: int8 for a model stored quantized, as the shipped ones are),
                                  lm, ws (word score), rescore, nbest, word_lm, words, ... A setting of one search
                                  chooses it; `method=lexicon` alone is the model's tuned lexicon search
  default[,beam=N,ctc=W,...]      the embedded default model
  faster-whisper:DIR[,beam=N,compute=int8|float32,threads=N,name=S]
                                  faster-whisper (CTranslate2) on a model folder, or an installed name (base)
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speech_transformer.audio.loading import SAMPLE_RATE
from speech_transformer.decoding.options import OPTIONS, SPEC_KEYS

COMMAND_TIMEOUT_S = 600.0


class TranscriptionError(RuntimeError):
    """A system failed on an input; the message says why."""


class System(ABC):
    """A speech recogniser under evaluation."""

    name: str
    reads_files: bool = False

    def load(self) -> None:
        """Load models; called once before timing starts. Default: nothing to load."""

    @abstractmethod
    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        """One transcript per 16 kHz mono float32 waveform."""

    def transcribe_paths(self, paths: Sequence[str]) -> list[str]:
        """One transcript per audio file; used instead of `transcribe` when `reads_files` is set."""
        from speech_transformer.audio.loading import load_audio

        return self.transcribe([load_audio(p) for p in paths])

    def config(self) -> dict[str, Any]:
        """What identifies this system's outputs (also keys its result cache)."""
        return {"name": self.name, "class": type(self).__name__}


class PocketSphinxSystem(System):
    """PocketSphinx 5.1 with its default shipped en-us model (acoustic model, en-us.lm.bin, cmudict)."""

    def __init__(self, name: str = "pocketsphinx", **decoder_options: Any):
        self.name = name
        self.decoder_options = decoder_options
        self._decoder = None

    def load(self) -> None:
        if self._decoder is None:
            from pocketsphinx import Decoder

            self._decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **self.decoder_options)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        self.load()
        out = []
        for wave in waveforms:
            pcm = (np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            out.append(hyp.hypstr if hyp is not None else "")
        return out

    def config(self) -> dict[str, Any]:
        import pocketsphinx

        return {**super().config(), "version": _version("pocketsphinx"), "model": "en-us (shipped)",
                "model_path": pocketsphinx.get_model_path(), "options": self.decoder_options}


class CommandSystem(System):
    """A shell command that prints the transcript of `{audio}` on stdout.

    The command runs once per file through the shell, `{audio}` replaced by the quoted path;
    a non-zero exit status or a timeout is an error for that utterance.
    """

    reads_files = True

    def __init__(self, name: str, command: str, timeout: float = COMMAND_TIMEOUT_S):
        if "{audio}" not in command:
            raise ValueError(f"command for system {name!r} has no {{audio}} placeholder: {command!r}")
        self.name = name
        self.command = command
        self.timeout = timeout

    def transcribe_paths(self, paths: Sequence[str]) -> list[str]:
        return [self._run(p) for p in paths]

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        import soundfile as sf

        out = []
        with tempfile.TemporaryDirectory(prefix="st-cmd-") as tmp:
            for i, wave in enumerate(waveforms):
                path = os.path.join(tmp, f"{i}.wav")
                sf.write(path, np.asarray(wave, dtype=np.float32), SAMPLE_RATE, subtype="PCM_16")
                out.append(self._run(path))
        return out

    def _run(self, path: str) -> str:
        cmd = self.command.replace("{audio}", shlex.quote(str(path)))
        try:
            p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise TranscriptionError(f"command timed out after {self.timeout:g} s: {cmd}") from None
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
            raise TranscriptionError(f"command exited with status {p.returncode}: {cmd}"
                               + (f" ({' | '.join(tail)})" if tail else ""))
        return " ".join(p.stdout.split())

    def config(self) -> dict[str, Any]:
        return {**super().config(), "command": self.command}


class SpeechTransformerSystem(System):
    """Our model, loaded from a folder through `speech_transformer.recognition.recognizer.Recognizer`."""

    def __init__(self, model_dir: str | os.PathLike, device: str = "cpu", name: str | None = None,
                 compute: str = "auto", **decoding: Any):
        """`decoding`: DecodingOptions fields that change the model's preferred decoding (None: keep it)."""
        from speech_transformer.decoding.options import DecodingOptions

        self.model_dir = Path(model_dir)
        self.decoding: dict[str, Any] = {k: v for k, v in decoding.items() if v is not None}
        DecodingOptions().override(**self.decoding)  # unknown fields and bad values are refused here
        self.device, self.compute = device, compute
        opts = ",".join(f"{k}={v}" for k, v in sorted({**self.decoding, **(
            {"compute": compute} if compute != "auto" else {})}.items()))
        self.name = name or f"speech-transformer:{self.model_dir.name}" + (f"({opts})" if opts else "")
        self._recognizer = None

    def load(self) -> None:
        if self._recognizer is None:
            from speech_transformer.recognition.recognizer import Recognizer

            self._recognizer = Recognizer.from_dir(self.model_dir, device=self.device, compute=self.compute)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        self.load()
        results = self._recognizer.recognize(list(waveforms), self.options)
        return [r.text for r in results]

    @property
    def options(self):
        """The model's preferred decoding with the fields this system's spec sets."""
        self.load()
        return self._recognizer.options.override(**self.decoding)

    def config(self) -> dict[str, Any]:
        files = sorted(self.model_dir.glob("*")) if self.model_dir.is_dir() else []
        stamp = [(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files if f.is_file()]
        named = str(self.model_dir).startswith("whisper:")  # an imported Whisper model, by its name
        return {**super().config(), "model_dir": str(self.model_dir if named else self.model_dir.resolve()),
                "decoding": self.options.to_dict(),
                "device": self.device, "compute": self.compute, "files": stamp}


def default_model_system(**options: Any) -> SpeechTransformerSystem:
    """The embedded default model. Raises FileNotFoundError (with the reason) when none ships."""
    try:
        from speech_transformer.pretrained import default_model_dir
    except ImportError as e:
        raise FileNotFoundError(f"no embedded default model in this build ({e}); "
                                "pass --model DIR or --system") from None
    return SpeechTransformerSystem(default_model_dir(), **options)


def parse_options(parts: list[str], spec: str, keys: dict[str, tuple[str, Any]], what: str) -> dict[str, Any]:
    """`key=value` parts of a `--system` spec -> {name: value}, by `keys` {key: (name, parse)}."""
    out = {}
    for part in parts:
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or key not in keys:
            raise ValueError(f"bad {what} option {part!r} in {spec!r} (known: {', '.join(sorted(keys))})")
        name, parse = keys[key]
        try:
            out[name] = parse(value)
        except ValueError:
            raise ValueError(f"bad value for {key} in {spec!r}: {value!r}") from None
    return out


_MODEL_KEYS = {"device": ("device", str), "name": ("name", str), "compute": ("compute", str),
               **{key: (name, OPTIONS[name].parse) for key, name in SPEC_KEYS.items() if OPTIONS[name].kind is not tuple}}


def _model_options(parts: list[str], spec: str) -> dict[str, Any]:
    return parse_options(parts, spec, _MODEL_KEYS, "model")


def parse_system(spec: str) -> System:
    """A System from a `--system` spec (see the module docstring). Raises ValueError on a bad spec."""
    spec = spec.strip()
    if spec == "pocketsphinx":
        return PocketSphinxSystem()
    if spec.startswith("cmd:"):
        name, eq, command = spec[4:].partition("=")
        if not eq or not name.strip() or not command.strip():
            raise ValueError(f"bad command system {spec!r}: expected cmd:NAME=COMMAND with {{audio}} in COMMAND")
        return CommandSystem(name.strip(), command.strip())
    if spec.startswith("model:"):
        model_dir, *parts = spec[6:].split(",")
        if not model_dir:
            raise ValueError(f"bad model system {spec!r}: expected model:DIR[,beam=N,ctc=W]")
        return SpeechTransformerSystem(model_dir, **_model_options(parts, spec))
    if spec == "default" or spec.startswith("default,"):
        return default_model_system(**_model_options(spec.split(",")[1:], spec))
    if spec.startswith("faster-whisper:"):
        return _faster_whisper_system(spec)
    raise ValueError(f"unknown system {spec!r} (expected pocketsphinx, cmd:NAME=COMMAND, model:DIR[,opts], "
                     "default[,opts] or faster-whisper:DIR[,opts])")


class FasterWhisperSystem(System):
    """faster-whisper (CTranslate2) on a model folder, or on an installed copy named like `whisper:NAME` (base).

    Decoding as close to ours as faster-whisper allows: English, temperature 0 only (no fallback), no
    timestamps, no conditioning on previous text, one utterance per call; its own suppression of non-speech
    symbols (`suppress_tokens=[-1]`) and blank-at-start are kept as faster-whisper does them.
    """

    def __init__(self, model: str, beam_size: int = 5, compute_type: str = "int8", name: str | None = None,
                 threads: int | None = None, language: str = "en"):
        if compute_type not in ("int8", "float32", "int8_float32", "float16", "int16", "default"):
            raise ValueError(f"faster-whisper compute type {compute_type!r}: expected int8 or float32")
        self.model, self.beam_size, self.compute_type = model, int(beam_size), compute_type
        self.threads, self.language = threads, language
        self.name = name or f"faster-whisper:{Path(model).name}(beam={beam_size},{compute_type})"
        self._model = None

    def model_dir(self) -> Path:
        """The folder ctranslate2 loads: `model` itself, or an installed copy concatenated into the cache."""
        from speech_transformer.utils.files import cache_dir
        from speech_transformer.importers.ctranslate2 import FasterWhisperFolder
        from speech_transformer.importers.whisper import installed_folder

        path = Path(self.model).expanduser()
        if path.is_dir():
            return FasterWhisperFolder.at(path).materialize(cache_dir() / "faster-whisper")
        folder, looked = installed_folder(self.model)
        if folder is None:
            raise FileNotFoundError(f"faster-whisper:{self.model}: not a folder, and no installed copy "
                                    f"(looked in: {'; '.join(looked)})")
        return folder.materialize(cache_dir() / "faster-whisper")

    def load(self) -> None:
        if self._model is None:
            import torch
            from faster_whisper import WhisperModel

            threads = self.threads or torch.get_num_threads()
            self._model = WhisperModel(str(self.model_dir()), device="cpu", compute_type=self.compute_type,
                                       cpu_threads=threads, num_workers=1)

    def transcribe(self, waveforms: Sequence[np.ndarray]) -> list[str]:
        self.load()
        out = []
        for wave in waveforms:
            segments, _ = self._model.transcribe(
                np.asarray(wave, dtype=np.float32), language=self.language, beam_size=self.beam_size,
                temperature=0.0, without_timestamps=True, condition_on_previous_text=False, vad_filter=False)
            out.append("".join(s.text for s in segments).strip())
        return out

    def config(self) -> dict[str, Any]:
        return {**super().config(), "model": str(self.model), "beam_size": self.beam_size,
                "compute_type": self.compute_type, "language": self.language,
                "version": _version("faster-whisper"), "ctranslate2": _version("ctranslate2")}


_FASTER_WHISPER_KEYS = {"beam": ("beam_size", int), "compute": ("compute_type", str), "name": ("name", str),
                        "threads": ("threads", int), "language": ("language", str)}


def _faster_whisper_system(spec: str) -> FasterWhisperSystem:
    model, *parts = spec[len("faster-whisper:"):].split(",")
    if not model:
        raise ValueError(f"bad faster-whisper system {spec!r}: expected faster-whisper:DIR[,beam=N,compute=int8]")
    return FasterWhisperSystem(model, **parse_options(parts, spec, _FASTER_WHISPER_KEYS, "faster-whisper"))


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
