"""Word-level CTC decoding (speech_transformer.decoding.lexicon) against token-level decoding: WER, CER, RTF.

    python bench/lexicon_decoding.py lm [--out-dir bench/results/lexicon]
        builds the in-domain LM (train transcripts + text corpus), picks the mixture weight with the generic
        LM by perplexity on librispeech dev transcripts, writes the mixed ARPA; reports sizes and times.
    python bench/lexicon_decoding.py tune --manifest librispeech/dev.tsv --limit 60
        grid over lm_weight x word_score (x beam, rescore_weight) on a dev subset, for each LM.
    python bench/lexicon_decoding.py run --manifest librispeech/dev.tsv [--lm-weight .. --word-score ..
        --beam .. --rescore-weight ..]   all systems at the given settings.

Manifests are relative to the data folder ($SPEECH_TRANSFORMER_DATA or ../shared/data). Everything runs
on the threads given by --threads; each utterance set is encoded once per process and every search
reads the same CTC posteriors, so RTF here is search time (plus rescoring) / audio seconds; the encoder's
RTF is reported on its own line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.decoding import arpa, lexicon
from speech_transformer.decoding.sphinx_lm import packaged_arpa
from speech_transformer.decoding.word_lm import build_kneser_ney, interpolate
from speech_transformer.memory import rss_mb
from speech_transformer.training.data import default_data_dir, read_manifest

TRAIN_TEXT = ("librispeech/train.tsv", "an4/train.tsv", "fsdd/train.tsv", "text/ljspeech-sentences.txt")
OUT_DIR = ROOT / "bench" / "results" / "lexicon"


@dataclass
class Encoded:
    refs: list[str]
    speakers: list
    audio_seconds: float
    encode_seconds: float
    batches: list  # (indices, Encoding)


def encode_set(recognizer, manifest: str, limit: int | None, batch_seconds: float = 60.0) -> Encoded:
    utts = read_manifest(default_data_dir() / manifest)[:limit]
    waves = [load_audio(u.audio) for u in utts]
    start = time.perf_counter()
    batches = list(recognizer.batches(waves, batch_seconds))
    seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    return Encoded([u.text for u in utts], [u.speaker for u in utts], seconds, time.perf_counter() - start, batches)


def score(refs: list[str], hyps: list[str]) -> dict:
    from speech_transformer.text.scoring import score_utterances

    s = score_utterances(refs, hyps, "english-v1")
    return {"wer": s.wer, "cer": s.cer}


def run_token_level(recognizer, enc: Encoded, method: str) -> dict:
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.decoding.search import ctc_greedy_search, decode

    hyps = [""] * len(enc.refs)
    start = time.perf_counter()
    for idx, e in enc.batches:
        if method == "ctc":
            out = ctc_greedy_search(e.ctc_log_probs, e.lengths)
        else:
            beam = int(method.split("-")[1]) if "-" in method else 1
            out = decode(recognizer.model, e.memory, e.lengths,
                         DecodingOptions(beam_size=beam, ctc_weight=0.3 if beam > 1 else 0.0),
                         recognizer.tokenizer.special)
        for i, h in zip(idx, out):
            hyps[i] = recognizer.tokenizer.decode(h.tokens)
    seconds = time.perf_counter() - start
    return {**score(enc.refs, hyps), "rtf": seconds / enc.audio_seconds, "hyps": hyps}


def run_lexicon(recognizer, enc: Encoded, decoder: lexicon.LexiconDecoder, config: lexicon.LexiconConfig,
                rescore_weight: float = 0.0) -> dict:
    hyps = [""] * len(enc.refs)
    start = time.perf_counter()
    for idx, e in enc.batches:
        nbest = decoder.decode(e.ctc_log_probs, e.lengths, config)
        if rescore_weight > 0:
            nbest = lexicon.rescore(recognizer.model, e.memory, e.lengths, e.ctc_log_probs, nbest, rescore_weight,
                                    config.lm_weight, config.word_score, recognizer.tokenizer.special)
        for i, h in zip(idx, nbest):
            hyps[i] = h[0].text
    seconds = time.perf_counter() - start
    return {**score(enc.refs, hyps), "rtf": seconds / enc.audio_seconds, "hyps": hyps}


def lm_paths(out_dir: Path) -> dict[str, Path | None]:
    return {"none": None, "generic": packaged_arpa(), "in-domain": out_dir / "in-domain.arpa",
            "mixed": out_dir / "mixed.arpa"}


def cmd_lm(args) -> None:
    out = Path(args.out_dir)
    data = default_data_dir()
    t = time.perf_counter()
    sentences = [s for name in TRAIN_TEXT for s in arpa.read_corpus(data / name)]
    indomain = build_kneser_ney(sentences, 3)
    arpa.write_arpa(indomain, out / "in-domain.arpa")
    print(f"in-domain: {len(sentences)} sentences, n-grams {indomain.counts()}, {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    generic = arpa.read_arpa(packaged_arpa())
    print(f"generic: read ARPA {time.perf_counter() - t:.1f} s, n-grams {generic.counts()}, peak RSS {rss_mb():.0f} MB")
    dev = arpa.read_corpus(data / "librispeech/dev.tsv")
    p_gen = [[10 ** generic.log10_prob(w, ["<s>"] + s[:i]) for i, w in enumerate(s + ["</s>"])] for s in dev]
    p_ind = [[10 ** indomain.log10_prob(w, ["<s>"] + s[:i]) for i, w in enumerate(s + ["</s>"])] for s in dev]
    n = sum(len(s) for s in p_gen)
    best = None
    for lam in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        logp = sum(torch.tensor([lam * a + (1 - lam) * b for a, b in zip(sg, si)]).clamp(min=1e-99).log10().sum()
                   for sg, si in zip(p_gen, p_ind))
        ppl = float(10 ** (-logp / n))
        print(f"generic weight {lam:.1f}: librispeech dev perplexity {ppl:.1f}")
        if 0 < lam < 1 and (best is None or ppl < best[1]):
            best = (lam, ppl)
    t = time.perf_counter()
    mixed = interpolate([generic, indomain], [best[0], 1 - best[0]])
    arpa.write_arpa(mixed, out / "mixed.arpa")
    print(f"mixed (generic weight {best[0]}): n-grams {mixed.counts()}, built+written {time.perf_counter() - t:.1f} s, "
          f"peak RSS {rss_mb():.0f} MB")
    print(f"check: mixed perplexity {arpa.perplexity(mixed, dev):.1f}")


def load(args):
    from speech_transformer.recognition.recognizer import Recognizer

    torch.set_num_threads(args.threads)
    return Recognizer.from_dir(args.model)


def get_decoder(recognizer, name: str, path, n_spellings: int = 1) -> tuple[lexicon.LexiconDecoder, float, float]:
    """The decoder of one LM, its build time and the memory it added; "none": the generic LM's words, no LM."""
    before, t = rss_mb(), time.perf_counter()
    if path is None:
        words = lexicon.arpa_vocab(packaged_arpa())
        d = lexicon.LexiconDecoder(lexicon.build_lexicon(words, recognizer.tokenizer, n_spellings), recognizer.tokenizer)
    else:
        d = lexicon.get_decoder(recognizer.tokenizer, path, n_spellings=n_spellings)
    return d, time.perf_counter() - t, rss_mb() - before


