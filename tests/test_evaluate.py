"""`speech-transformer evaluate` end to end on real utterances of ../shared/data."""

import json
import shlex
import sys
import types
from pathlib import Path

import pytest

from speech_transformer.apps import evaluate
from speech_transformer.audio.loading import SAMPLE_RATE, info
from speech_transformer.training.data import default_data_dir, read_manifest
from speech_transformer.apps.systems import System

DATA = default_data_dir()
pytestmark = pytest.mark.skipif(not (DATA / "librispeech" / "samples" / "samples.tsv").exists(),
                                reason=f"speech data not found at {DATA} (set SPEECH_TRANSFORMER_DATA)")

FAKE_ASR = """\
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "calls.log"), "a") as f:
    f.write(sys.argv[1] + "\\n")
hyps = json.load(open(os.path.join(here, "hyps.json")))
name = os.path.basename(sys.argv[1])
if name not in hyps:
    sys.exit("no transcript for " + name)
print(hyps[name])
"""


def fake_asr(tmp_path: Path, hyps: dict[str, str]) -> str:
    """A command system printing a fixed transcript per audio file name, logging every call."""
    (tmp_path / "fake_asr.py").write_text(FAKE_ASR)
    (tmp_path / "hyps.json").write_text(json.dumps(hyps))
    return f"cmd:fake={shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'fake_asr.py'))} {{audio}}"


def calls(tmp_path: Path) -> list[str]:
    log = tmp_path / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def write_tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.write_text("audio\tduration_s\ttext\n" + "".join(f"{a}\t0.0\t{t}\n" for a, t in rows))
    return path


@pytest.fixture
def samples():
    return read_manifest(DATA / "librispeech" / "samples" / "samples.tsv")


@pytest.fixture
def edited_hyps(samples):
    """Hypotheses with known errors: 1 deletion, 1 substitution + 1 insertion, 2 exact (case/punct differ)."""
    words0 = samples[0].text.split()
    return {
        Path(samples[0].audio).name: " ".join(words0[:5] + words0[6:]),  # drops "STEW"
        Path(samples[1].audio).name: "Stuff it into you, his bully counseled him, sir.",
        Path(samples[2].audio).name: samples[2].text.lower() + ".",
        Path(samples[3].audio).name: samples[3].text.capitalize() + "!",
    }


def test_report_counts_on_real_utterances(tmp_path, samples, edited_hyps, capsys):
    out = tmp_path / "out" / "report.json"
    rc = evaluate.main(["--data", str(DATA / "librispeech" / "samples" / "samples.tsv"),
                        "--system", fake_asr(tmp_path, edited_hyps), "--output", str(out), "--no-progress"])
    assert rc == 0
    report = json.loads(out.read_text())
    b = report["systems"][0]
    n_words = sum(len(u.text.split()) for u in samples)
    assert (b["substitutions"], b["deletions"], b["insertions"]) == (1, 1, 1)
    assert b["n_words"] == n_words and b["n_utts"] == 4 and b["n_errors"] == 0
    assert report["wer"] == b["wer"] == pytest.approx(3 / n_words)
    assert b["ser"] == pytest.approx(2 / 4)
    assert report["complete"] is True
    assert report["normalizer"]["name"] == b["normalizer"] == "english-v1"
    assert b["top_deletions"] == [{"word": "stew", "count": 1}]
    assert b["top_substitutions"] == [{"ref": "belly", "hyp": "bully", "count": 1}]
    assert b["top_insertions"] == [{"word": "sir", "count": 1}]
    assert b["per_speaker"]["1089"]["n_words"] == n_words
    assert b["audio_seconds"] == pytest.approx(sum(u.duration for u in samples), abs=0.01)
    assert report["rtf"] == b["rtf"] == pytest.approx(b["wall_seconds"] / b["audio_seconds"])
    assert b["rtf"] > 0 and b["peak_rss_mb"] is None  # an external command's memory is not measured
    assert b["cpu_seconds"] > 0 and b["rtf_cpu"] == pytest.approx(b["cpu_seconds"] / b["audio_seconds"])
    row = b["utterances"][1]
    assert row["ref"] == samples[1].text and row["hyp"].startswith("Stuff it into you,")
    assert row["ref_norm"] == "stuff it into you his belly counseled him"  # British spelling mapped
    assert row["alignment"][-4:] == [["S", "belly", "bully"], ["=", "counseled", "counseled"], ["=", "him", "him"],
                                     ["I", "", "sir"]]
    md = out.with_suffix(".md").read_text()
    assert "| fake |" in md and "english-v1" in md
    assert "fake" in capsys.readouterr().out


