"""Decoding: encoder states -> token sequences, built from small pieces.

Searches (`DecodingOptions.method`):
- "ctc": CTC greedy (best path of the CTC head);
- "attention": the decoder writes the text. `beam_size=1` with no extra scorer is batched greedy decoding;
  otherwise batched beam search, whose scores add weighted `Scorer`s to the decoder's log-probabilities:
  the CTC prefix score (`ctc_weight`, Watanabe et al., 2017, as in ESPnet) and an external LM (`lm_weight`);
- "lexicon": word-level CTC beam search over a lexicon with a word n-gram LM (`speech_transformer.decoding.lexicon`).

Both attention searches share the pieces: `LogitFilter`s (tokens never emitted, tokens that may not start
the text), `Limits` (a maximum length tied to the input length, and the loop guard that ends a hypothesis
repeating an n-gram) and `<eos>` handling. Every search ends. `decode_with_fallback` adds Whisper's
temperature fallback (sampling again where a result loops or is unsure) and its no-speech decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
import zlib
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from speech_transformer.decoding.options import METHODS, DecodingOptions
from speech_transformer.text.tokenizer import SpecialTokens

NEG_INF = float("-inf")


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # sum of log-probabilities (joint score for beam search)
    no_speech_prob: float | None = None  # models with a no-speech token (Whisper)

    def normalized(self, length_penalty: float) -> float:
        return self.score / max(1, len(self.tokens) + 1) ** length_penalty


# --- pieces every attention search shares ----------------------------------------------------------------

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


def repeats_too_often(tokens: list[int], max_repeats: int, max_ngram: int = 8) -> bool:
    """True when the sequence ends with some n-gram repeated more than `max_repeats` times in a row."""
    for n in range(1, max_ngram + 1):
        span = n * (max_repeats + 1)
        if len(tokens) < span:
            break
        tail = tokens[-span:]
        if all(tail[i] == tail[i % n] for i in range(n, span)):
            return True
    return False


def max_lengths(memory_lengths: Tensor, options: DecodingOptions, cap: int | None = None) -> list[int]:
    """Per utterance: `max_tokens_per_frame` x its frames, at most `max_length` and `cap`."""
    limit = options.max_length if cap is None else min(options.max_length, cap)
    return [min(limit, max(1, int(n * options.max_tokens_per_frame))) for n in memory_lengths.tolist()]


def position_cap(model, special: SpecialTokens) -> int | None:
    """Tokens a decoder with a learned position table (Whisper's 448) can write after the prompt."""
    c = model.config
    return c.max_target_positions - len(special.prompt) if c.decoder_positions == "learned" else None


@dataclass
class Limits:
    """When a hypothesis must end: its utterance's length limit, or a loop."""

    lengths: list[int]  # per utterance
    max_repeats: int

    def out_of_length(self, utterance: int, step: int) -> bool:
        return step >= self.lengths[utterance]

    def loops(self, tokens: list[int]) -> bool:
        return repeats_too_often(tokens, self.max_repeats)


class AttentionStep:
    """The decoder as a step function over N running hypotheses: tokens in, filtered log-probabilities out."""

    def __init__(self, model, memory: Tensor, lengths: Tensor, special: SpecialTokens, filters: list[LogitFilter]):
        self.model, self.lengths, self.filters, self.special = model, lengths, filters, special
        self.memory_kv = model.decoder.memory_kv(memory)
        self.cache = None
        self.tokens = torch.tensor(special.prompt, device=memory.device).expand(memory.shape[0], len(special.prompt))
        self.no_speech_probs: list[float] | None = None  # after the first step, for a model with a no-speech token

    def logits(self, sequences: Sequence[list[int]]) -> Tensor:
        """Filtered next-token logits `(N, V)`."""
        logits, self.cache = self.model.decoder(self.tokens, self.memory_kv, self.lengths, self.cache)
        if self.special.no_speech is not None and self.no_speech_probs is None:  # at the prompt's first token
            self.no_speech_probs = logits[:, 0].float().softmax(-1)[:, self.special.no_speech].tolist()
        logits = logits[:, -1].float()
        for f in self.filters:
            f.apply(logits, sequences)
        return logits

    def log_probs(self, sequences: Sequence[list[int]]) -> Tensor:
        return self.logits(sequences).log_softmax(-1)

    def advance(self, next_tokens: Tensor, rows: Tensor | None = None) -> None:
        """Feed `next_tokens` `(N,)`; `rows` `(N,)` says which hypothesis each new one extends (beam search)."""
        if rows is not None:
            self.cache = [(k[rows], v[rows]) for k, v in self.cache]
        self.tokens = next_tokens[:, None]


def default_filters(special: SpecialTokens, device: torch.device) -> list[LogitFilter]:
    filters: list[LogitFilter] = [SuppressTokens(special.suppress, device)]
    if special.suppress_at_start:
        filters.append(SuppressAtStart(special.suppress_at_start, device))
    return filters


# --- scorers that beam search adds to the decoder's log-probabilities ------------------------------------

class Scorer(Protocol):
    """A weighted score of extending each of N hypotheses by K candidate tokens (ESPnet's partial scorer)."""

    weight: float

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        """candidates `(N, K)` -> the score each extension adds `(N, K)`."""

    def select(self, rows: Tensor, columns: Tensor) -> None:
        """Keep, for new hypothesis i, the extension (rows[i], columns[i]) of the last `score` call."""


class CTCPrefixScorer:
    """CTC prefix scores of N hypotheses extended by K candidate tokens each.

    For a prefix h the forward variables r_t^n(h), r_t^b(h) hold the probability of h covering
    frames 1..t ending in a non-blank / blank; extending by c gives psi(h+c) = sum_t phi_{t-1} x_t(c)
    with phi = r^n + r^b (only r^b when c repeats h's last token). All in log space, frames past
    an utterance's length carry blank with probability one so they change nothing.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int = SpecialTokens.blank,
                 eos: int = SpecialTokens.eos):
        S, N = log_probs.shape[1], log_probs.shape[0]
        self.blank, self.eos = blank, eos
        x = log_probs.transpose(0, 1).clone()  # (S, N, V)
        beyond = torch.arange(S, device=x.device)[:, None] >= lengths[None, :]
        x.masked_fill_(beyond[..., None], NEG_INF)
        x[..., blank].masked_fill_(beyond, 0.0)
        self.x = x
        self.r = torch.stack([torch.full((S, N), NEG_INF, device=x.device), x[:, :, blank].cumsum(0)], dim=1)
        self.score = torch.zeros(N, device=x.device)  # log-probability of each prefix
        self.last = torch.full((N,), -1, dtype=torch.long, device=x.device)

    def extend(self, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """candidates `(N, K)` -> prefix scores `(N, K)` and new forward variables `(S, 2, N, K)`."""
        S = self.x.shape[0]
        N, K = candidates.shape
        x_c = self.x.gather(2, candidates[None].expand(S, N, K))  # (S, N, K)
        x_blank = self.x[:, :, self.blank][..., None]  # (S, N, 1)
        phi = torch.logaddexp(self.r[:, 0], self.r[:, 1])[..., None].expand(S, N, K).clone()
        repeat = (candidates == self.last[:, None])[None]
        phi = torch.where(repeat, self.r[:, 1][..., None].expand(S, N, K), phi)
        r = torch.full((S, 2, N, K), NEG_INF, device=x_c.device)
        empty = (self.last < 0)[:, None]
        r[0, 0] = torch.where(empty, x_c[0], torch.full_like(x_c[0], NEG_INF))
        for t in range(1, S):
            r[t, 0] = torch.logaddexp(r[t - 1, 0], phi[t - 1]) + x_c[t]
            r[t, 1] = torch.logaddexp(r[t - 1, 0], r[t - 1, 1]) + x_blank[t]
        psi = torch.logsumexp(torch.cat([r[:1, 0], phi[:-1] + x_c[1:]], dim=0), dim=0)
        full = torch.logaddexp(self.r[-1, 0], self.r[-1, 1])  # h itself is the whole sequence
        psi = torch.where(candidates == self.eos, full[:, None].expand(N, K), psi)
        return psi, r

    def select(self, rows: Tensor, columns: Tensor, candidates: Tensor, psi: Tensor, r: Tensor) -> None:
        """Keep, for each new hypothesis, the extension (rows[i], columns[i])."""
        self.r = r[:, :, rows, columns]
        self.score = psi[rows, columns]
        self.last = candidates[rows, columns]


class CTCScorer:
    """The CTC prefix score as a beam-search Scorer: log p_ctc(h + c) - log p_ctc(h)."""

    def __init__(self, weight: float, log_probs: Tensor, lengths: Tensor, special: SpecialTokens):
        self.weight = weight
        self.prefix = CTCPrefixScorer(log_probs, lengths, special.blank, special.eos)
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        psi, r = self.prefix.extend(candidates)
        self._last = (candidates, psi, r)
        return psi - self.prefix.score[:, None]

    def select(self, rows: Tensor, columns: Tensor) -> None:
        candidates, psi, r = self._last
        self.prefix.select(rows, columns, candidates, psi, r)


class LMScorer:
    """Shallow fusion with a token LM that has `log_probs(sequences, candidates) -> (N, K)` (`lm.NgramLM`)."""

    def __init__(self, weight: float, lm):
        self.weight, self.lm = weight, lm

    def score(self, sequences: Sequence[list[int]], candidates: Tensor) -> Tensor:
        return self.lm.log_probs(sequences, candidates)

    def select(self, rows: Tensor, columns: Tensor) -> None:
        pass  # stateless: the sequences carry the history


# --- the searches ---------------------------------------------------------------------------------------

def ctc_greedy_search(ctc_log_probs: Tensor, lengths: Tensor, blank: int = SpecialTokens.blank) -> list[Hypothesis]:
    """Best path: argmax per frame, merge repeats, drop blanks. ctc_log_probs `(B, S, V)`."""
    best, ids = ctc_log_probs.max(-1)
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(ids[b, :n]).tolist()
        out.append(Hypothesis([t for t in path if t != blank], float(best[b, :n].sum())))
    return out


def next_tokens(logits: Tensor, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The most probable token of each row `(N, V)` at temperature 0, else a sample; with its log-probability."""
    logp = logits.log_softmax(-1)
    if temperature == 0:
        return logp.max(-1)
    tokens = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
    return logp.gather(1, tokens[:, None])[:, 0], tokens


@torch.no_grad()
def greedy_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions,
                  special: SpecialTokens = SpecialTokens(), filters: list[LogitFilter] | None = None,
                  temperature: float = 0.0, generator: torch.Generator | None = None) -> list[Hypothesis]:
    """Batched greedy attention decoding with a KV cache (sampling at `temperature` > 0). memory `(B, S, D)`."""
    B = memory.shape[0]
    limits = Limits(max_lengths(lengths, options, position_cap(model, special)), options.max_repeats)
    step_fn = AttentionStep(model, memory, lengths, special,
                            default_filters(special, memory.device) if filters is None else filters)
    hyps = [Hypothesis([], 0.0) for _ in range(B)]
    done = [False] * B
    for step in range(max(limits.lengths) + 1):
        best, next_tokens_ = next_tokens(step_fn.logits([h.tokens for h in hyps]), temperature, generator)
        if step == 0 and step_fn.no_speech_probs is not None:
            for h, p in zip(hyps, step_fn.no_speech_probs):
                h.no_speech_prob = p
        for b in range(B):
            if done[b]:
                continue
            if limits.out_of_length(b, step):
                done[b] = True
                continue
            hyps[b].score += float(best[b])
            token = int(next_tokens_[b])
            if token == special.eos:
                done[b] = True
                continue
            hyps[b].tokens.append(token)
            done[b] = limits.loops(hyps[b].tokens)
        if all(done):
            break
        step_fn.advance(next_tokens_)
    return hyps