def cmd_tune(args) -> None:
    rec = load(args)
    enc = encode_set(rec, args.manifest, args.limit)
    print(f"{args.manifest}[:{args.limit}]: {len(enc.refs)} utts, {enc.audio_seconds:.0f} s audio", flush=True)
    for method in args.baselines:
        r = run_token_level(rec, enc, method)
        print(f"token: {method:12s} WER {r['wer']:.2%} CER {r['cer']:.2%} RTF {r['rtf']:.3f}", flush=True)
    for name in args.lms:
        d, secs, mb = get_decoder(rec, name, lm_paths(Path(args.out_dir))[name], args.spellings)
        print(f"LM {name}: decoder built in {secs:.1f} s (+{mb:.0f} MB RSS), lexicon {len(d.lexicon)} words", flush=True)
        weights = [0.0] if name == "none" else args.lm_weights
        for lw, ws, beam in itertools.product(weights, args.word_scores, args.beams):
            cfg = lexicon.LexiconConfig(beam_size=beam, lm_weight=lw, word_score=ws, nbest=args.nbest,
                                        beam_size_token=args.beam_token, beam_threshold=args.beam_threshold,
                                        log_add=args.log_add)
            r = run_lexicon(rec, enc, d, cfg)
            line = f"{name:9s} lm_weight {lw:4.2f} word_score {ws:5.2f} beam {beam:3d}: WER {r['wer']:.2%} CER {r['cer']:.2%} RTF {r['rtf']:.3f}"
            for rw in args.rescore_weights:
                rr = run_lexicon(rec, enc, d, cfg, rw)
                line += f" | rescore {rw:.1f}: WER {rr['wer']:.2%}"
            print(line, flush=True)


