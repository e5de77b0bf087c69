"""What the search adds up: the decoder's score of every token, and the partial scorers beside it.

As in ESPnet's scorer interface: the decoder is the full scorer (log-probabilities of all V tokens of N running
hypotheses, after its `LogitFilter`s); a partial `Scorer` scores only the K candidates the search proposes
(the CTC prefix score, Watanabe et al., 2017; a token LM), each with its weight. The joint score of extending
a hypothesis by a candidate is (1 - ctc_weight) x decoder + ctc_weight x CTC + lm_weight x LM.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import Tensor

from speech_transformer.model.quantize import row_scales
from speech_transformer.text.tokenizer import SpecialTokens

NEG_INF = float("-inf")


class LogitFilter(Protocol):
    def apply(self, logits: Tensor, sequences: Sequence[list[int]]) -> None:
        """Change next-token logits `(N, V)` of N hypotheses in place (before the softmax, as whisper does)."""


class SuppressTokens:
    """Tokens the decoder never emits (the CTC blank; Whisper's special, timestamp and non-speech tokens)."""

    def __init__(self, ids: Sequence[int], device: torch.device):
        self.ids = torch.tensor(list(ids), dtype=torch.long, device=device)

    def apply(self, logits: Tensor, sequences: Sequence[list[int]]) -> None:
        logits.index_fill_(1, self.ids, NEG_INF)


class SuppressAtStart(SuppressTokens):
    """Tokens that may not start the text (Whisper: a bare space and <|endoftext|>)."""

    def apply(self, logits: Tensor, sequences: Sequence[list[int]]) -> None:
        if not any(sequences):
            super().apply(logits, sequences)


def default_filters(special: SpecialTokens, device: torch.device) -> list[LogitFilter]:
    filters: list[LogitFilter] = [SuppressTokens(special.suppress, device)]
    if special.suppress_at_start:
        filters.append(SuppressAtStart(special.suppress_at_start, device))
    return filters


class DecoderScorer:
    """The decoder as the full scorer of N = B x W running hypotheses over B utterances' encoder states.

    The cross-attention keys/values are computed once per utterance and shared by its W hypotheses; the
    self-attention cache grows in place and is reordered when beam search changes which hypothesis a row holds.
    """

    def __init__(self, model, memory: Tensor, lengths: Tensor, special: SpecialTokens, filters: list[LogitFilter],
                 hypotheses: int = 1):
        self.model, self.lengths, self.filters, self.special = model, lengths, filters, special
        self.memory_kv = model.decoder.memory_kv(memory)
        self.cache = None
        N = memory.shape[0] * hypotheses
        self.tokens = torch.tensor(special.prompt, device=memory.device).expand(N, len(special.prompt))
        self.no_speech_probs: list[float] | None = None  # after the first step, for a model with a no-speech token

    def logits(self, sequences: Sequence[list[int]]) -> Tensor:
        """Filtered next-token logits `(N, V)`."""
        logits = self._forward(self.tokens)[:, -1].float()
        for f in self.filters:
            f.apply(logits, sequences)
        return logits

    def read(self, draft: list[int]) -> Tensor:
        """Before the first step, one row (N = 1) reads the prompt and a whole draft in one pass -> the filtered
        next-token logits `(D + 1, V)` after each start of it (row i: after draft[:i]). Then `rewind`."""
        if self.cache is not None or self.tokens.shape[0] != 1:
            raise ValueError("a draft is read by one row, before the first step")
        first = self._forward(self.tokens)[0, -1:]  # the prompt alone, as the first step reads it
        self.tokens = torch.cat([self.tokens, self.tokens.new_tensor([draft])], 1)
        with row_scales():  # int8: each draft row quantized as a step's row would be
            logits = torch.cat([first, self._forward(self.tokens[:, -len(draft):])[0]]).float()
        for i in range(len(draft) + 1):
            for f in self.filters:
                f.apply(logits[i:i + 1], [draft[:i]])
        return logits

    def rewind(self, kept: int) -> None:
        """After `read`: keep the prompt and the draft's first `kept` tokens. The last kept position is read
        again by the next `logits` call, which so gives what follows them: the search loop goes on unchanged."""
        end = len(self.special.prompt) + kept
        self.cache.truncate(end - 1)
        self.tokens = self.tokens[:, end - 1:end]

    def _forward(self, tokens: Tensor) -> Tensor:
        logits, self.cache = self.model.decoder(tokens, self.memory_kv, self.lengths, self.cache)
        if self.special.no_speech is not None and self.no_speech_probs is None:  # at the prompt's first token
            self.no_speech_probs = logits[:, 0].float().softmax(-1)[:, self.special.no_speech].tolist()
        return logits

    def advance(self, next_tokens: Tensor, rows: Tensor | None = None) -> None:
        """Feed `next_tokens` `(N,)`; `rows` `(N,)` says which hypothesis each new one extends (beam search)."""
        if rows is not None:
            self.cache.reorder(rows)
        self.tokens = next_tokens[:, None]

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        """Only these utterances `(B',)` and their rows `(N',)` stay in the batch."""
        for i, (k, v) in enumerate(self.memory_kv):  # block by block: one block's copy at a time in memory
            self.memory_kv[i] = (k[utterances], v[utterances])
        self.lengths, self.tokens = self.lengths[utterances], self.tokens[rows]
        self.cache.keep(rows)


class FlatScorer:
    """No decoder: every next token of a V-token vocabulary scores the same, so the partial scorers alone
    (weight 1) lead the search: a grammar search over a CTC head whose vocabulary the decoder does not share."""

    def __init__(self, vocab_size: int, device: torch.device):
        self.vocab_size, self.device = vocab_size, device
        self.no_speech_probs = None

    def logits(self, sequences: Sequence[list[int]]) -> Tensor:
        return torch.zeros(len(sequences), self.vocab_size, device=self.device)

    def advance(self, next_tokens: Tensor, rows: Tensor | None = None) -> None:
        pass

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        pass


class Scorer(Protocol):
    """A weighted score of extending each of N hypotheses by K candidate tokens (ESPnet's partial scorer)."""

    weight: float

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        """candidates `(N, K)` -> the score each extension adds `(N, K)`."""

    def select(self, rows: Tensor, columns: Tensor) -> None:
        """Keep, for new hypothesis i, the extension (rows[i], columns[i]) of the last `score` call."""

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        """Only these utterances `(B',)` and their rows `(N',)` stay in the batch."""


def log_recursion(initial: Tensor, inputs: Tensor, factors: Tensor) -> Tensor:
    """y_t = logaddexp(y_{t-1}, inputs_t) + factors_t for t = 1..T from y_0 = `initial` `(*)`, all T at once:
    inputs, factors `(T, *)` -> y `(T, *)`.

    In probabilities it is linear, Y_t = (Y_{t-1} + I_t) F_t, so with G_t = factors_1 + ... + factors_t,
    y_t - G_t = logsumexp(initial, inputs_1 - G_0, ..., inputs_t - G_{t-1}): a cumulative log-sum-exp instead
    of a loop over frames. In float64, with factors floored at -1e4 (a probability that is 0 in float64 as
    -inf is, but keeps G finite), because G_t grows with t and differences of its values are taken.
    """
    g = factors.double().clamp(min=-1e4).cumsum(0)
    before = torch.cat([torch.zeros_like(g[:1]), g[:-1]])  # G_{t-1}
    terms = torch.cat([initial[None].double(), inputs.double() - before])
    return (g + torch.logcumsumexp(terms, 0)[1:]).to(factors.dtype)


class CTCPrefixScorer:
    """CTC prefix scores of N hypotheses extended by K candidate tokens each.

    For a prefix h the forward variables r_t^n(h), r_t^b(h) hold the probability of h covering
    frames 1..t ending in a non-blank / blank; extending by c gives psi(h+c) = sum_t phi_{t-1} x_t(c)
    with phi = r^n + r^b (only r^b when c repeats h's last token). All in log space, frames past
    an utterance's length carry blank with probability one so they change nothing. A prefix of L tokens
    cannot end before frame L, so the recursion for h+c starts there (ESPnet's `start = max(L, 1)`).
    log_probs `(B, S, V)` and lengths `(B,)` are B utterances', each shared by its `hypotheses` rows.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int = SpecialTokens.blank,
                 eos: int = SpecialTokens.eos, hypotheses: int = 1):
        S, N = log_probs.shape[1], log_probs.shape[0] * hypotheses
        self.blank, self.eos, self.W = blank, eos, hypotheses
        x = log_probs.transpose(0, 1).clone()  # (S, B, V)
        beyond = torch.arange(S, device=x.device)[:, None] >= lengths[None, :]
        x.masked_fill_(beyond[..., None], NEG_INF)
        x[..., blank].masked_fill_(beyond, 0.0)
        self.x = x
        self.x_blank = x[:, :, blank].repeat_interleave(hypotheses, 1)  # (S, N)
        self.r = torch.stack([torch.full((S, N), NEG_INF, device=x.device), self.x_blank.cumsum(0)], dim=1)
        self.score = torch.zeros(N, device=x.device)  # log-probability of each prefix
        self.last = torch.full((N,), -1, dtype=torch.long, device=x.device)
        self.length = 0  # tokens in every prefix (each `select` adds one)

    def extend(self, candidates: Tensor) -> Tensor:
        """candidates `(N, K)` -> prefix scores psi(h + c) `(N, K)`. The scores need no forward variables of h + c:
        those are computed by `select`, for the N extensions kept, not for all N x K."""
        N, K = candidates.shape
        x_c = self._frames(candidates)
        phi = self._phi(torch.arange(N, device=candidates.device), candidates)
        first = torch.where((self.last < 0)[:, None], x_c[0], NEG_INF)  # an empty h: c may start at frame 0
        psi = torch.logsumexp(torch.cat([first[None], phi[:-1] + x_c[1:]]), dim=0)
        full = torch.logaddexp(self.r[-1, 0], self.r[-1, 1])  # h itself is the whole sequence
        return torch.where(candidates == self.eos, full[:, None].expand(N, K), psi)

    def select(self, rows: Tensor, columns: Tensor, candidates: Tensor, psi: Tensor) -> None:
        """Keep, for each new hypothesis, the extension (rows[i], columns[i]) of `extend`'s candidates and scores:
        its forward variables r_t(h + c) `(S, 2, N)`, from frame L (before it they are -inf)."""
        S = self.x.shape[0]
        tokens = candidates[rows, columns]
        x_c, phi = self._frames(tokens[:, None])[..., 0], self._phi(rows, tokens[:, None])[..., 0]  # (S, N)
        r = torch.full((S, 2, len(rows)), NEG_INF, device=x_c.device)
        r[0, 0] = torch.where(self.last[rows] < 0, x_c[0], NEG_INF)
        start = max(self.length, 1)
        if start < S:  # r_t^n = logaddexp(r_{t-1}^n, phi_{t-1}) + x_t(c), r_t^b = logaddexp(r_{t-1}^n, r_{t-1}^b) + x_t(blank)
            r[start:, 0] = log_recursion(r[start - 1, 0], phi[start - 1:-1], x_c[start:])
            r[start:, 1] = log_recursion(r[start - 1, 1], r[start - 1:-1, 0], self.x_blank[start:])
        self.r, self.score, self.last = r, psi[rows, columns], tokens
        self.length += 1

    def _frames(self, candidates: Tensor) -> Tensor:
        """x_t(c) `(S, N, K)` of candidates `(N, K)`: row i's from its utterance i // W."""
        S, B = self.x.shape[:2]
        N, K = candidates.shape
        return self.x.gather(2, candidates.reshape(B, -1)[None].expand(S, B, N // B * K)).view(S, N, K)

    def _phi(self, rows: Tensor, candidates: Tensor) -> Tensor:
        """phi_t `(S, N, K)` for extending the prefixes of `rows` `(N,)` by candidates `(N, K)`: r^n + r^b of the
        prefix, only r^b where c repeats its last token (a repeat needs a blank between)."""
        r, last = self.r[:, :, rows], self.last[rows]
        return torch.where((candidates == last[:, None])[None], r[:, 1, :, None],
                           torch.logaddexp(r[:, 0], r[:, 1])[..., None])

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        """Only these utterances `(B',)` and their rows `(N',)` stay."""
        self.x, self.x_blank, self.r = self.x[:, utterances], self.x_blank[:, rows], self.r[:, :, rows]
        self.score, self.last = self.score[rows], self.last[rows]


class CTCScorer:
    """The CTC prefix score as a partial Scorer: log p_ctc(h + c) - log p_ctc(h)."""

    def __init__(self, weight: float, log_probs: Tensor, lengths: Tensor, special: SpecialTokens,
                 hypotheses: int = 1):
        self.weight = weight
        self.prefix = CTCPrefixScorer(log_probs, lengths, special.blank, special.eos, hypotheses)
        self._last: tuple[Tensor, Tensor] | None = None

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        psi = self.prefix.extend(candidates)
        self._last = (candidates, psi)
        return psi - self.prefix.score[:, None]

    def select(self, rows: Tensor, columns: Tensor) -> None:
        self.prefix.select(rows, columns, *self._last)

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        self.prefix.keep(utterances, rows)


class LMScorer:
    """Shallow fusion with a token LM that has `log_probs(sequences, candidates) -> (N, K)` (`token_lm.NgramLM`)."""

    def __init__(self, weight: float, lm):
        self.weight, self.lm = weight, lm

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        return self.lm.log_probs(sequences, candidates)

    def select(self, rows: Tensor, columns: Tensor) -> None:
        pass  # stateless: the sequences carry the history

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        pass