def test_raw_scoring_counts_case_and_punctuation(tmp_path, samples, edited_hyps):
    out = tmp_path / "raw.json"
    evaluate.main(["--data", str(DATA / "librispeech" / "samples" / "samples.tsv"), "--raw", "--no-progress",
                   "--system", fake_asr(tmp_path, edited_hyps), "--output", str(out)])
    b = json.loads(out.read_text())["systems"][0]
    assert b["normalizer"] == "raw"
    w = [u.text.split() for u in samples]
    # raw: utt 0 keeps its deletion; utt 1 differs in every word plus "sir."; utts 2 and 3 in every word
    errors = 1 + (len(w[1]) + 1) + len(w[2]) + len(w[3])
    assert b["wer"] == pytest.approx(errors / sum(map(len, w)))
    assert b["top_deletions"] == [{"word": "STEW", "count": 1}]


def test_missing_and_unreadable_audio_are_error_rows(tmp_path, capsys):
    fsdd = read_manifest(DATA / "fsdd" / "test.tsv")
    zero, one = fsdd[0], next(u for u in fsdd if u.text == "ONE")
    (tmp_path / "broken.flac").write_text("this is not audio")
    manifest = write_tsv(tmp_path / "m.tsv", [(zero.audio, zero.text), ("missing.flac", "ZERO"),
                                              ("broken.flac", "ONE"), (one.audio, one.text)])
    seen = []

    class SaysZero(System):
        name = "says-zero"

        def transcribe(self, waveforms):
            seen.extend(len(w) for w in waveforms)
            return ["zero"] * len(waveforms)

    utts = read_manifest(manifest)
    report = evaluate.evaluate(utts, [SaysZero()], batch_size=4, progress=False)
    b = report["systems"][0]
    assert report["complete"] is False
    assert b["n_errors"] == b["excluded_from_wer"] == 2
    reasons = {e["id"]: e["reason"] for e in b["errors"]}
    assert sorted(reasons) == ["broken", "missing"]
    assert reasons["missing"] == "file not found"
    assert reasons["broken"] == "not an audio format we can decode (looks like text)"
    assert (b["n_utts"], b["n_words"], b["substitutions"]) == (2, 2, 1)  # "one" -> "zero"
    assert b["wer"] == pytest.approx(0.5)
    # 8 kHz FSDD audio reaches the system resampled to 16 kHz
    assert seen == [info(zero.audio).frames * 2, info(one.audio).frames * 2]
    assert b["peak_rss_mb"] > 0

    # the CLI reports the run as incomplete
    out = tmp_path / "r.json"
    rc = evaluate.main(["--data", str(manifest), "--system", "cmd:cat=echo zero {audio}", "--output", str(out),
                        "--no-progress"])
    assert rc == evaluate.EXIT_INCOMPLETE == 1
    printed = capsys.readouterr().out
    assert "2 utterance(s) failed and were excluded from WER" in printed
    assert "failed, excluded from WER: 2" in out.with_suffix(".md").read_text()
    html = out.with_suffix(".html").read_text()
    assert "file not found" in html


def test_a_failing_utterance_does_not_sink_its_batch(tmp_path):
    fsdd = read_manifest(DATA / "fsdd" / "test.tsv")[:4]
    longest = max(fsdd, key=lambda u: u.duration)

    class Fragile(System):
        name = "fragile"
        calls = 0

        def transcribe(self, waveforms):
            self.calls += 1
            if max(len(w) for w in waveforms) >= round(longest.duration * SAMPLE_RATE):
                raise RuntimeError("out of memory on long input")
            return ["zero"] * len(waveforms)

    system = Fragile()
    b = evaluate.evaluate(fsdd, [system], batch_size=4, progress=False)["systems"][0]
    assert [e["id"] for e in b["errors"]] == [longest.id]
    assert b["errors"][0]["reason"] == "RuntimeError: out of memory on long input"
    assert b["n_utts"] == 3 and b["wer"] == 0.0
    assert system.calls == 1 + 4  # the batch, then each utterance alone


