"""Silero VAD: the batched re-implementation equals silero's own per-window model; chunks are well formed."""

import numpy as np
import pytest
import torch

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.audio.vad import WINDOW, SileroVad, VadOptions


@pytest.fixture(scope="module")
def vad():
    threads = torch.get_num_threads()
    v = SileroVad()
    assert torch.get_num_threads() == threads  # silero's import sets 1 thread; we put it back
    return v


@pytest.fixture(scope="module")
def speech(data_dir):
    """jfk (11 s) + 2 s of silence + a quieter jfk + faint noise: 26.x s, not a whole number of windows."""
    jfk = load_audio(data_dir / "samples" / "jfk.flac")
    noise = np.random.default_rng(0).normal(size=SAMPLE_RATE).astype(np.float32) * 0.01
    return np.concatenate([jfk, np.zeros(2 * SAMPLE_RATE, np.float32), 0.3 * jfk, noise, jfk[:1234]])


def test_probabilities_equal_silero_per_window_calls(vad, speech):
    ours = vad.probabilities([speech])
    assert ours.shape == (-(-len(speech) // WINDOW),)
    model = vad.jit
    model.reset_states()
    padded = torch.from_numpy(np.pad(speech, (0, -len(speech) % WINDOW)))
    with torch.inference_mode():
        theirs = np.array([model(padded[i:i + WINDOW], SAMPLE_RATE).item() for i in range(0, len(padded), WINDOW)])
    assert np.abs(ours - theirs).max() < 1e-4
    # streamed in odd-sized blocks, the state carries over: the same probabilities
    blocks = [speech[i:i + 7001] for i in range(0, len(speech), 7001)]
    assert np.abs(vad.probabilities(blocks) - ours).max() < 1e-5
    # the per-window fallback (for a silero release with another layout) agrees too
    fallback = SileroVad()
    fallback.weights = None
    assert np.abs(fallback.probabilities([speech[: 90 * WINDOW]]) - ours[:90]).max() < 1e-4


def test_chunks_follow_speech_and_skip_silence_and_noise(vad, speech):
    chunks = vad(speech)
    assert chunks and all(0 <= a.start < a.end <= len(speech) for a in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    jfk_end = 11 * SAMPLE_RATE
    assert chunks[0].start < 0.5 * SAMPLE_RATE and any(c.start > jfk_end + SAMPLE_RATE for c in chunks)
    assert not any(jfk_end + 0.4 * SAMPLE_RATE < c.start and c.end < jfk_end + 1.8 * SAMPLE_RATE for c in chunks)
    assert all(c.speech >= vad.options.min_chunk_speech_seconds for c in chunks)
    rng = np.random.default_rng(1)
    assert vad(np.zeros(10 * SAMPLE_RATE, np.float32)) == []
    assert vad((rng.normal(size=10 * SAMPLE_RATE) * 0.03).astype(np.float32)) == []
    assert vad(np.zeros(100, np.float32)) == []


def test_long_speech_is_cut_into_bounded_chunks(data_dir):
    clips = sorted((data_dir / "ljspeech" / "clips").glob("LJ001-000*.opus"))[:8]
    audio = np.concatenate([load_audio(p) for p in clips])  # ~60 s of reading with only short pauses
    vad = SileroVad(VadOptions(max_chunk_seconds=12.0))
    chunks = vad(audio)
    assert len(chunks) >= len(audio) / SAMPLE_RATE / 12
    assert all(c.duration <= 12.0 for c in chunks)
    assert all(a.end <= b.start for a, b in zip(chunks, chunks[1:]))
    assert sum(c.duration for c in chunks) > 0.8 * len(audio) / SAMPLE_RATE


def test_options_are_checked():
    with pytest.raises(ValueError):
        VadOptions(threshold=1.5)
    with pytest.raises(ValueError):
        VadOptions(max_chunk_seconds=0.5)
