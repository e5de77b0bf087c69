"""`speech-transformer evaluate`: score one or more systems on a manifest, side by side.

Runs every system over the same utterances in batches (with a progress bar), caches each
transcript as it arrives so that an interrupted run continues where it stopped, scores with
`speech_transformer.text.scoring`, and writes JSON, Markdown and HTML reports (`apps.reports`).

Exit status: 0 when every utterance was transcribed by every system, 1 when some failed (missing
or unreadable audio, a system error: reported as error rows and left out of WER), 2 on usage or
setup errors (bad arguments, unreadable manifest, no model).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import resource
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from speech_transformer.apps import exitcodes
from speech_transformer.audio.loading import SAMPLE_RATE, info, load_audio, reason
from speech_transformer.audio.manifests import Utterance, read_manifest
from speech_transformer.apps.reports import format_summary, write_reports
from speech_transformer.utils.runtime import reset_peak_rss, rss_mb
from speech_transformer.text.scoring import (
    DEFAULT_NORMALIZER,
    NORMALIZER_DESCRIPTIONS,
    NORMALIZERS,
    score_utterances,
)
from speech_transformer.apps.systems import (
    SpeechTransformerSystem,
    System,
    TranscriptionError,
    default_model_system,
    parse_system,
)

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = exitcodes.OK, exitcodes.INPUTS_FAILED, exitcodes.USAGE_ERROR
DEFAULT_CACHE_DIR = ".evaluate_cache"


@dataclass
class UtteranceResult:
    """What one system made of one utterance: a transcript or an error."""

    id: str
    audio: str
    hyp: str | None
    error: str | None
    audio_seconds: float
    seconds: float
    cpu_seconds: float = 0.0
    cached: bool = False


@dataclass
class SystemRun:
    system: System
    results: list[UtteranceResult]
    load_seconds: float
    run_seconds: float
    peak_rss_mb: float | None
    peak_rss_scope: str


class ResultCache:
    """Transcripts of one (system, manifest) pair, one JSON object a line, appended as they come."""

    def __init__(self, path: Path | None):
        self.path = path

    @classmethod
    def for_run(cls, cache_dir: Path | None, system: System, manifest_key: str) -> "ResultCache":
        if cache_dir is None:
            return cls(None)
        key = json.dumps({"manifest": manifest_key, "system": system.config()}, sort_keys=True, default=str)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", system.name)[:60]
        return cls(cache_dir / f"{slug}-{digest}.jsonl")

    def load(self) -> dict[tuple[str, str], UtteranceResult]:
        out: dict[tuple[str, str], UtteranceResult] = {}
        if self.path is None or not self.path.exists():
            return out
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = UtteranceResult(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by an interrupted run
                if r.error is None:
                    r.cached = True
                    out[(r.id, r.audio)] = r
        return out

    def append(self, results: Sequence[UtteranceResult]) -> None:
        if self.path is None or not results:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for r in results:
                d = asdict(r)
                d.pop("cached")
                f.write(json.dumps(d, ensure_ascii=False) + "\n")


def _call_system(system: System, inputs: list) -> list[str | Exception]:
    """Transcripts for a batch; when the batch fails, each input is retried alone to isolate the failure."""
    fn = system.transcribe_paths if system.reads_files else system.transcribe
    try:
        hyps = fn(inputs)
        if len(hyps) != len(inputs):
            raise RuntimeError(f"system returned {len(hyps)} transcripts for {len(inputs)} inputs")
        return [str(h) for h in hyps]
    except Exception as e:
        if len(inputs) == 1:
            return [e]
    return [_call_system(system, [x])[0] for x in inputs]


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, TranscriptionError) else reason(e)  # a TranscriptionError is a reason already


def _cpu_seconds(children: bool) -> float:
    if children:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime
    return time.process_time()


def transcribe_batch(system: System, batch: Sequence[Utterance]) -> list[UtteranceResult]:
    """Decode the audio (or check the files) and transcribe one batch; failures become error rows.

    The batch's wall and CPU time (CPU of this process, or of the child processes of a command
    system) are shared among its transcribed utterances in proportion to their audio length.
    """
    start, cpu_start = time.perf_counter(), _cpu_seconds(system.reads_files)
    results: list[UtteranceResult] = []
    pending: list[UtteranceResult] = []
    inputs: list = []
    for u in batch:
        try:
            if system.reads_files:
                seconds, x = info(u.audio).duration, u.audio
            else:
                x = load_audio(u.audio)
                seconds = len(x) / SAMPLE_RATE
        except Exception as e:
            results.append(UtteranceResult(u.id, u.audio, None, _reason(e), 0.0, 0.0))
            continue
        results.append(UtteranceResult(u.id, u.audio, None, None, seconds, 0.0))
        pending.append(results[-1])
        inputs.append(x)
    outputs = _call_system(system, inputs) if inputs else []
    elapsed = time.perf_counter() - start
    cpu = _cpu_seconds(system.reads_files) - cpu_start
    audio_total = sum(r.audio_seconds for r in pending) or 1.0
    for r, out in zip(pending, outputs):
        if isinstance(out, Exception):
            r.error, r.audio_seconds = _reason(out), 0.0
        else:
            r.hyp = out
            r.seconds = elapsed * r.audio_seconds / audio_total
            r.cpu_seconds = cpu * r.audio_seconds / audio_total
    return results


def run_system(system: System, utterances: Sequence[Utterance], batch_size: int = 8,
               cache: ResultCache | None = None, progress: bool = True) -> SystemRun:
    """Transcribe every utterance not already in the cache, in batches."""
    from tqdm import tqdm

    cache = cache or ResultCache(None)
    run_start = time.perf_counter()
    own_peak = reset_peak_rss()
    cached = cache.load()
    done = {(u.id, u.audio): cached[(u.id, u.audio)] for u in utterances if (u.id, u.audio) in cached}
    todo = list({(u.id, u.audio): u for u in utterances if (u.id, u.audio) not in done}.values())
    load_seconds = 0.0
    if todo:
        t = time.perf_counter()
        system.load()
        load_seconds = time.perf_counter() - t
    with tqdm(total=len(done) + len(todo), initial=len(done), desc=system.name, unit="utt", file=sys.stderr,
              disable=not progress, dynamic_ncols=True) as bar:
        for i in range(0, len(todo), max(batch_size, 1)):
            batch = todo[i:i + max(batch_size, 1)]
            results = transcribe_batch(system, batch)
            cache.append([r for r in results if r.error is None])
            done.update(((r.id, r.audio), r) for r in results)
            bar.update(len(batch))
    if system.reads_files:
        peak, scope = None, "not measured (external command)"
    else:
        peak, scope = rss_mb(peak=True), "this process during this system's run" if own_peak else "this process"
    return SystemRun(system, [done[(u.id, u.audio)] for u in utterances], load_seconds, time.perf_counter() - run_start,
                     peak, scope)


def system_report(run: SystemRun, utterances: Sequence[Utterance], normalizer: str, top: int = 20) -> dict[str, Any]:
    """The JSON block of one system: scores, throughput, memory, per-utterance rows and error rows."""
    pairs = [(u, r) for u, r in zip(utterances, run.results) if r.error is None]
    score = score_utterances([u.text for u, _ in pairs], [r.hyp for _, r in pairs], normalizer,
                             speakers=[u.speaker for u, _ in pairs], top=top)
    audio_seconds = sum(r.audio_seconds for _, r in pairs)
    seconds = sum(r.seconds for _, r in pairs)
    cpu_seconds = sum(r.cpu_seconds for _, r in pairs)
    rows = []
    for (u, r), s in zip(pairs, score.utterances):
        rows.append({"id": u.id, "speaker": u.speaker, "audio": u.audio, "duration": r.audio_seconds,
                     "ref": u.text, "hyp": r.hyp, "ref_norm": s.ref, "hyp_norm": s.hyp, "wer": s.wer,
                     "n_words": s.n_words, "substitutions": s.substitutions, "deletions": s.deletions,
                     "insertions": s.insertions, "alignment": [list(a) for a in s.alignment], "cached": r.cached})
    errors = [{"id": u.id, "audio": u.audio, "reason": r.error} for u, r in zip(utterances, run.results) if r.error]
    return {
        "name": run.system.name, "config": run.system.config(), "normalizer": normalizer,
        "wer": score.wer, "cer": score.cer, "ser": score.ser,
        "substitutions": score.substitutions, "deletions": score.deletions, "insertions": score.insertions,
        "hits": score.hits, "n_words": score.n_words, "n_chars": score.n_chars, "char_errors": score.char_errors,
        "n_utts": score.n_utts, "n_errors": len(errors), "excluded_from_wer": len(errors),
        "rtf": seconds / audio_seconds if audio_seconds else None,
        "rtf_cpu": cpu_seconds / audio_seconds if audio_seconds else None,
        "audio_seconds": audio_seconds, "wall_seconds": seconds, "cpu_seconds": cpu_seconds,
        "load_seconds": run.load_seconds,
        "run_seconds": run.run_seconds, "from_cache": sum(r.cached for _, r in pairs),
        "peak_rss_mb": run.peak_rss_mb, "peak_rss_scope": run.peak_rss_scope,
        "per_speaker": score.per_speaker,
        "top_substitutions": [{"ref": r, "hyp": h, "count": n} for r, h, n in score.top_substitutions],
        "top_insertions": [{"word": w, "count": n} for w, n in score.top_insertions],
        "top_deletions": [{"word": w, "count": n} for w, n in score.top_deletions],
        "utterances": rows, "errors": errors,
    }


def evaluate(utterances: Sequence[Utterance], systems: Sequence[System], normalizer: str = DEFAULT_NORMALIZER,
             batch_size: int = 8, cache_dir: Path | None = None, manifest_key: str = "", data: str = "",
             progress: bool = True, top: int = 20) -> dict[str, Any]:
    """Run and score every system on the same utterances; returns the JSON report."""
    if normalizer not in NORMALIZERS:
        raise ValueError(f"unknown normaliser {normalizer!r}")
    blocks = []
    for system in systems:
        cache = ResultCache.for_run(cache_dir, system, manifest_key)
        run = run_system(system, utterances, batch_size, cache, progress)
        blocks.append(system_report(run, utterances, normalizer, top))
    first = blocks[0] if blocks else {}
    return {
        "wer": first.get("wer"), "cer": first.get("cer"), "rtf": first.get("rtf"),
        "complete": all(b["n_errors"] == 0 for b in blocks),
        "data": data, "n_utterances": len(utterances),
        "normalizer": {"name": normalizer, "description": NORMALIZER_DESCRIPTIONS[normalizer]},
        "rtf_definition": "processing seconds (audio decoding + recognition, model loading excluded) / audio seconds; "
                          "rtf: wall-clock seconds, rtf_cpu: CPU seconds",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "systems": blocks,
    }


# ----------------------------------------------------------------------------- CLI

class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="speech-transformer evaluate",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Score speech recognisers (WER, CER, RTF, memory) on a manifest, several side by side.",
        epilog="""system specs (--system, repeatable; the first one gives the report's top-level wer/cer/rtf):
  pocketsphinx                    PocketSphinx 5.1.1 with its shipped en-us model (the baseline)
  cmd:NAME=COMMAND                a shell command printing a transcript; {audio} is replaced by the
                                  audio path, e.g. "cmd:mine=python my_asr.py {audio}"
  model:DIR[,beam=N,ctc=W,method=M,lm=W,device=D,name=S]
                                  our model from DIR (or whisper:NAME|PATH); options change single fields
                                  of the model's preferred decoding; method=lexicon also takes ws=WORD_SCORE,
                                  rescore=W, nbest=N, word_lm=generic|ARPA, words=FILE
  default[,OPTIONS]               the embedded default model, its preferred decoding (used when no
                                  --model/--system is given)
  faster-whisper:DIR|NAME[,beam=N,compute=int8|float32,threads=N,name=S]
                                  faster-whisper (CTranslate2) itself, as a peer; NAME: an installed folder

outputs: --output report.json also writes report.md and report.html beside it (override with
--markdown/--html). Transcripts are cached per (system, manifest) in --cache-dir, so a rerun
continues an interrupted run. RTF = processing seconds / audio seconds.
exit status: 0 complete, 1 some utterances failed (error rows, excluded from WER), 2 usage error.""")
    p.add_argument("--data", required=True, help="manifest: .tsv (audio, duration_s, text), .jsonl, or a "
                                                 "LibriSpeech-layout folder")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="our model folder (= --system model:DIR)")
    p.add_argument("--system", action="append", default=[], metavar="SPEC", help="a system to score (see below)")
    p.add_argument("--output", type=Path, metavar="JSON", help="write the JSON report here (plus .md and .html)")
    p.add_argument("--markdown", type=Path, metavar="PATH", help="Markdown report path")
    p.add_argument("--html", type=Path, metavar="PATH", help="HTML report path")
    p.add_argument("--normalizer", "--normaliser", choices=sorted(NORMALIZERS), default=DEFAULT_NORMALIZER,
                   help=f"text normaliser applied to reference and hypothesis (default {DEFAULT_NORMALIZER})")
    p.add_argument("--raw", action="store_const", const="raw", dest="normalizer",
                   help="score raw text (= --normalizer raw): whitespace splitting only")
    p.add_argument("--batch-size", type=int, default=8, help="utterances per system call (default 8)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N utterances of the manifest")
    p.add_argument("--cache-dir", type=Path, help=f"transcript cache (default: {DEFAULT_CACHE_DIR}/ beside "
                                                  f"--output, else in the current folder)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the transcript cache")
    p.add_argument("--top", type=int, default=20, help="how many frequent errors to list (default 20)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _systems(args: argparse.Namespace) -> list[System]:
    systems: list[System] = [SpeechTransformerSystem(d) for d in args.model]
    systems += [parse_system(s) for s in args.system]
    if not systems:
        systems = [default_model_system()]
    names = [s.name for s in systems]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two systems are named {dupes[0]!r}; give them distinct names")
    return systems


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.batch_size < 1:
            raise UsageError("--batch-size must be at least 1")
        systems = _systems(args)
        utterances = read_manifest(args.data)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.limit is not None:
        utterances = utterances[:max(args.limit, 0)]
    if not utterances:
        print(f"{parser.prog}: error: {args.data}: no utterances", file=sys.stderr)
        return EXIT_USAGE
    cache_dir = None
    if not args.no_cache:
        cache_dir = args.cache_dir or ((args.output.parent if args.output else Path(".")) / DEFAULT_CACHE_DIR)
    try:
        report = evaluate(utterances, systems, args.normalizer, args.batch_size, cache_dir,
                          manifest_key=str(Path(args.data).resolve()), data=str(args.data),
                          progress=not args.no_progress, top=args.top)
    except (ImportError, FileNotFoundError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    md, page = args.markdown, args.html
    if args.output is not None:
        md = md or args.output.with_suffix(".md")
        page = page or args.output.with_suffix(".html")
    write_reports(report, args.output, md, page)
    print(format_summary(report))
    for label, path in (("json", args.output), ("markdown", md), ("html", page)):
        if path is not None:
            print(f"{label}: {path}")
    return EXIT_OK if report["complete"] else EXIT_INCOMPLETE


if __name__ == "__main__":
    sys.exit(main())
