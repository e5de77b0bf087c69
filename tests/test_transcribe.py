"""Batch transcription: long input timestamps, subtitles, the Python API, decoding flags.

A tiny model overfits five short real LibriSpeech utterances (module fixture, ~10 s), so the
tests can check exact words where the audio is one of those clips, and structure elsewhere.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import parse_srt, parse_vtt, resampled
from speech_transformer.apps import writers as subtitles
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, load_audio
from speech_transformer.apps.writers import Transcript
from speech_transformer.apps.transcribe import Transcriber, transcribe
from speech_transformer.apps.transcribe_cli import main
from speech_transformer.text.scoring import normalize_english


# --- tests ------------------------------------------------------------------------------------

def _trim(wave: np.ndarray) -> np.ndarray:
    """Cut a clip's leading and trailing silence by frame energy (independently of the VAD under test)."""
    frames = wave[: len(wave) // 160 * 160].reshape(-1, 160)
    energy = 10 * np.log10((frames ** 2).mean(axis=1) + 1e-10)
    loud = np.nonzero(energy > energy.max() - 35)[0]
    return wave[loud[0] * 160:(loud[-1] + 1) * 160]


def test_long_input_timestamps_follow_the_clips(tmp_path, model_dir, clips, monkeypatch):
    rng = np.random.default_rng(1)
    pieces, bounds, texts, t = [], [], [], 0
    for k in range(60):  # ~4 minutes: 60 clips with 1-2.5 s pauses of faint noise between them
        pause = (rng.normal(size=int(rng.uniform(1.0, 2.5) * SAMPLE_RATE)) * 1e-3).astype(np.float32)
        wave, text = clips[k % len(clips)]
        speech = _trim(wave)
        pieces += [pause, speech]
        t += len(pause)
        bounds.append((t / SAMPLE_RATE, (t + len(speech)) / SAMPLE_RATE))
        texts.append(text)
        t += len(speech)
    pieces.append(np.zeros(SAMPLE_RATE, np.float32))
    path = tmp_path / "long.flac"
    sf.write(path, np.concatenate(pieces), SAMPLE_RATE)
    assert sf.info(path).duration > 180

    # memory stays bounded: the chunk pool and each padded batch never exceed their budgets
    pools, batches = [], []
    flush, decode_chunks = Transcriber._flush, Transcriber.decode_chunks

    def spy_flush(self, pool, pending):
        pools.append(sum(len(p.audio) for p in pool) / SAMPLE_RATE)
        return flush(self, pool, pending)

    def spy_decode(self, waves, chunks):
        batches.append((len(waves), len(waves) * max(map(len, waves)) / SAMPLE_RATE))
        return decode_chunks(self, waves, chunks)

    monkeypatch.setattr(Transcriber, "_flush", spy_flush)
    monkeypatch.setattr(Transcriber, "decode_chunks", spy_decode)
    # merge gap 0.5 s: each clip is its own chunk (1-2.5 s pauses, less the 0.2 s pads), so its times can be checked
    result = transcribe(str(model_dir), str(path), block_seconds=13.7, batch_seconds=12.0, pool_seconds=20.0,
                        merge_gap_seconds=0.5)
    assert len(pools) >= 5 and max(pools) < 20.0 + 20.0  # at most one chunk past the pool budget
    assert all(n == 1 or padded <= 12.0 for n, padded in batches) and max(n for n, _ in batches) > 1
    assert isinstance(result, Transcript) and result.ok
    segs = result.segments
    assert len(segs) == len(bounds)
    previous = 0.0
    for seg, (start, end), text in zip(segs, bounds, texts):
        assert previous <= seg.start < seg.end
        assert abs(seg.start - start) <= 0.5 and abs(seg.end - end) <= 0.5, (seg.start, seg.end, start, end)
        previous = seg.end
        assert seg.words and " ".join(w.word for w in seg.words) == seg.text
        assert all(seg.start <= w.start <= w.end <= seg.end for w in seg.words)
        assert all(a.end <= b.start + 1e-6 for a, b in zip(seg.words, seg.words[1:]))
        assert seg.words[0].start >= start - 0.5 and seg.words[-1].end <= end + 0.5
    assert sum(s.text == t for s, t in zip(segs, texts)) >= 0.9 * len(texts)
    srt = parse_srt(subtitles.to_srt(result))
    assert len(srt) >= len(segs) and " ".join(c[2] for c in srt) == result.text
    assert len(parse_vtt(subtitles.to_vtt(result))) == len(srt)


def test_python_api_inputs_and_failures(model_dir, clips, data_dir, tmp_path):
    wave, text = clips[0]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF....WAVEjunk")
    results = transcribe(str(model_dir), [wave, str(bad), (8000, resampled(wave, 8000)), np.zeros(SAMPLE_RATE * 3)])
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[0].text == text and results[0].segments[0].words
    assert "not a readable audio file" in results[1].error
    assert results[2].text and results[3].segments == [] and results[3].duration == 3.0
    ctc = transcribe(str(model_dir), wave, method="ctc", threshold=0.6, max_chunk_seconds=5.0)
    assert ctc.text and all(w.confidence is not None for s in ctc.segments for w in s.words)
    with pytest.raises(AudioError):
        transcribe(str(model_dir), str(bad))
    with pytest.raises(TypeError):
        transcribe(str(model_dir), wave, no_such_option=1)


def test_no_speech_is_dropped_on_jfk(data_dir):
    """The shipped model's preferred decoding gives words for the first VAD chunk (0.15-2.44 s): they are kept.
    By default (runs up to 1 s apart joined) jfk is one chunk; with 0.5 s it is three, none of them empty."""
    from speech_transformer.recognition.recognizer import Recognizer

    recognizer = Recognizer.from_dir(None)
    whole = transcribe(recognizer, str(data_dir / "samples" / "jfk.flac"))
    said = normalize_english(" ".join(w.word for w in whole.segments[0].words)).split()  # "fellow-American" is 2
    assert len(whole.segments) == 1 and len(said) == 22, said
    t = transcribe(recognizer, str(data_dir / "samples" / "jfk.flac"), merge_gap_seconds=0.5)
    assert len(t.segments) == 3 and all(s.text for s in t.segments)
    assert t.segments[0].start < 0.5 and t.segments[0].words and t.segments[0].words[0].start < 0.5
    single = recognizer.recognize([load_audio(str(data_dir / "samples" / "jfk.flac"))[:int(2.44 * SAMPLE_RATE)]])
    assert single[0].text  # the same decoding of that stretch alone also hears words


def test_decoding_flags_change_one_field_of_the_models_preferred_decoding():
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.apps.transcribe import TranscribeOptions
    from speech_transformer.apps.transcribe_cli import _parser
    from speech_transformer.apps.decoding_args import describe_preferred, embedded_decoding

    preferred = DecodingOptions(beam_size=4, ctc_weight=0.3)
    assert TranscribeOptions().decoding(preferred) == preferred
    assert TranscribeOptions.from_kwargs(beam_size=2).decoding(preferred) == DecodingOptions(beam_size=2, ctc_weight=0.3)
    assert TranscribeOptions.from_kwargs(method="ctc", ctc_weight=None).decoding(preferred).method == "ctc"
    text = " ".join(_parser().format_help().split())
    assert "preferred decoding" in text and describe_preferred(embedded_decoding()) in text
    for flag in ("--batch-seconds", "--max-chunk-seconds", "--vad-threshold", "--format", "--model", "--device"):
        assert flag in text
    assert text.count("(default:") >= 8


def test_lexicon_decoding_through_transcribe_and_the_demo(data_dir, tmp_path):
    """method="lexicon" is one more decoding of the one path: the CLI's flags and the demo's control reach it."""
    import dataclasses

    from speech_transformer.decoding.arpa import read_corpus, write_arpa
    from speech_transformer.decoding.word_lm import build_kneser_ney
    from speech_transformer.apps.demo import Demo
    from speech_transformer.recognition.recognizer import Recognizer

    lm = write_arpa(build_kneser_ney(read_corpus(data_dir / "librispeech" / "train.tsv")[:400], 3), tmp_path / "lm.arpa")
    words = {w for line in lm.read_text().splitlines() if line.count("\t") >= 1 for w in line.split("\t")[1].split()}
    recognizer = Recognizer.from_dir(None)
    clip = str(data_dir / "librispeech" / "samples" / "1089-134686-0000.flac")
    t = transcribe(recognizer, clip, method="lexicon", beam_size=20, lm_weight=0.4, word_score=1.0, word_lm=str(lm))
    said = t.text.lower().split()
    assert said and set(said) <= words  # only words of the lexicon (the LM's vocabulary)
    out = tmp_path / "out"
    assert main([clip, "-o", str(out), "--format", "txt", "--method", "lexicon", "--beam", "20", "--lm-weight", "0.4",
                 "--word-score", "1.0", "--word-lm", str(lm), "--no-progress"]) == 0
    assert (out / "1089-134686-0000.txt").read_text().split() == t.text.split()
    recognizer.options = dataclasses.replace(recognizer.options, word_lm=str(lm))
    text = Demo(recognizer).transcribe(clip, layer="mean", method="lexicon")[0]
    assert text and set(text.lower().split()) <= words
