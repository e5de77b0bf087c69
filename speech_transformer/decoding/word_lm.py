"""Building word LMs: interpolated modified Kneser-Ney from text, and linear interpolation of several models.

- `build_kneser_ney(sentences, order)`: interpolated modified Kneser-Ney (Chen & Goodman, 1998) with three
  discounts per order estimated from counts of counts, as KenLM's lmplz and SRILM's `-kndiscount -interpolate`.
- `interpolate(models, weights)`: linear interpolation of several models into one backoff model, backoff
  weights renormalised (SRILM's `-mix-lm`), so the mixed model is one ARPA file that KenLM loads.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

from speech_transformer.decoding.arpa import BOS, EOS, LOG10_ZERO, UNK, ArpaLM, Ngram


def _discounts(count_of_counts: Counter) -> tuple[float, float, float]:
    """Modified KN discounts D1, D2, D3+ from n1..n4 (Chen & Goodman eq. 26); 0.5/1.0/1.5 where undefined."""
    n1, n2, n3, n4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return 0.5, 1.0, 1.5  # too little text for the estimate
    y = n1 / (n1 + 2 * n2)
    return (max(0.0, 1 - 2 * y * n2 / n1), max(0.0, 2 - 3 * y * n3 / n2), max(0.0, 3 - 4 * y * n4 / n3))


def _adjusted_counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Counts per order: raw counts at the top order and for n-grams starting with <s>; otherwise
    continuation counts N1+(. w_2..w_n) (how many different words precede it)."""
    raw = Counter()
    for words in sentences:
        tokens = [BOS, *words, EOS]
        for i in range(1, len(tokens)):
            raw[tuple(tokens[max(0, i - order + 1):i + 1])] += 1
    counts = [Counter() for _ in range(order)]
    for ngram, c in raw.items():  # ngram of the top order, or shorter at the sentence start
        counts[len(ngram) - 1][ngram] += c
    for n in range(order - 1, 0, -1):  # n-grams of order n+1 -> continuation counts of their suffixes
        for ngram in counts[n]:
            suffix = ngram[1:]
            counts[n - 1][suffix] += 1  # <s> only ever starts an n-gram, so suffixes never do
    return counts


def build_kneser_ney(sentences: Iterable[Sequence[str]], order: int = 3,
                     discounts: Sequence[tuple[float, float, float]] | None = None) -> ArpaLM:
    """Interpolated modified Kneser-Ney over word sentences (each implicitly <s> ... </s>).

    p(w | h) = (c(h w) - D(c(h w))) / c(h) + gamma(h) p(w | h'),  gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)) / c(h)
    with c the adjusted counts of `_adjusted_counts`, and at the bottom p(w | ()) interpolated with the uniform
    distribution over the vocabulary (</s> and <unk> included, <s> not), so <unk> gets gamma(()) / |V|.
    The ARPA backoff weight of h is gamma(h): the interpolated form needs no renormalisation.
    `discounts[n - 1]` overrides the estimated (D1, D2, D3+) of order n.
    """
    sentences = [list(s) for s in sentences]
    if not any(sentences):
        raise ValueError("no text to build a language model from")
    if order < 1:
        raise ValueError("order must be >= 1")
    counts = _adjusted_counts(sentences, order)
    vocab = {w for (w,) in counts[0]} | {EOS, UNK}
    vocab.discard(BOS)
    lm = ArpaLM([{} for _ in range(order)])
    lower: dict[Ngram, float] = {}  # probabilities of order n-1, linear
    for n in range(1, order + 1):
        level = counts[n - 1]
        d = discounts[n - 1] if discounts else _discounts(Counter(level.values()))
        totals: dict[Ngram, float] = defaultdict(float)
        kinds: dict[Ngram, list[int]] = defaultdict(lambda: [0, 0, 0])
        for ngram, c in level.items():
            totals[ngram[:-1]] += c
            kinds[ngram[:-1]][min(c, 3) - 1] += 1
        gamma = {h: (d[0] * k[0] + d[1] * k[1] + d[2] * k[2]) / totals[h] for h, k in kinds.items()}
        probs: dict[Ngram, float] = {}
        for ngram, c in level.items():
            h = ngram[:-1]
            below = 1.0 / len(vocab) if n == 1 else lower[ngram[1:]]
            probs[ngram] = (c - d[min(c, 3) - 1]) / totals[h] + gamma[h] * below
        if n == 1:
            for w in vocab - {w for (w,) in level}:
                probs[(w,)] = gamma[()] / len(vocab)
            probs[(BOS,)] = 0.0
        for ngram, p in probs.items():
            lm.ngrams[n - 1][ngram] = (math.log10(p) if p > 0 else LOG10_ZERO, 0.0)
        if n > 1:
            for h, g in gamma.items():
                prob, _ = lm.ngrams[n - 2][h]
                lm.ngrams[n - 2][h] = (prob, math.log10(g) if g > 0 else LOG10_ZERO)
        lower = probs
    return lm


