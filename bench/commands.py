"""Voice commands with a grammar: our model vs PocketSphinx on the same grammars, in one run.

    OMP_NUM_THREADS=2 nice python bench/commands.py [--threads 2] [--out bench/results/commands.json]
    OMP_NUM_THREADS=2 nice python bench/commands.py --tune     # the rejection threshold, on training data

Sets (all from ../shared/data unless said):
- FSDD test with `grammars/digits.txt`: command accuracy (the digit said).
- AN4 test with a grammar derived from AN4 *train* transcripts only (`an4_grammar`): the control words
  (words that only ever start a transcript) then one or more items ({letter}, {number} or any other train
  word): WER.
- LibriSpeech dev against `grammars/desktop.txt`: false accepts of open speech at the default threshold.
- In-grammar rejects: the AN4 test utterances the desktop grammar can say, FSDD test (digits grammar),
  and a synthetic set: desktop phrases spoken by espeak-ng and flite voices, synthesised into a temporary
  folder now (never committed).
- Latency of one 2 s command (desktop grammar), median of repeated runs, on --threads threads.
PocketSphinx 5.1.1 (shipped en-us model) decodes the same grammars written as JSGF (`Grammar.to_jsgf`);
it has no rejection, so any non-empty hypothesis counts as an accept.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.commands.matching import (
    DEFAULT_REJECT_THRESHOLD,
    MatchOptions,
    match_all,
)
from speech_transformer.training.data import default_data_dir, read_manifest
from speech_transformer.commands.grammar import Grammar
from speech_transformer.recognition.recognizer import Recognizer
from speech_transformer.training.synthetic import Voice, speak

ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029", "en-us+m7"]
FLITE_VOICES = ["kal", "slt", "awb", "rms"]
# PocketSphinx with its default beams takes minutes per AN4 utterance with the looping grammar; these ~15 s
AN4_SPHINX_BEAMS = {"beam": 1e-20, "wbeam": 1e-15, "pbeam": 1e-20}
MISSING_PRONUNCIATIONS = {"unmute": "AH N M Y UW T"}  # not in PocketSphinx's cmudict


def an4_grammar(train_texts: list[str]) -> Grammar:
    """Words only ever seen first (the control words, and months) + one or more items; from train transcripts only."""
    first, later = set(), set()
    for t in train_texts:
        words = t.split()
        if words:
            first.add(words[0])
            later.update(words[1:])
    covered = _builtin_words()
    starters = sorted(first - later)
    other = sorted((first | later) - set(starters) - covered)
    lines = ["# AN4: derived from an4/train.tsv transcripts by bench/commands.py",
             "{first} = " + " | ".join(w.lower() for w in starters),
             "{word} = " + " | ".join(w.lower() for w in other),
             "{first}",
             "({first})? ({letter} | {number} | {word})+"]
    return Grammar.parse_text("\n".join(lines) + "\n", "an4-train-grammar")


def _builtin_words() -> set[str]:
    g = Grammar.parse_text("{letter} | {number}\n")
    return g.vocabulary()


# --- systems -----------------------------------------------------------------------------------

class Sphinx:
    """PocketSphinx decoding with one JSGF grammar."""

    def __init__(self, grammar: Grammar, **options):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL", **options)
        for w in sorted(grammar.vocabulary()):
            if self.decoder.lookup_word(w.lower()) is None:
                self.decoder.add_word(w.lower(), MISSING_PRONUNCIATIONS[w.lower()], update=True)
        self.decoder.add_jsgf_string("commands", grammar.to_jsgf())
        self.decoder.activate_search("commands")

    def __call__(self, wave: np.ndarray) -> str:
        pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr.upper() if hyp is not None else ""


def ours(recognizer, waves, grammar, options=None):
    start = time.perf_counter()
    found = match_all(recognizer, waves, grammar, options)
    return found, time.perf_counter() - start


def sphinx(grammar, waves, **options):
    s = Sphinx(grammar, **options)
    start = time.perf_counter()
    out = [s(w) for w in waves]
    return out, time.perf_counter() - start


def wer(refs: list[str], hyps: list[str]) -> float:
    import jiwer

    m = jiwer.process_words(refs, [h if h.strip() else "" for h in hyps])
    return (m.substitutions + m.deletions + m.insertions) / sum(len(r.split()) for r in refs)


def accepted(m, threshold: float) -> bool:
    return m is not None and m.llr >= threshold


# --- synthetic desktop commands ----------------------------------------------------------------

def tts_phrases(grammar: Grammar, n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    phrases = grammar.expand()
    by_command: dict[int, list] = {}
    for p in phrases:
        by_command.setdefault(p.command, []).append(p)
    out = []
    while len(out) < n:
        for ps in by_command.values():
            out.append(" ".join(rng.choice(ps).words))
    return out[:n]


def synthesize(phrases: list[str], folder: Path) -> list[tuple[str, str, np.ndarray]]:
    """(voice, phrase, 16 kHz waveform) for every phrase x voice, at each voice's own rate and pitch."""
    voices = [Voice("espeak-ng", v, "espeak-ng") for v in ESPEAK_VOICES] + [Voice("flite", v, "flite") for v in FLITE_VOICES]
    out = []
    for k, text in enumerate(phrases):
        for i, voice in enumerate(voices):
            wav = folder / f"{k}-{i}.wav"
            speak(voice, text.lower(), wav)
            out.append((voice.label, text, load_audio(str(wav))))
    return out


