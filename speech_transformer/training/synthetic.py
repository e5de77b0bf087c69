"""Synthetic speech from the offline voices of this machine: a training manifest of varied voices.

    python -m speech_transformer.training.synthetic --text ../shared/data/text/ljspeech-sentences.txt \\
        --out /var/tmp/tts --sentences 1200 [--digits 300]

Each line of `--text` (`ID<TAB>sentence`, or a bare sentence) is spoken by one voice drawn from `VOICES`
at a random rate and pitch, written as 16 kHz mono PCM-16 WAV under OUT/, and listed in OUT/synthetic.jsonl
(`data.write_manifest`; the voice is the utterance's speaker). Sentences with digits are left
out (what a voice says for "1450" is not in the text). `--digits N` adds N spoken digits ("seven") in
the same voices, FSDD's task. Voices (Debian packages, all free to use for training):
espeak-ng (GPL-3.0; formant synthesis), flite (BSD-like; CMU kal, awb, rms, slt), festival
(kallpc16k diphones, BSD-like; cmu_us_slt_arctic_hts, BSD-like). A voice the machine lacks is an error
naming its package: the set is the same on every machine that makes it.
"""

from __future__ import annotations

import argparse
import functools
import random
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.text.normalize import DIGIT_WORDS
from speech_transformer.training.data import Utterance, write_manifest

MANIFEST = "synthetic.jsonl"


@dataclass(frozen=True)
class Voice:
    engine: str  # espeak-ng | flite | festival
    name: str  # the engine's voice name
    package: str  # the Debian package that provides it

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.name}"


VOICES = (
    *(Voice("espeak-ng", v, "espeak-ng") for v in
      ("en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-us+f5")),
    *(Voice("flite", v, "flite") for v in ("kal16", "awb", "rms", "slt")),
    Voice("festival", "kal_diphone", "festvox-kallpc16k"),
    Voice("festival", "cmu_us_slt_arctic_hts", "festvox-us-slt-hts"),
)


class SynthesisError(RuntimeError):
    """A voice is missing or failed on a text."""


def command(voice: Voice, text: str, wav: Path, rate: float, pitch: float) -> list[str]:
    """The command line that speaks `text` into `wav`: `rate` x the voice's normal speed,
    `pitch` in [0, 1] (espeak-ng only; flite and festival keep their own)."""
    if voice.engine == "espeak-ng":
        return ["espeak-ng", "-v", voice.name, "-s", str(round(175 * rate)), "-p", str(round(100 * pitch)),
                "-w", str(wav), text]
    if voice.engine == "flite":
        return ["flite", "-voice", voice.name, "--setf", f"duration_stretch={1 / rate:.3f}", "-t", text,
                "-o", str(wav)]
    quoted = text.replace("\\", " ").replace('"', " ")
    return ["festival", "--batch", f"(voice_{voice.name})", f"(Parameter.set 'Duration_Stretch {1 / rate:.3f})",
            f"(utt.save.wave (utt.synth (Utterance Text \"{quoted}\")) \"{wav}\" 'riff)"]


@functools.cache
def flite_voices() -> frozenset[str]:
    """The voices flite has (`flite -lv`): it speaks an unknown voice name with its default voice, silently."""
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True, timeout=30).stdout
    return frozenset(listed.split(":", 1)[-1].split())


def speak(voice: Voice, text: str, wav: Path, rate: float = 1.0, pitch: float = 0.5) -> float:
    """Speak `text` with `voice` into a 16 kHz mono WAV at `wav`; its duration in seconds."""
    argv = command(voice, text, wav.with_suffix(".raw.wav"), rate, pitch)
    if voice.engine == "flite" and shutil.which("flite") and voice.name not in flite_voices():
        raise SynthesisError(f"{voice.label}: flite has no such voice (it has {sorted(flite_voices())})")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SynthesisError(f"{voice.label}: {argv[0]} is not installed (Debian package {voice.package})") from None
    raw = wav.with_suffix(".raw.wav")
    if done.returncode != 0 or not raw.is_file() or raw.stat().st_size <= 44:
        raise SynthesisError(f"{voice.label}: no audio for {text[:40]!r} (Debian package {voice.package}?): "
                             f"{(done.stderr or done.stdout).strip()[:200]}")
    wave = load_audio(str(raw))
    raw.unlink()
    sf.write(str(wav), wave, SAMPLE_RATE, subtype="PCM_16")
    return len(wave) / SAMPLE_RATE


def sentences(path: Path) -> list[str]:
    """The sentences of a text file (`ID<TAB>text` or bare lines) a voice can say as written: no digits."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("\t")[-1].strip()
        if text and not re.search(r"[0-9]", text):
            out.append(text)
    return out


def make_set(texts: list[str], out: Path, seed: int = 0, voices: tuple[Voice, ...] = VOICES) -> Path:
    """Speak every text once, each by a random voice, rate in [0.85, 1.15] and pitch in [0.3, 0.7];
    write OUT/synthetic.jsonl. Clips already in OUT are kept (a second run continues)."""
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, text in enumerate(texts):
        voice, rate, pitch = rng.choice(voices), rng.uniform(0.85, 1.15), rng.uniform(0.3, 0.7)
        wav = out / f"tts-{k:05d}.wav"
        seconds = sf.info(str(wav)).duration if wav.is_file() else speak(voice, text.lower(), wav, rate, pitch)
        rows.append(Utterance(wav.stem, str(wav.resolve()), round(seconds, 3), text, voice.label))
    manifest = out / MANIFEST
    write_manifest(rows, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--text", type=Path, required=True, help="sentences, one per line (ID<TAB>text allowed)")
    p.add_argument("--out", type=Path, required=True, help="folder for the clips and synthetic.tsv")
    p.add_argument("--sentences", type=int, default=1000, help="how many sentences (a seeded random sample)")
    p.add_argument("--digits", type=int, default=0, help="spoken digits added")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    pool = sentences(args.text)
    texts = rng.sample(pool, min(args.sentences, len(pool))) + [rng.choice(DIGIT_WORDS) for _ in range(args.digits)]
    try:
        manifest = make_set(texts, args.out, args.seed)
    except SynthesisError as e:
        print(f"speech_transformer.training.synthetic: error: {e}", file=sys.stderr)
        return 1
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
