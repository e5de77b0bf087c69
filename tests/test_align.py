import itertools

import numpy as np
import pytest
import torch

from speech_transformer.model.align import TokenSpan, align_tokens, token_times, word_groups, words_from_tokens


def _brute_force_best(log_probs: np.ndarray, tokens: list[int]) -> float:
    best = -np.inf
    for path in itertools.product(range(log_probs.shape[1]), repeat=log_probs.shape[0]):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == tokens:
            best = max(best, sum(log_probs[t, k] for t, k in enumerate(path)))
    return best


@pytest.mark.parametrize("tokens", [[1, 2], [2, 2], [1], [2, 1, 2]])
def test_alignment_is_the_most_probable_path(tokens):
    rng = np.random.default_rng(len(tokens))
    log_probs = np.log(rng.dirichlet(np.ones(3), size=6))  # (S=6, V=3), blank = 0
    spans = align_tokens(torch.from_numpy(log_probs).float(), tokens)
    assert spans is not None and len(spans) == len(tokens)
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:]))  # in order, not overlapping
    # the best path's score, rebuilt from the spans: each token on its frames, blank elsewhere
    labels = np.zeros(6, dtype=int)
    for token, s in zip(tokens, spans):
        labels[s.start:s.end] = token
    assert np.isclose(log_probs[np.arange(6), labels].sum(), _brute_force_best(log_probs, tokens), atol=1e-5)
    for token, s in zip(tokens, spans):  # a span's score is the mean posterior of its token there
        assert np.isclose(s.score, np.exp(log_probs[s.start:s.end, token]).mean(), atol=1e-5)


def test_tokens_that_cannot_fit_are_reported():
    log_probs = torch.log(torch.full((2, 3), 1 / 3))
    assert align_tokens(log_probs, [2, 2]) is None  # needs a blank between the repeats: 3 frames
    assert align_tokens(log_probs, [1, 2, 1]) is None
    assert [(s.start, s.end) for s in align_tokens(log_probs, [1, 2])] == [(0, 1), (1, 2)]
    assert align_tokens(log_probs, []) == []


class Pieces:
    """A tokenizer stand-in with '▁'-marked word starts."""

    pieces = {2: "▁he", 3: "llo", 4: "▁world"}

    def id_to_piece(self, i: int) -> str:
        return self.pieces[i]

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids).replace("▁", " ").strip()


def test_words_take_times_from_spans_and_the_models_frames():
    tokens = [2, 3, 4]
    assert word_groups(tokens, Pieces()) == [[0, 1], [2]]
    spans = [TokenSpan(1, 3, 0.9), TokenSpan(3, 4, 0.7), TokenSpan(6, 9, 0.5)]
    times = token_times(spans, tokens, Pieces(), start=10.0, end=11.0, frame_seconds=0.04, frame_offset=0.0225)
    words = words_from_tokens(tokens, times, Pieces(), 10.0, 11.0)
    assert [w.word for w in words] == ["hello", "world"]
    assert words[0].start == round(10.0 + 0.04 + 0.0225, 3) and words[0].end == round(10.0 + 0.16 + 0.0225, 3)
    assert words[0].confidence == 0.8 and words[1].confidence == 0.5


def test_unaligned_tokens_share_the_segment_by_length():
    tokens = [2, 3, 4]
    times = token_times(None, tokens, Pieces(), start=0.0, end=1.2, frame_seconds=0.04, frame_offset=0.0)
    words = words_from_tokens(tokens, times, Pieces(), 0.0, 1.2)
    assert words[0].start == 0.0 and words[-1].end == 1.2 and all(w.confidence is None for w in words)


@pytest.mark.parametrize("overrides, offset", [
    ({}, 0.0225),  # conv2d x4 without padding: frame 0 sees feature frames 0..6, centred at 42.5 ms
    ({"subsampling": "conv1d", "frontend": "whisper", "ctc": False}, -0.01),  # Whisper: centred, 20 ms frames
])
def test_frame_timing_comes_from_the_models_stem(overrides, offset):
    from speech_transformer.model.transformer import SpeechTransformer, preset

    model = SpeechTransformer(preset("tiny", vocab_size=10, **overrides))
    assert model.encoder_frame_offset == pytest.approx(offset)
    assert model.encoder_frame_seconds == pytest.approx(0.02 if overrides else 0.04)


def test_display_words_take_the_times_of_their_spelling():
    from speech_transformer.model.align import Word, display_words
    from speech_transformer.text.normalize import normalize_transcript

    spelled = [Word("ENTER", 0.1, 0.4, 0.9), Word("FIFTY", 0.5, 0.8, 0.8), Word("FOUR", 0.8, 1.0, 0.6)]
    words = display_words("Enter -- 54.", spelled, normalize_transcript)
    assert [(w.word, w.start, w.end) for w in words] == [("Enter", 0.1, 0.4), ("--", 0.4, 0.4), ("54.", 0.5, 1.0)]
    assert words[2].confidence == 0.7 and words[1].confidence is None
    assert display_words("Hello", [], normalize_transcript) == []  # nothing aligned: no times to give