# --- the benchmark -----------------------------------------------------------------------------

def run(args) -> dict:
    data = args.data_dir
    recognizer = Recognizer.from_dir(args.model)
    desktop, digits = Grammar.load("desktop"), Grammar.load("digits")
    t = MatchOptions.for_model(recognizer.info, reject_threshold=args.threshold).reject_threshold
    report: dict = {"threshold": t, "threads": torch.get_num_threads(), "sets": {}}

    def log(name, row):
        report["sets"][name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)

    # FSDD digits
    fsdd = read_manifest(data / "fsdd/test.tsv")[:args.limit]
    waves = [load_audio(u.audio) for u in fsdd]
    found, secs = ours(recognizer, waves, digits)
    ps, ps_secs = sphinx(digits, waves)
    log("fsdd-test digits", {
        "n": len(fsdd), "ours_accuracy_no_reject": _share(m.text == u.text for m, u in zip(found, fsdd)),
        "ours_accuracy": _share(accepted(m, t) and m.text == u.text for m, u in zip(found, fsdd)),
        "ours_rejected": _share(not accepted(m, t) for m in found),
        "pocketsphinx_accuracy": _share(h == u.text for h, u in zip(ps, fsdd)),
        "ours_s_per_utt": secs / len(fsdd), "pocketsphinx_s_per_utt": ps_secs / len(fsdd)})

    # AN4 with the train-derived grammar
    an4_train = [u.text for u in read_manifest(data / "an4/train.tsv")]
    g_an4 = an4_grammar(an4_train)
    an4 = read_manifest(data / "an4/test.tsv")[:args.limit]
    waves = [load_audio(u.audio) for u in an4]
    found, secs = ours(recognizer, waves, g_an4)
    k = min(len(an4), args.sphinx_an4)
    ps, ps_secs = sphinx(g_an4, waves[:k], **AN4_SPHINX_BEAMS)
    refs = [u.text for u in an4]
    log("an4-test train-grammar", {
        "n": len(an4), "ours_wer": wer(refs, [m.text if m else "" for m in found]),
        "ours_wer_with_reject": wer(refs, [m.text if accepted(m, t) else "" for m in found]),
        "ours_sentence_accuracy": _share(m is not None and m.text == r for m, r in zip(found, refs)),
        f"ours_wer_first_{k}": wer(refs[:k], [m.text if m else "" for m in found[:k]]),
        f"pocketsphinx_wer_first_{k}": wer(refs[:k], ps),
        "oov_test_words": sorted({w for r in refs for w in r.split()} - g_an4.vocabulary()),
        "ours_s_per_utt": secs / len(an4), "pocketsphinx_s_per_utt": ps_secs / k})

    # in-grammar real speech for the desktop grammar: AN4 test commands
    cmds = [u for u in read_manifest(data / "an4/test.tsv") if desktop.parse(u.text.split())]
    waves = [load_audio(u.audio) for u in cmds]
    found, _ = ours(recognizer, waves, desktop)
    ps, _ = sphinx(desktop, waves)
    log("an4-test desktop commands (in grammar)", {
        "n": len(cmds), "ours_accuracy": _share(accepted(m, t) and m.text == u.text for m, u in zip(found, cmds)),
        "ours_rejected": _share(not accepted(m, t) for m in found),
        "pocketsphinx_accuracy": _share(h == u.text for h, u in zip(ps, cmds))})

    # LibriSpeech dev: open speech, out of grammar
    libri = read_manifest(data / "librispeech/dev.tsv")[:args.limit]
    waves = [load_audio(u.audio) for u in libri]
    found, secs = ours(recognizer, waves, desktop)
    ps, _ = sphinx(desktop, waves)
    log("librispeech-dev vs desktop (out of grammar)", {
        "n": len(libri), "ours_false_accepts": _share(accepted(m, t) for m in found),
        "ours_llr_max": max(m.llr for m in found if m is not None),
        "pocketsphinx_false_accepts": _share(bool(h) for h in ps)})

    # synthetic desktop commands
    with tempfile.TemporaryDirectory(prefix="st-tts-") as tmp:
        clips = synthesize(tts_phrases(desktop, args.tts_phrases), Path(tmp))
    waves = [c[2] for c in clips]
    found, secs = ours(recognizer, waves, desktop)
    ps, _ = sphinx(desktop, waves)
    per_voice: dict[str, list[bool]] = {}
    for (voice, text, _), m in zip(clips, found):
        per_voice.setdefault(voice, []).append(accepted(m, t) and m.text == text)
    log("synthetic desktop commands (espeak-ng + flite)", {
        "n": len(clips), "voices": len(per_voice),
        "ours_accuracy": _share(accepted(m, t) and m.text == c[1] for m, c in zip(found, clips)),
        "ours_accuracy_no_reject": _share(m is not None and m.text == c[1] for m, c in zip(found, clips)),
        "ours_rejected": _share(not accepted(m, t) for m in found),
        "pocketsphinx_accuracy": _share(h == c[1] for h, c in zip(ps, clips)),
        "ours_accuracy_per_voice": {v: _share(x) for v, x in per_voice.items()}})

    # latency of one 2 s command
    long_enough = sorted((c for c in clips if len(c[2]) >= SAMPLE_RATE), key=lambda c: len(c[2]))
    wave = long_enough[-1][2] if long_enough else clips[0][2]
    wave = np.pad(wave, (0, max(0, 2 * SAMPLE_RATE - len(wave))))[:2 * SAMPLE_RATE]
    times, ps_times = [], []
    s = Sphinx(desktop)
    for k in range(args.latency_runs + 2):
        start = time.perf_counter()
        match_all(recognizer, [wave], desktop)
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        s(wave)
        ps_times.append(time.perf_counter() - start)
    log("latency 2 s command (desktop)", {
        "ours_median_ms": 1000 * statistics.median(times[2:]), "ours_max_ms": 1000 * max(times[2:]),
        "pocketsphinx_median_ms": 1000 * statistics.median(ps_times[2:])})
    return report