def _probs_of_context(lm: ArpaLM, context: Ngram, words: Iterable[str], known: set[str], share: float
                      ) -> dict[str, float]:
    """p(w | context) for each w; a word `lm` does not know gets `share` of its <unk> probability."""
    out = {}
    for w in words:
        if w in known and w != UNK:
            out[w] = 10.0 ** lm.log10_prob(w, context)
        else:
            out[w] = 10.0 ** lm.log10_prob(UNK, context) * share
    return out


def interpolate(models: Sequence[ArpaLM], weights: Sequence[float]) -> ArpaLM:
    """p(w | h) = sum_i weights[i] p_i(w | h) on the union of all n-grams, backoff weights renormalised:

    bo(h) = (1 - sum_{w: h w listed} p(w | h)) / (1 - sum_{w: h w listed} p(w | h')),
    so every context still sums to one and unlisted n-grams back off as in an ordinary ARPA model.
    A word that one model lacks gets from it an equal share of that model's <unk> probability.
    """
    if len(models) != len(weights) or not models:
        raise ValueError("one weight per model")
    if abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise ValueError(f"mixture weights must be >= 0 and sum to 1, not {list(weights)}")
    order = max(m.order for m in models)
    mixed = ArpaLM([{} for _ in range(order)])
    union = set().union(*(m.vocab for m in models))
    known = [set(m.vocab) for m in models]
    # words a model lacks share its <unk> mass equally with <unk> itself, so each model still sums to one
    shares = [1.0 / (len(union - k - {UNK}) + 1) for k in known]
    for n in range(1, order + 1):
        by_context: dict[Ngram, set[str]] = defaultdict(set)
        for m in models:
            if n <= m.order:
                for ngram in m.ngrams[n - 1]:
                    by_context[ngram[:-1]].add(ngram[-1])
        for h, words in by_context.items():
            total = dict.fromkeys(words, 0.0)
            for m, lam, k, share in zip(models, weights, known, shares):
                for w, p in _probs_of_context(m, h, words, k, share).items():
                    total[w] += lam * p
            for w, p in total.items():
                mixed.ngrams[n - 1][h + (w,)] = (math.log10(p) if p > 0 else LOG10_ZERO, 0.0)
        if n > 1:
            for h, words in by_context.items():
                seen = sum(10.0 ** mixed.ngrams[n - 1][h + (w,)][0] for w in words if w != BOS)
                below = sum(10.0 ** mixed.log10_prob(w, h[1:]) for w in words if w != BOS)
                prob, _ = mixed.ngrams[n - 2][h]
                bo = (1.0 - seen) / (1.0 - below) if below < 1.0 and seen < 1.0 else 1e-99
                mixed.ngrams[n - 2][h] = (prob, math.log10(max(bo, 1e-99)))
    return mixed
