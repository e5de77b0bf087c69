"""`speech-transformer evaluate`: score one or more systems on a manifest, side by side.

Runs every system over the same utterances in batches (with a progress bar), caches each
transcript as it arrives so that an interrupted run continues where it stopped, scores with
`speech_transformer.text.scoring`, and writes JSON, Markdown and HTML reports.

Exit status: 0 when every utterance was transcribed by every system, 2 when some failed (missing
or unreadable audio, a system error: reported as error rows and left out of WER), 1 on usage or
setup errors (bad arguments, unreadable manifest, no model).
"""

from __future__ import annotations

import argparse
import hashlib
import html
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
from speech_transformer.training.data import Utterance, read_manifest
from speech_transformer.files import atomic_write
from speech_transformer.runtime import reset_peak_rss, rss_mb
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


# ----------------------------------------------------------------------------- text reports

_COLUMNS = ["System", "WER %", "CER %", "SER %", "Sub", "Del", "Ins", "Words", "Utts", "Failed", "RTF", "CPU RTF",
            "Peak MB"]


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _row(b: dict[str, Any]) -> list[str]:
    rtf = "-" if b["rtf"] is None else f"{b['rtf']:.3f}"
    rtf_cpu = "-" if b.get("rtf_cpu") is None else f"{b['rtf_cpu']:.3f}"
    return [b["name"], _pct(b["wer"]), _pct(b["cer"]), _pct(b["ser"]), str(b["substitutions"]), str(b["deletions"]),
            str(b["insertions"]), str(b["n_words"]), str(b["n_utts"]), str(b["n_errors"]), rtf, rtf_cpu,
            "-" if b["peak_rss_mb"] is None else f"{b['peak_rss_mb']:.0f}"]


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text table of the systems side by side, for the terminal."""
    rows = [_COLUMNS] + [_row(b) for b in report["systems"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"data: {report['data']}  utterances: {report['n_utterances']}  "
                 f"normaliser: {report['normalizer']['name']}")
    for b in report["systems"]:
        if b["n_errors"]:
            lines.append(f"{b['name']}: {b['n_errors']} utterance(s) failed and were excluded from WER, e.g. "
                         f"{b['errors'][0]['id']}: {b['errors'][0]['reason']}")
    return "\n".join(lines)


def render_markdown(report: dict[str, Any]) -> str:
    """A RESULTS.md-style section: the systems side by side, then per-speaker WER and frequent errors."""
    md = [f"## Evaluation on `{report['data']}`", "",
          f"{report['n_utterances']} utterances; normaliser `{report['normalizer']['name']}` "
          f"({report['normalizer']['description']}); RTF = {report['rtf_definition']}; {report['created']}.", "",
          "| " + " | ".join(_COLUMNS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(_COLUMNS) - 1)) + "|"]
    md += ["| " + " | ".join(_md_cell(c) for c in _row(b)) + " |" for b in report["systems"]]
    speakers = sorted({s for b in report["systems"] for s in b["per_speaker"]})
    if speakers:
        names = " | ".join(_md_cell(b["name"]) for b in report["systems"])
        md += ["", "### WER % per speaker", "", f"| Speaker | {names} |", "|---|" + "---:|" * len(report["systems"])]
        for s in speakers:
            cells = [_pct(b["per_speaker"][s]["wer"]) if s in b["per_speaker"] else "-" for b in report["systems"]]
            md.append(f"| {_md_cell(s)} | " + " | ".join(cells) + " |")
    for b in report["systems"]:
        subs = ", ".join(f"{x['ref']}→{x['hyp']} ({x['count']})" for x in b["top_substitutions"][:10]) or "none"
        dels = ", ".join(f"{x['word']} ({x['count']})" for x in b["top_deletions"][:10]) or "none"
        ins = ", ".join(f"{x['word']} ({x['count']})" for x in b["top_insertions"][:10]) or "none"
        md += ["", f"### {_md_cell(b['name'])}", "", f"- substitutions: {_md_cell(subs)}",
               f"- deletions: {_md_cell(dels)}", f"- insertions: {_md_cell(ins)}"]
        if b["n_errors"]:
            md.append(f"- failed, excluded from WER: {b['n_errors']} utterance(s)")
            md += [f"  - `{e['id']}`: {_md_cell(e['reason'])}" for e in b["errors"][:20]]
    return "\n".join(md) + "\n"


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


# ----------------------------------------------------------------------------- HTML report

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em}td.n{text-align:right}
.utt{margin:1em 0;padding:.5em;border-left:4px solid #ddd}.utt.err{border-color:#e55}
.id,.sys{font-weight:bold}.ref{color:#333}.sys{margin-right:.5em}
.S{background:#fff3b0}.D{background:#ffc9c9;text-decoration:line-through}.I{background:#c3f0c3}
.S del{color:#a00}.S ins{color:#070;text-decoration:none}.error{color:#b00}"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _alignment_html(alignment: list[list[str]]) -> str:
    parts = []
    for op, r, h in alignment:
        if op == "=":
            parts.append(_esc(r))
        elif op == "S":
            parts.append(f'<span class="S" title="substitution"><del>{_esc(r)}</del> <ins>{_esc(h)}</ins></span>')
        elif op == "D":
            parts.append(f'<span class="D" title="deletion">{_esc(r)}</span>')
        else:
            parts.append(f'<span class="I" title="insertion">{_esc(h)}</span>')
    return " ".join(parts)


def render_html(report: dict[str, Any]) -> str:
    """A self-contained page: the summary table, then every utterance with each system's coloured alignment."""
    systems = report["systems"]
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8"/>',
           f"<title>Evaluation: {_esc(report['data'])}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           f"<h1>Evaluation on {_esc(report['data'])}</h1>",
           f"<p>{report['n_utterances']} utterances; normaliser <code>{_esc(report['normalizer']['name'])}</code> "
           f"({_esc(report['normalizer']['description'])}). RTF = {_esc(report['rtf_definition'])}. "
           f"{_esc(report['created'])}</p>",
           "<table>", "<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in _COLUMNS) + "</tr>"]
    for b in systems:
        cells = _row(b)
        out.append("<tr>" + f"<td>{_esc(cells[0])}</td>" + "".join(f'<td class="n">{_esc(c)}</td>' for c in cells[1:])
                   + "</tr>")
    out += ["</table>", "<p>Legend: <span class=\"S\"><del>ref</del> <ins>hyp</ins></span> substitution, "
            "<span class=\"D\">ref</span> deletion, <span class=\"I\">hyp</span> insertion.</p>", "<h2>Utterances</h2>"]
    rows = [{r["id"]: r for r in b["utterances"]} for b in systems]
    errors = [{e["id"]: e for e in b["errors"]} for b in systems]
    order = list(dict.fromkeys([r["id"] for b in systems for r in b["utterances"]]
                               + [e["id"] for b in systems for e in b["errors"]]))
    for uid in order:
        failed = any(uid in e for e in errors)
        ref = next((r[uid]["ref_norm"] for r in rows if uid in r), None)
        out.append(f'<div class="utt{" err" if failed else ""}" id="{_esc(uid)}"><div class="id">{_esc(uid)}</div>')
        if ref is not None:
            out.append(f'<div class="ref"><span class="sys">REF</span>{_esc(ref)}</div>')
        for b, r, e in zip(systems, rows, errors):
            if uid in r:
                out.append(f'<div><span class="sys">{_esc(b["name"])}</span>{_esc(_pct(r[uid]["wer"]))}%: '
                           f'{_alignment_html(r[uid]["alignment"])}</div>')
            elif uid in e:
                out.append(f'<div class="error"><span class="sys">{_esc(b["name"])}</span>error: '
                           f'{_esc(e[uid]["reason"])}</div>')
        out.append("</div>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def write_reports(report: dict[str, Any], json_path: Path | None = None, markdown_path: Path | None = None,
                  html_path: Path | None = None) -> None:
    for path, text in ((json_path, lambda: json.dumps(report, indent=1, ensure_ascii=False) + "\n"),
                       (markdown_path, lambda: render_markdown(report)), (html_path, lambda: render_html(report))):
        if path is not None:
            atomic_write(path, text())


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
