"""An evaluation report (`evaluate.evaluate`'s JSON) as people read it: a terminal table, a RESULTS.md-style
Markdown section, and a self-contained HTML page with each system's coloured alignment of every utterance."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from speech_transformer.utils.files import atomic_write

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