def pre_beam_size(options: DecodingOptions, vocab_size: int, scorers: list[Scorer]) -> int:
    """Candidates per hypothesis that the scorers see: the decoder's top K (all tokens when only CTC counts)."""
    if not any(isinstance(s, CTCScorer) for s in scorers):
        return options.beam_size
    if options.ctc_weight == 1.0:
        return vocab_size - 1
    return min(vocab_size - 1, max(options.beam_size, int(options.pre_beam_ratio * options.beam_size)))


@dataclass
class Beams:
    """B utterances x W hypotheses, flattened to N = B*W rows."""

    W: int
    scores: Tensor  # (N,) running joint scores; -inf: no live hypothesis in that row
    sequences: list[list[int]]
    finished: list[list[Hypothesis]]
    done: list[bool]

    @classmethod
    def start(cls, B: int, W: int, device: torch.device) -> "Beams":
        scores = torch.full((B, W), NEG_INF, device=device)
        scores[:, 0] = 0.0  # one live hypothesis per utterance to start with
        return cls(W, scores.flatten(), [[] for _ in range(B * W)], [[] for _ in range(B)], [False] * B)

    def end_running(self, b: int) -> None:
        """Utterance b is out of length: its running hypotheses end here."""
        W = self.W
        self.finished[b] += [Hypothesis(self.sequences[b * W + w], float(self.scores[b * W + w]))
                             for w in range(W) if self.scores[b * W + w] > NEG_INF]
        self.done[b] = True

    def best(self, length_penalty: float) -> list[Hypothesis]:
        return [max(f, key=lambda h: h.normalized(length_penalty)) if f else Hypothesis([], NEG_INF)
                for f in self.finished]


