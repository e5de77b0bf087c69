"""Evaluation reports: the terminal table, Markdown and a well-formed, escaped HTML page."""

import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from speech_transformer.apps import evaluate
from speech_transformer.apps.reports import format_summary, render_markdown
from speech_transformer.apps.systems import System
from speech_transformer.training.data import default_data_dir, read_manifest

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "librispeech" / "samples" / "samples.tsv").exists(),
                                reason=f"speech data not found at {DATA} (set SPEECH_TRANSFORMER_DATA)")


class TagChecker(HTMLParser):
    VOID = {"meta", "br", "hr", "img", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.problems, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.problems.append(tag)


def test_html_report_is_well_formed_and_escaped(tmp_path):
    audio = DATA / "librispeech" / "samples" / "1089-134686-0001.flac"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(audio), "text": 'Stuff <i>it</i> & "him"'}) + "\n")
    spec = "cmd:lt&gt=sh -c 'echo \"Stuff <b>it</b> & him\"' {audio}"
    out = tmp_path / "r.json"
    assert evaluate.main(["--data", str(manifest), "--raw", "--system", spec, "--output", str(out),
                          "--no-progress"]) == 0
    page = out.with_suffix(".html").read_text()
    root = ET.fromstring(page.split("\n", 1)[1])  # after the doctype: the page is well-formed XML
    assert root.tag == "html"
    checker = TagChecker()
    checker.feed(page)
    checker.close()
    assert checker.problems == [] and checker.stack == []
    assert "i" not in checker.tags and "b" not in checker.tags  # transcript text never becomes markup
    text = "".join(root.itertext())
    assert "<i>it</i>" in text and "<b>it</b>" in text and "lt&gt" in text
    assert {s.get("class") for s in root.iter("span")} >= {"S", "D"}


class Echo(System):
    """Says a fixed text for every utterance."""

    def __init__(self, name: str, text: str):
        self.name, self.text = name, text

    def transcribe(self, waveforms):
        return [self.text] * len(waveforms)


def test_summary_and_markdown_put_systems_side_by_side(tmp_path):
    audio = DATA / "librispeech" / "samples" / "1089-134686-0001.flac"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(audio), "text": "stuff it into you", "speaker": "1089"}) + "\n"
                        + json.dumps({"audio": "missing.flac", "text": "gone", "speaker": "1089"}) + "\n")
    report = evaluate.evaluate(read_manifest(manifest), [Echo("right", "stuff it into you"), Echo("a|b", "stuff it")],
                               progress=False)
    table = format_summary(report).splitlines()
    assert table[0].split()[:3] == ["System", "WER", "%"] and set(table[1]) == {"-", " "}
    assert table[2].split()[:2] == ["right", "0.00"] and table[3].split()[:2] == ["a|b", "50.00"]
    assert any("1 utterance(s) failed" in line and "file not found" in line for line in table)
    md = render_markdown(report)
    assert "| a\\|b | 50.00 |" in md  # a | in a name is escaped, not a new column
    assert "| 1089 | 0.00 | 50.00 |" in md and "- deletions: into (1), you (1)" in md