def tune(args) -> dict:
    """The threshold with the fewest errors on training data: in-grammar FSDD and AN4 train utterances
    rejected plus LibriSpeech train sentences (out of grammar, against both grammars) accepted, equal weight,
    in the middle of the best interval."""
    data = args.data_dir
    recognizer = Recognizer.from_dir(args.model)
    desktop, digits = Grammar.load("desktop"), Grammar.load("digits")
    rng = random.Random(0)
    fsdd = rng.sample(read_manifest(data / "fsdd/train.tsv"), 500)
    an4 = [u for u in read_manifest(data / "an4/train.tsv") if desktop.parse(u.text.split())]
    libri = rng.sample(read_manifest(data / "librispeech/train.tsv"), args.tune_libri)
    inside = ([m for m in match_all(recognizer, [load_audio(u.audio) for u in fsdd], digits)]
              + match_all(recognizer, [load_audio(u.audio) for u in an4], desktop))
    lw = [load_audio(u.audio) for u in libri]
    outside = match_all(recognizer, lw, desktop) + match_all(recognizer, lw, digits)
    out_llr = sorted(m.llr for m in outside if m is not None)
    in_llr = np.array([m.llr for m in inside])
    # fewest errors (in-grammar rejects + false accepts, equal weight), in the middle of the best interval
    edges = np.unique(np.concatenate([in_llr, out_llr]))
    cuts = np.concatenate([[edges[0] - 1], (edges[1:] + edges[:-1]) / 2, [edges[-1] + 1]])
    errors = [(in_llr < c).sum() + (np.array(out_llr) >= c).sum() for c in cuts]
    best = np.flatnonzero(np.array(errors) == min(errors))
    run_end = best[0]
    while run_end + 1 in best:
        run_end += 1
    threshold = (edges[best[0] - 1 if best[0] > 0 else 0] + edges[min(run_end, len(edges) - 1)]) / 2
    row = {"threshold": round(float(threshold), 2), "n_inside": len(inside), "n_outside": len(out_llr),
           "inside_rejected": float((in_llr < threshold).mean()),
           "outside_accepted": float(np.mean(np.array(out_llr) >= threshold)),
           "outside_llr_max": out_llr[-1], "inside_llr_percentiles_1_5_50": np.percentile(in_llr, [1, 5, 50]).tolist()}
    print(json.dumps(row), flush=True)
    return row


def _share(xs) -> float:
    xs = list(xs)
    return round(sum(bool(x) for x in xs) / max(1, len(xs)), 4)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--threshold", type=float, default=None,
                   help=f"rejection threshold (default: the model's config.json, else {DEFAULT_REJECT_THRESHOLD})")
    p.add_argument("--limit", type=int, default=None, help="first N utterances of each set (smoke runs)")
    p.add_argument("--sphinx-an4", type=int, default=40,
                   help="PocketSphinx decodes only the first N AN4 utterances (its loop-grammar search takes ~15 s each)")
    p.add_argument("--tts-phrases", type=int, default=30)
    p.add_argument("--latency-runs", type=int, default=20)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    p.add_argument("--tune", action="store_true", help="tune the rejection threshold on training data")
    p.add_argument("--tune-libri", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = tune(args) if args.tune else run(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