def _keep_best(beams: Beams, total: Tensor, candidates: Tensor, special: SpecialTokens,
               limits: Limits) -> tuple[Tensor, Tensor, Tensor]:
    """Choose W extensions per utterance out of total `(N, K)`; move ended ones to `finished`.

    Returns rows, columns (which hypothesis and candidate each new one extends) and the new tokens `(N,)`.
    """
    B, W, K = len(beams.done), beams.W, candidates.shape[1]
    total = total.view(B, W * K).masked_fill(torch.tensor(beams.done, device=total.device)[:, None], NEG_INF)
    best, flat = total.topk(W, dim=-1)  # (B, W)
    rows = (torch.arange(B, device=total.device)[:, None] * W + flat // K).flatten()
    columns = (flat % K).flatten()
    new_tokens = candidates[rows, columns]
    beams.scores = best.flatten().clone()
    sequences = []
    for i, (row, token) in enumerate(zip(rows.tolist(), new_tokens.tolist())):
        b = i // W
        seq = beams.sequences[row] if token == special.eos else beams.sequences[row] + [token]
        sequences.append(seq)
        if beams.scores[i] == NEG_INF or beams.done[b]:
            continue
        if token == special.eos or limits.loops(seq):
            beams.finished[b].append(Hypothesis(seq, float(beams.scores[i])))
            beams.scores[i] = NEG_INF
    beams.sequences = sequences
    for b in range(B):
        live = (beams.scores[b * W:(b + 1) * W] > NEG_INF).any()
        beams.done[b] = beams.done[b] or len(beams.finished[b]) >= W or not bool(live)
    return rows, columns, new_tokens


def beam_scorers(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                 lm=None, ctc_log_probs: Tensor | None = None) -> list[Scorer]:
    """The weighted scorers that `options` asks for, for B utterances `(B, S, D)` x beam_size hypotheses
    (`ctc_log_probs` `(B, S, V)`: the CTC head's, when the caller has them already)."""
    scorers: list[Scorer] = []
    W = options.beam_size
    if options.ctc_weight > 0 and model.ctc_head is not None:
        log_probs = (model.ctc_log_probs(memory) if ctc_log_probs is None else ctc_log_probs).repeat_interleave(W, 0)
        scorers.append(CTCScorer(options.ctc_weight, log_probs, lengths.repeat_interleave(W), special))
    if lm is not None and options.lm_weight > 0:
        scorers.append(LMScorer(options.lm_weight, lm))
    return scorers


@torch.no_grad()
def beam_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions,
                special: SpecialTokens = SpecialTokens(), lm=None, filters: list[LogitFilter] | None = None,
                ctc_log_probs: Tensor | None = None) -> list[Hypothesis]:
    """Batched beam search over B utterances x W hypotheses: (1 - ctc_weight) x attention + the scorers."""
    B, W = memory.shape[0], options.beam_size
    limits = Limits(max_lengths(lengths, options, position_cap(model, special)), options.max_repeats)
    scorers = beam_scorers(model, memory, lengths, options, special, lm, ctc_log_probs)
    memory, lengths = memory.repeat_interleave(W, dim=0), lengths.repeat_interleave(W)
    step_fn = AttentionStep(model, memory, lengths, special,
                            default_filters(special, memory.device) if filters is None else filters)
    attention_weight = 1.0 - sum(s.weight for s in scorers if isinstance(s, CTCScorer))
    K = pre_beam_size(options, model.config.vocab_size, scorers)
    beams = Beams.start(B, W, memory.device)
    for step in range(max(limits.lengths) + 1):
        for b in range(B):
            if not beams.done[b] and limits.out_of_length(b, step):
                beams.end_running(b)
        if all(beams.done):
            break
        att_top, candidates = step_fn.log_probs(beams.sequences).topk(K, dim=-1)  # (N, K)
        joint = attention_weight * att_top
        for s in scorers:
            joint = joint + s.weight * s.score(beams.sequences, candidates)
        rows, columns, new_tokens = _keep_best(beams, beams.scores[:, None] + joint, candidates, special, limits)
        for s in scorers:
            s.select(rows, columns)
        step_fn.advance(new_tokens, rows)
    best = beams.best(options.length_penalty)
    if step_fn.no_speech_probs is not None:  # every row of an utterance starts from the same prompt
        for b, h in enumerate(best):
            h.no_speech_prob = step_fn.no_speech_probs[b * W]
    return best


