"""A token n-gram language model for shallow fusion in beam search.

Trained on plain text through the model's own tokenizer, so it scores exactly the tokens the decoder
proposes. Interpolated absolute discounting (the core of Kneser-Ney, without the continuation counts):

    P(w | h) = max(c(h, w) - D, 0) / c(h) + D * N1+(h .) / c(h) * P(w | h')

where h' drops the oldest token of h, down to a uniform distribution over the vocabulary. Stored as
JSON (`lm.json` beside a model's weights): counts only, nothing executable.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from speech_transformer.utils.files import atomic_write

LM_FILE = "lm.json"
DISCOUNT = 0.75


class NgramLM:
    def __init__(self, order: int, vocab_size: int, bos: int, eos: int, counts: dict[tuple[int, ...], dict[int, int]]):
        self.order, self.vocab_size, self.bos, self.eos = order, vocab_size, bos, eos
        self.counts = counts  # context (0 .. order-1 tokens) -> {next token: count}
        self.totals = {h: sum(c.values()) for h, c in counts.items()}

    @classmethod
    def train(cls, sentences: Iterable[Sequence[int]], order: int, vocab_size: int, bos: int, eos: int,
              min_count: int = 1) -> "NgramLM":
        """Count n-grams of token-id sentences (each padded with bos and closed by eos)."""
        counts: dict[tuple[int, ...], dict[int, int]] = defaultdict(lambda: defaultdict(int))
        for sentence in sentences:
            tokens = [bos] * (order - 1) + list(sentence) + [eos]
            for i in range(order - 1, len(tokens)):
                for n in range(order):  # contexts of length 0 .. order-1
                    counts[tuple(tokens[i - n:i])][tokens[i]] += 1
        kept = {h: {w: c for w, c in nxt.items() if len(h) < 2 or c >= min_count} for h, nxt in counts.items()}
        return cls(order, vocab_size, bos, eos, {h: c for h, c in kept.items() if c})

    def prob(self, history: Sequence[int], token: int) -> float:
        """P(token | the last order-1 tokens of history), history already bos-padded."""
        p = 1.0 / self.vocab_size
        for n in range(0, self.order):
            h = tuple(history[len(history) - n:]) if n else ()
            nxt = self.counts.get(h)
            if nxt is None:
                break
            total = self.totals[h]
            p = max(nxt.get(token, 0) - DISCOUNT, 0.0) / total + DISCOUNT * len(nxt) / total * p
        return p

    def log_probs(self, sequences: Sequence[Sequence[int]], candidates: Tensor) -> Tensor:
        """log P(candidate | sequence) for N sequences (without bos) and their candidates `(N, K)` -> `(N, K)`."""
        pad = [self.bos] * (self.order - 1)
        rows = []
        for seq, cands in zip(sequences, candidates.tolist()):
            history = pad + list(seq)
            rows.append([math.log(self.prob(history, c)) for c in cands])
        return torch.tensor(rows, dtype=torch.float32, device=candidates.device)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        data = {"format": "ngram-1", "order": self.order, "vocab_size": self.vocab_size, "bos": self.bos,
                "eos": self.eos, "discount": DISCOUNT,
                "counts": [[list(h), [[w, c] for w, c in sorted(nxt.items())]] for h, nxt in self.counts.items()]}
        atomic_write(path, json.dumps(data, separators=(",", ":")))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NgramLM":
        try:
            d = json.loads(Path(path).read_text())
            if d.get("format") != "ngram-1":
                raise ValueError(f"unknown format {d.get('format')!r}")
            counts = {tuple(h): {int(w): int(c) for w, c in nxt} for h, nxt in d["counts"]}
            return cls(int(d["order"]), int(d["vocab_size"]), int(d["bos"]), int(d["eos"]), counts)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: not an n-gram LM file ({e})") from None
