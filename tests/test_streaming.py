"""The streaming recogniser on real speech: partials while speaking, finals equal to recognising the same
audio offline, any block size and rate, bounded buffers, commands from a grammar."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.commands.grammar import Grammar
from speech_transformer.recognition.streaming import StreamingRecognizer, StreamOptions, StreamResampler
from speech_transformer.training.data import read_manifest


@pytest.fixture(scope="module")
def recognizer():
    from speech_transformer.recognition.recognizer import Recognizer

    torch.set_num_threads(1)
    # float32: finals are compared with offline recognition of audio that streaming resampled block by block
    # (equal to 1e-4); int8 compute's per-batch input scale can turn such a difference into another word
    return Recognizer.from_dir(None, compute="float32")


@pytest.fixture(scope="module")
def jfk_path(data_dir) -> str:
    return str(data_dir / "samples" / "jfk.flac")


@pytest.fixture(scope="module")
def jfk(jfk_path):
    data, rate = sf.read(jfk_path, dtype="float32")  # 44.1 kHz stereo
    return data, rate


def listen(stream: StreamingRecognizer, audio: np.ndarray, rate: int, block_seconds: float = 0.05) -> list:
    step = max(1, int(rate * block_seconds))
    events = [e for i in range(0, len(audio), step) for e in stream.accept(audio[i:i + step], rate)]
    return events + stream.flush()


def test_the_resampler_streams_what_resampling_the_whole_gives(jfk):
    mono = jfk[0].mean(1)
    whole = AF.resample(torch.from_numpy(mono), jfk[1], SAMPLE_RATE).numpy()
    rng = np.random.default_rng(0)
    edges = np.cumsum(rng.integers(1, 4000, size=len(mono) // 500))
    edges = [0, *edges[edges < len(mono)], len(mono)]
    r = StreamResampler(jfk[1])
    streamed = np.concatenate([r(mono[a:b]) for a, b in zip(edges, edges[1:])] + [r(np.zeros(0, np.float32), True)])
    assert abs(len(streamed) - len(whole)) <= 1
    n = min(len(streamed), len(whole))
    assert np.abs(streamed[:n] - whole[:n]).max() < 1e-4


def test_partials_come_while_speaking_and_finals_equal_offline_recognition(recognizer, jfk, jfk_path):
    stream = StreamingRecognizer(recognizer)
    events = listen(stream, *jfk)
    finals = [e for e in events if e.type == "final"]
    assert len(finals) >= 2 and all(e.type in ("partial", "final") for e in events)
    for before, after in zip(finals, finals[1:]):
        assert before.end <= after.start  # in order, never overlapping
    wave = load_audio(jfk_path)
    for k, f in enumerate(finals):
        partials = [e for e in events[:events.index(f)] if e.type == "partial" and e.start == f.start]
        assert partials and partials[-1].end < f.end, f"utterance {k}: no partial before its final"
        offline = recognizer.recognize([wave[round(f.start * SAMPLE_RATE):round(f.end * SAMPLE_RATE)]])[0].text
        assert f.text == offline and f.words and f.start <= f.words[0].start <= f.words[-1].end <= f.end + 0.05
    assert "FELLOW" in finals[0].text.upper() and "COUNTRY" in finals[-1].text.upper()


def test_partials_are_written_as_finals_are_and_each_final_reads_the_last_one_as_its_draft(recognizer, jfk,
                                                                                             monkeypatch):
    from speech_transformer.decoding import search

    reads, closing = [], []  # reads: (by a final, tokens in the draft, tokens kept)
    follow_draft, decode = search.follow_draft, StreamingRecognizer._decode

    def follow(decoder, beams, limits, draft):
        kept = follow_draft(decoder, beams, limits, draft)
        reads.append((bool(closing), len(draft), kept))
        return kept

    def decode_final(self, *args):
        closing.append(True)
        try:
            return decode(self, *args)
        finally:
            closing.clear()

    monkeypatch.setattr(search, "follow_draft", follow)
    monkeypatch.setattr(StreamingRecognizer, "_decode", decode_final)
    events = listen(StreamingRecognizer(recognizer), *jfk)
    partials = [e.text for e in events if e.type == "partial"]
    assert any(c.islower() for text in partials for c in text)  # the decoder's writing, not the CTC head's
    finals = [(n, kept) for final, n, kept in reads if final]
    # one decoding per final, and one per candidate dropped when the speech went on before the end silence
    assert len(finals) >= sum(e.type == "final" for e in events) > 0
    assert all(n > 0 for n, _ in finals)  # each final had the last partial as its draft
    assert sum(kept >= n // 2 for n, kept in finals) >= len(finals) / 2, finals  # mostly read, not written


def test_any_block_size_and_rate_gives_the_same_finals(recognizer, jfk):
    texts = []
    for rate, block in [(jfk[1], 0.02), (16_000, 0.1), (8_000, 0.37)]:
        mono = jfk[0].mean(1)
        audio = mono if rate == jfk[1] else AF.resample(torch.from_numpy(mono), jfk[1], rate).numpy()
        finals = [e.text for e in listen(StreamingRecognizer(recognizer), audio, rate, block) if e.type == "final"]
        texts.append(" ".join(finals).split())
    assert texts[0] == texts[1]
    assert len(set(texts[0]) & set(texts[2])) >= 0.6 * len(set(texts[0]))  # 8 kHz loses the top band


def test_long_speech_is_cut_and_buffers_stay_bounded(recognizer, data_dir):
    clips = sorted(read_manifest(data_dir / "librispeech" / "dev.tsv"), key=lambda u: -u.duration)[:1]
    audio = load_audio(clips[0].audio)  # over 20 s of continuous reading
    options = StreamOptions(max_utterance_seconds=6.0, partial_window_seconds=3.0)
    stream = StreamingRecognizer(recognizer, options)
    step, longest, events = 800, 0, []
    for i in range(0, len(audio), step):
        events += stream.accept(audio[i:i + step])
        longest = max(longest, len(stream.audio))
    events += stream.flush()
    finals = [e for e in events if e.type == "final"]
    assert len(finals) >= len(audio) / SAMPLE_RATE / 6.5 and all(e.end - e.start <= 6.05 for e in finals)
    assert longest <= 6.3 * SAMPLE_RATE
    partials = [e for e in events if e.type == "partial"]
    assert len(partials) >= 10
    for a, b in zip(partials, partials[1:]):  # stable words stay: partials only extend or correct the tail
        assert a.text.startswith(a.stable) and (a.start != b.start or b.stable.startswith(a.stable)), (a, b)
    assert max(len(e.stable.split()) for e in partials) >= 8


def test_silence_gives_no_events(recognizer):
    rng = np.random.default_rng(0)
    quiet = (rng.normal(size=5 * 48_000) * 1e-3).astype(np.float32)
    assert listen(StreamingRecognizer(recognizer), quiet, 48_000) == []


def test_a_grammar_gives_commands_and_rejects_other_speech(recognizer, data_dir):
    fsdd = read_manifest(data_dir / "fsdd" / "test.tsv")
    clip = next(u for u in fsdd if u.text == "SEVEN")
    sentence = read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")[0]
    pause = np.zeros(12_000, np.float32)
    audio = np.concatenate([pause, load_audio(clip.audio), pause, load_audio(sentence.audio), pause])
    events = listen(StreamingRecognizer(recognizer, grammar=Grammar.load("digits")), audio, SAMPLE_RATE)
    said = [e for e in events if e.type in ("command", "rejected", "final")]
    assert said[0].type == "command" and said[0].text == "SEVEN" and said[0].command["slots"] == {"digit": "7"}
    assert 0 < said[0].command["confidence"] <= 1 and said[0].end < 2.0
    assert {e.type for e in said[1:]} == {"rejected"}  # the sentence, in one or more utterances


def first_event_at(stream: StreamingRecognizer, audio: np.ndarray, kinds: tuple[str, ...]) -> tuple[float, object]:
    """Seconds of audio fed when the first event of `kinds` came, and that event."""
    for i in range(0, len(audio), 800):
        for e in stream.accept(audio[i:i + 800]):
            if e.type in kinds:
                return (i + 800) / SAMPLE_RATE, e
    raise AssertionError(f"no {kinds} event")


def test_a_sure_command_comes_without_waiting_for_the_rest_of_the_silence(recognizer, data_dir):
    clip = next(u for u in read_manifest(data_dir / "fsdd" / "test.tsv") if u.text == "SEVEN")
    audio = np.concatenate([np.zeros(16_000, np.float32), load_audio(clip.audio), np.zeros(32_000, np.float32)])
    times = {}
    for sure in (0.5, 1.0):  # 1.0: never sure enough, always wait end_silence_seconds
        options = StreamOptions(end_silence_seconds=0.6, pad_seconds=0.2, command_confidence=sure)
        times[sure], e = first_event_at(StreamingRecognizer(recognizer, options, Grammar.load("digits")), audio,
                                        ("command", "rejected"))
        assert e.type == "command" and e.text == "SEVEN" and e.command["confidence"] >= 0.5
    assert times[1.0] - times[0.5] >= 0.35  # 0.6 s of silence against 0.2 s of pad


def test_an_utterance_starts_lead_seconds_before_the_vad_heard_it_but_after_the_last_one(recognizer, data_dir):
    clip = next(u for u in read_manifest(data_dir / "fsdd" / "test.tsv") if u.text == "SEVEN")
    seven = load_audio(clip.audio)
    audio = np.concatenate([np.zeros(16_000, np.float32), seven, np.zeros(8_000, np.float32), seven,
                            np.zeros(16_000, np.float32)])
    starts = {}
    for lead in (0.1, 0.8):
        options = StreamOptions(lead_seconds=lead, end_silence_seconds=0.3, pad_seconds=0.2, command_confidence=1.0)
        said = [e for e in listen(StreamingRecognizer(recognizer, options, Grammar.load("digits")), audio,
                                  SAMPLE_RATE) if e.type in ("command", "rejected")]
        assert [e.text for e in said] == ["SEVEN", "SEVEN"]
        assert said[0].end <= said[1].start  # the second never reaches back into the first
        starts[lead] = [e.start for e in said]
    assert 0.6 <= starts[0.1][0] - starts[0.8][0] <= 0.75  # 0.7 s more of the silence before the first
    assert starts[0.8][1] < starts[0.1][1]