@torch.no_grad()
def sequence_log_probs(model, memory: Tensor, lengths: Tensor, sequences: list[list[int]],
                       special: SpecialTokens = SpecialTokens()) -> Tensor:
    """Teacher-forced log p(tokens + <eos> | audio) of one token sequence per row of memory `(N, S, D)` -> `(N,)`.

    The scores that rescoring and grammar matching compare; repeat memory rows (`repeat_interleave`) to score
    several sequences of one utterance. Suppressed tokens are scored as the decoder gives them.
    """
    N, P = len(sequences), len(special.prompt)
    L = max((len(s) for s in sequences), default=0) + 1
    inputs = torch.full((N, P + L - 1), special.eos, dtype=torch.long, device=memory.device)
    targets = torch.full((N, L), -1, dtype=torch.long, device=memory.device)
    inputs[:, :P] = torch.tensor(special.prompt, device=memory.device)
    for n, seq in enumerate(sequences):
        inputs[n, P:P + len(seq)] = torch.tensor(seq, dtype=torch.long)
        targets[n, :len(seq) + 1] = torch.tensor(list(seq) + [special.eos], dtype=torch.long)
    logits, _ = model.decoder(inputs, model.decoder.memory_kv(memory), lengths)
    logp = logits[:, P - 1:].float().log_softmax(-1)  # (N, L, V): row i predicts target i
    picked = logp.gather(2, targets.clamp(min=0)[..., None])[..., 0]
    return picked.masked_fill(targets < 0, 0.0).sum(1)


