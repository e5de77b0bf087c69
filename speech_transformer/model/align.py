"""The one aligner: where each token and word of a hypothesis sits in time.

CTC forced alignment (torchaudio's `forced_align`, the Viterbi path of the tokens through the CTC head's
frame posteriors) gives token spans in encoder frames; the model says how long a frame is and where the
first one starts (`encoder_frame_seconds`, `encoder_frame_offset`: they depend on its stem). Words are
the tokenizer's word pieces grouped at '▁'. Transcripts, subtitles and the demo's pictures all use this.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor


@dataclass(frozen=True)
class TokenSpan:
    start: int  # first encoder frame of the token
    end: int  # one past its last frame
    score: float  # mean posterior of the token over its frames


@dataclass
class Word:
    word: str
    start: float  # seconds
    end: float
    confidence: float | None  # mean CTC posterior of its tokens over their aligned frames; None: not aligned


def align_tokens(log_probs: Tensor, tokens: list[int], blank: int = 0) -> list[TokenSpan] | None:
    """Forced alignment of `tokens` to CTC log-posteriors `(S, V)` of the valid frames.

    None when the tokens cannot fit (fewer frames than tokens plus the blanks between repeats).
    """
    if not tokens or log_probs.shape[0] == 0:
        return [] if not tokens else None
    targets = torch.tensor([tokens], dtype=torch.int32)
    try:
        labels, scores = AF.forced_align(log_probs[None].float().cpu().contiguous(), targets, blank=blank)
    except RuntimeError:  # "targets length is too long for CTC"
        return None
    spans = AF.merge_tokens(labels[0], scores[0].exp(), blank=blank)
    if len(spans) != len(tokens):
        return None
    return [TokenSpan(s.start, s.end, float(s.score)) for s in spans]


def word_groups(tokens: list[int], tokenizer) -> list[list[int]]:
    """Positions of the tokens of each word: a piece that starts with '▁' starts a word."""
    groups: list[list[int]] = []
    for k, t in enumerate(tokens):
        if not groups or tokenizer.id_to_piece(t).startswith("▁"):
            groups.append([])
        groups[-1].append(k)
    return groups


def token_times(spans: list[TokenSpan] | None, tokens: list[int], tokenizer, start: float, end: float,
                frame_seconds: float, frame_offset: float) -> list[tuple[float, float, float | None]]:
    """(start s, end s, score) of each token in a segment at [start, end) s.

    Without an alignment (no CTC head, or tokens that cannot fit), tokens share the segment in proportion
    to their length and carry no score.
    """
    if spans is not None:
        return [(start + frame_seconds * s.start + frame_offset, start + frame_seconds * s.end + frame_offset, s.score)
                for s in spans]
    weights = np.cumsum([0] + [max(1, len(tokenizer.id_to_piece(t))) for t in tokens], dtype=np.float64)
    edges = start + (end - start) * weights / max(weights[-1], 1.0)
    return [(float(edges[k]), float(edges[k + 1]), None) for k in range(len(tokens))]


def words_from_tokens(tokens: list[int], times: list[tuple[float, float, float | None]], tokenizer,
                      start: float, end: float) -> list[Word]:
    """Group timed tokens into words, clipped to [start, end]."""
    words = []
    for g in word_groups(tokens, tokenizer):
        text = tokenizer.decode([tokens[k] for k in g]).strip()
        if not text:
            continue
        a, b = min(max(times[g[0]][0], start), end), min(max(times[g[-1]][1], start), end)
        words.append(Word(text, round(a, 3), round(max(a, b), 3), mean_confidence([times[k][2] for k in g])))
    return words


def mean_confidence(scores: list[float | None]) -> float | None:
    """A word's confidence from its parts' (None if any part was not aligned)."""
    return None if any(s is None for s in scores) else round(float(np.mean(scores)), 4)


def display_words(text: str, spelled: list[Word], normalize) -> list[Word]:
    """The words of `text` as written ("Americans," "54.") with the times of `spelled`, the same words as the CTC
    head spells them (`normalize` of each written word gives its spelled words: "54." -> FIFTY FOUR); a written
    word with no spelled word ("--") takes the end of the one before."""
    out, k = [], 0
    for written in text.split():
        n = len(normalize(written).split())
        group = spelled[k:k + n]
        k += n
        if group:
            out.append(Word(written, group[0].start, group[-1].end, mean_confidence([w.confidence for w in group])))
        elif out or spelled:
            at = out[-1].end if out else spelled[0].start
            out.append(Word(written, at, at, None))
    return out