def test_rerun_continues_from_the_cache(tmp_path, samples, edited_hyps):
    spec = fake_asr(tmp_path, edited_hyps)
    manifest = str(DATA / "librispeech" / "samples" / "samples.tsv")
    out = tmp_path / "r.json"
    common = ["--data", manifest, "--system", spec, "--output", str(out), "--no-progress", "--batch-size", "1"]
    assert evaluate.main(common + ["--limit", "2"]) == 0
    assert len(calls(tmp_path)) == 2
    assert evaluate.main(common) == 0  # the interrupted run continues: only the other two are transcribed
    assert sorted(calls(tmp_path)) == sorted(u.audio for u in samples)
    b = json.loads(out.read_text())["systems"][0]
    assert b["from_cache"] == 2 and b["n_utts"] == 4
    assert evaluate.main(common) == 0
    assert len(calls(tmp_path)) == 4
    again = json.loads(out.read_text())["systems"][0]
    assert again["from_cache"] == 4 and again["wer"] == b["wer"]
    assert again["wall_seconds"] == pytest.approx(b["wall_seconds"])  # RTF keeps the original timings
    assert list((tmp_path / ".evaluate_cache").glob("fake-*.jsonl"))
    assert evaluate.main(common + ["--no-cache"]) == 0
    assert len(calls(tmp_path)) == 8


def test_librispeech_folder_manifest(tmp_path, samples):
    chapter = tmp_path / "corpus" / "1089" / "134686"
    chapter.mkdir(parents=True)
    picked = [u for u in samples if u.id.startswith("1089-134686")]
    for u in picked:
        (chapter / Path(u.audio).name).symlink_to(u.audio)
    (chapter / "1089-134686.trans.txt").write_text("".join(f"{u.id} {u.text}\n" for u in picked))
    hyps = {Path(u.audio).name: u.text for u in picked}
    out = tmp_path / "r.json"
    assert evaluate.main(["--data", str(tmp_path / "corpus"), "--system", fake_asr(tmp_path, hyps),
                          "--output", str(out), "--no-progress"]) == 0
    report = json.loads(out.read_text())
    assert report["wer"] == 0.0 and report["n_utterances"] == 2
    assert report["systems"][0]["per_speaker"] == {
        "1089": {"wer": 0.0, "cer": 0.0, "n_utts": 2, "n_words": sum(len(u.text.split()) for u in picked),
                 "errors": 0}}


def test_several_systems_side_by_side(tmp_path, samples, edited_hyps, capsys):
    out = tmp_path / "r.json"
    perfect = {Path(u.audio).name: u.text for u in samples}
    (tmp_path / "b").mkdir()
    rc = evaluate.main(["--data", str(DATA / "librispeech" / "samples" / "samples.tsv"), "--no-progress",
                        "--system", fake_asr(tmp_path, edited_hyps),
                        "--system", fake_asr(tmp_path / "b", perfect).replace("cmd:fake=", "cmd:oracle="),
                        "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert [b["name"] for b in report["systems"]] == ["fake", "oracle"]
    assert report["wer"] == report["systems"][0]["wer"] > 0 and report["systems"][1]["wer"] == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["System", "WER", "%"]
    assert table[2].startswith("fake") and table[3].startswith("oracle")


def test_default_model_missing_is_a_clear_error(monkeypatch, capsys):
    def missing():
        raise FileNotFoundError("no pretrained model ships with this build yet")

    monkeypatch.setitem(sys.modules, "speech_transformer.pretrained",
                        types.SimpleNamespace(default_model_dir=missing))
    rc = evaluate.main(["--data", str(DATA / "librispeech" / "samples" / "samples.tsv"), "--no-cache"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "no pretrained model ships with this build yet" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    ([], "--data"),
    (["--data", "nowhere.tsv", "--system", "pocketsphinx"], "nowhere.tsv"),
    (["--data", "x.tsv", "--system", "bogus"], "unknown system"),
    (["--data", "x.tsv", "--system", "pocketsphinx", "--batch-size", "0"], "batch-size"),
    (["--data", "x.tsv", "--system", "cmd:a=x {audio}", "--system", "cmd:a=y {audio}"], "distinct names"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    assert evaluate.main(argv) == 2
    assert message in capsys.readouterr().err


def test_help_documents_system_specs():
    text = evaluate.build_parser().format_help()
    for needle in ("pocketsphinx", "cmd:NAME=COMMAND", "model:DIR", "--output", "--raw", "--cache-dir"):
        assert needle in text