def sample_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                  temperature: float, generator: torch.Generator) -> list[Hypothesis]:
    """`options.best_of` samples per utterance at `temperature`; the most probable (length-normalised) is kept."""
    n = options.best_of
    samples = greedy_search(model, memory.repeat_interleave(n, dim=0), lengths.repeat_interleave(n), options,
                            special, temperature=temperature, generator=generator)
    return [max(samples[b * n:(b + 1) * n], key=lambda h: h.normalized(options.length_penalty))
            for b in range(memory.shape[0])]


def compression_ratio(text: str) -> float:
    """gzip's ratio of a text: high for a decoder stuck repeating itself."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def needs_fallback(h: Hypothesis, text: str, options: DecodingOptions) -> bool:
    """Whisper's test for decoding again at a higher temperature: a loop, or an unsure result that is not silence."""
    if h.no_speech_prob is not None and h.no_speech_prob > options.no_speech_threshold:
        return False
    return (compression_ratio(text) > options.compression_ratio_threshold
            or h.normalized(1.0) < options.logprob_threshold)


def is_silence(h: Hypothesis, options: DecodingOptions) -> bool:
    """Whisper's no-speech decision: the no-speech token is likely and the text unsure."""
    return (h.no_speech_prob is not None and h.no_speech_prob > options.no_speech_threshold
            and h.normalized(1.0) < options.logprob_threshold)