def cmd_run(args) -> None:
    rec = load(args)
    enc = encode_set(rec, args.manifest, args.limit)
    print(f"{args.manifest}: {len(enc.refs)} utts, {enc.audio_seconds:.0f} s audio; encoder RTF "
          f"{enc.encode_seconds / enc.audio_seconds:.3f}", flush=True)
    rows = []
    for method in ("ctc", "attention", "attention-8"):
        r = run_token_level(rec, enc, method)
        rows.append((f"token: {method}", r))
        print(f"{rows[-1][0]:40s} WER {r['wer']:.2%} CER {r['cer']:.2%} RTF {r['rtf']:.3f}", flush=True)
    paths = lm_paths(Path(args.out_dir))
    for name in args.lms:
        d, secs, mb = get_decoder(rec, name, paths[name], args.spellings)
        print(f"LM {name}: decoder built in {secs:.1f} s (+{mb:.0f} MB RSS), lexicon {len(d.lexicon)} words",
              flush=True)
        cfg = lexicon.LexiconConfig(beam_size=args.beam, lm_weight=args.lm_weight if name != "none" else 0.0,
                                    word_score=args.word_score, nbest=args.nbest, beam_size_token=args.beam_token,
                                    beam_threshold=args.beam_threshold, log_add=args.log_add)
        for rw in sorted({0.0, args.rescore_weight}):
            r = run_lexicon(rec, enc, d, cfg, rw)
            rows.append((f"lexicon+{name}" + (f" rescore {rw}" if rw else ""), r))
            print(f"{rows[-1][0]:40s} WER {r['wer']:.2%} CER {r['cer']:.2%} RTF {r['rtf']:.3f}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"manifest": args.manifest, "settings": vars(args),
                                               "rows": [{"system": n, **r} for n, r in rows]}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("lm", "tune", "run"))
    p.add_argument("--model", default=None)
    p.add_argument("--manifest", default="librispeech/dev.tsv")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out-dir", default=str(OUT_DIR))
    p.add_argument("--lms", nargs="*", default=["generic", "mixed"])
    p.add_argument("--baselines", nargs="*", default=[])
    p.add_argument("--lm-weights", type=float, nargs="*", default=[0.3, 0.6, 1.0, 1.5])
    p.add_argument("--word-scores", type=float, nargs="*", default=[-1.0, 0.0, 1.0, 2.0])
    p.add_argument("--beams", type=int, nargs="*", default=[50])
    p.add_argument("--rescore-weights", type=float, nargs="*", default=[])
    p.add_argument("--lm-weight", type=float, default=1.0)
    p.add_argument("--word-score", type=float, default=0.0)
    p.add_argument("--beam", type=int, default=50)
    p.add_argument("--nbest", type=int, default=10)
    p.add_argument("--spellings", type=int, default=1, help="SentencePiece segmentations per word")
    p.add_argument("--log-add", action="store_true")
    p.add_argument("--beam-token", type=int, default=16, help="tokens tried per frame")
    p.add_argument("--beam-threshold", type=float, default=25.0)
    p.add_argument("--rescore-weight", type=float, default=0.5)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    {"lm": cmd_lm, "tune": cmd_tune, "run": cmd_run}[args.command](args)


if __name__ == "__main__":
    main()