@torch.no_grad()
def decode_with_fallback(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                         text: Callable[[list[int]], str], lm=None, words=None,
                         ctc_log_probs: Tensor | None = None) -> list[Hypothesis]:
    """`decode`, then Whisper's temperature fallback for the results `needs_fallback` picks (method "attention"),
    then its no-speech decision (an empty hypothesis where `is_silence`)."""
    hyps = decode(model, memory, lengths, options, special, lm, words, ctc_log_probs)
    if options.method == "attention" and len(options.temperatures) > 1:
        generator = torch.Generator(device=memory.device).manual_seed(options.seed)
        for temperature in options.temperatures[1:]:
            redo = [b for b, h in enumerate(hyps) if needs_fallback(h, text(h.tokens), options)]
            if not redo:
                break
            rows = torch.tensor(redo, device=memory.device)
            again = sample_search(model, memory[rows], lengths[rows], options, special, temperature, generator)
            for b, h in zip(redo, again):
                h.no_speech_prob = hyps[b].no_speech_prob
                hyps[b] = h
    return [Hypothesis([], h.score, h.no_speech_prob) if is_silence(h, options) else h for h in hyps]


class WordSearch(Protocol):
    """The "lexicon" method's search (`speech_transformer.decoding.lexicon`): words from a lexicon, ranked by a word LM."""

    def search(self, model, memory: Tensor, lengths: Tensor, ctc_log_probs: Tensor, options: DecodingOptions,
               special: SpecialTokens) -> list[Hypothesis]: ...


@torch.no_grad()
def decode(model, memory: Tensor, lengths: Tensor, options: DecodingOptions = DecodingOptions(),
           special: SpecialTokens = SpecialTokens(), lm=None, words: WordSearch | None = None,
           ctc_log_probs: Tensor | None = None) -> list[Hypothesis]:
    """Search chosen by `options`: encoder states `(B, S, D)` and lengths `(B,)` -> one hypothesis each.

    `special` (the tokenizer's) says how the decoder starts and ends and which tokens it never emits;
    `lm` is a token LM that beam search fuses with `options.lm_weight`; `words` the word search of "lexicon";
    `ctc_log_probs` `(B, S, V)` the CTC head's output when the caller has it (else computed here if needed).
    A model without a CTC head (an imported Whisper model) decodes on attention scores alone.
    """
    if model.ctc_head is None and options.method in ("ctc", "lexicon"):
        raise ValueError(f"this model has no CTC head: decoding method {options.method!r} needs one")
    if options.method in ("ctc", "lexicon") and ctc_log_probs is None:
        ctc_log_probs = model.ctc_log_probs(memory)
    if options.method == "ctc":
        return ctc_greedy_search(ctc_log_probs, lengths, special.blank)
    if options.method == "lexicon":
        if words is None:
            raise ValueError('decoding method "lexicon" needs a lexicon and a word LM (see docs/lexicon.md)')
        return words.search(model, memory, lengths, ctc_log_probs.float(), options, special)
    if model.ctc_head is None:
        options = replace(options, ctc_weight=0.0)
    scored = options.ctc_weight > 0 or (lm is not None and options.lm_weight > 0)
    if options.beam_size == 1 and not scored:
        return greedy_search(model, memory, lengths, options, special)
    return beam_search(model, memory, lengths, options, special, lm,  # beam 1 with scorers: joint one-best
                       ctc_log_probs=ctc_log_probs)
