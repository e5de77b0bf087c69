"""Decoding: encoder states -> token sequences.

Three searches share one set of options: CTC greedy (`method="ctc"`), batched greedy attention
decoding (`beam_size=1`) and batched beam search whose scores join the decoder's log-probabilities
with CTC prefix scores (Watanabe et al., 2017, as in ESPnet). Every search ends: at <eos>, at a
maximum length tied to the input length, or when the loop guard sees an n-gram repeating.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from speech_transformer.tokenizer import SpecialTokens

NEG_INF = float("-inf")


@dataclass(frozen=True)
class DecodingOptions:
    method: str = "attention"  # "attention" (greedy or beam) or "ctc" (CTC greedy)
    beam_size: int = 1
    ctc_weight: float = 0.3  # share of the CTC prefix score in beam search; 0 = attention only
    length_penalty: float = 1.0  # hypotheses are ranked by score / length**length_penalty
    max_tokens_per_frame: float = 0.5  # max output length = this x encoder frames (40 ms each)
    max_length: int = 448
    max_repeats: int = 4  # loop guard: an n-gram may repeat at most this many times in a row
    pre_beam_ratio: float = 1.5  # candidates scored by CTC per hypothesis = ratio x beam
    lm_weight: float = 0.0  # shallow fusion: weight of an external LM's log-probability in beam search

    def __post_init__(self):
        if self.method not in ("attention", "ctc"):
            raise ValueError(f"unknown decoding method {self.method!r}")
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # sum of log-probabilities (joint score for beam search)

    def normalized(self, length_penalty: float) -> float:
        return self.score / max(1, len(self.tokens) + 1) ** length_penalty


def max_lengths(memory_lengths: Tensor, options: DecodingOptions) -> list[int]:
    return [min(options.max_length, max(1, int(n * options.max_tokens_per_frame))) for n in memory_lengths.tolist()]


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


def ctc_greedy_search(ctc_log_probs: Tensor, lengths: Tensor, blank: int = SpecialTokens.blank) -> list[Hypothesis]:
    """Best path: argmax per frame, merge repeats, drop blanks. ctc_log_probs `(B, S, V)`."""
    best, ids = ctc_log_probs.max(-1)
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(ids[b, :n]).tolist()
        out.append(Hypothesis([t for t in path if t != blank], float(best[b, :n].sum())))
    return out


@torch.no_grad()
def greedy_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions,
                  special: SpecialTokens = SpecialTokens()) -> list[Hypothesis]:
    """Batched greedy attention decoding with a KV cache. memory `(B, S, D)`."""
    B = memory.shape[0]
    limits = max_lengths(lengths, options)
    memory_kv = model.decoder.memory_kv(memory)
    hyps = [Hypothesis([], 0.0) for _ in range(B)]
    done = [False] * B
    tokens = torch.tensor(special.prompt, device=memory.device).expand(B, len(special.prompt))
    suppress = torch.tensor(special.suppress, dtype=torch.long, device=memory.device)
    cache = None
    for step in range(max(limits) + 1):
        logits, cache = model.decoder(tokens, memory_kv, lengths, cache)
        logp = logits[:, -1].float().log_softmax(-1)
        logp.index_fill_(1, suppress, NEG_INF)
        best, next_tokens = logp.max(-1)
        for b in range(B):
            if done[b]:
                continue
            token = int(next_tokens[b])
            if step >= limits[b]:
                done[b] = True
                continue
            hyps[b].score += float(best[b])
            if token == special.eos:
                done[b] = True
                continue
            hyps[b].tokens.append(token)
            if repeats_too_often(hyps[b].tokens, options.max_repeats):
                done[b] = True
        if all(done):
            break
        tokens = next_tokens[:, None]
    return hyps


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


@torch.no_grad()
def beam_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions,
                special: SpecialTokens = SpecialTokens(), lm=None) -> list[Hypothesis]:
    """Batched beam search over B utterances x W hypotheses with joint CTC/attention scores."""
    B, W, V = memory.shape[0], options.beam_size, model.config.vocab_size
    N, device = B * W, memory.device
    limits = max_lengths(lengths, options)
    memory_lengths = lengths.repeat_interleave(W)
    memory_kv = model.decoder.memory_kv(memory.repeat_interleave(W, dim=0))
    lam = options.ctc_weight
    ctc = CTCPrefixScorer(model.ctc_log_probs(memory).repeat_interleave(W, dim=0), memory_lengths, special.blank,
                          special.eos) if lam > 0 else None
    # pre-beam: the CTC prefix score is computed only for the decoder's top K tokens (all tokens when
    # the decoder's scores do not count, as in ESPnet)
    K = W if ctc is None else V - 1 if lam == 1.0 else min(V - 1, max(W, int(options.pre_beam_ratio * W)))

    scores = torch.full((B, W), NEG_INF, device=device)
    scores[:, 0] = 0.0  # one live hypothesis per utterance to start with
    scores = scores.flatten()
    sequences: list[list[int]] = [[] for _ in range(N)]
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    done = [False] * B
    tokens = torch.tensor(special.prompt, device=device).expand(N, len(special.prompt))
    suppress = torch.tensor(special.suppress, dtype=torch.long, device=memory.device)
    cache = None
    for step in range(max(limits) + 1):
        for b in range(B):
            if not done[b] and step >= limits[b]:  # out of length: running hypotheses end here
                finished[b] += [Hypothesis(sequences[b * W + w], float(scores[b * W + w]))
                                for w in range(W) if scores[b * W + w] > NEG_INF]
                done[b] = True
        if all(done):
            break
        logits, cache = model.decoder(tokens, memory_kv, memory_lengths, cache)
        att = logits[:, -1].float().log_softmax(-1)
        att.index_fill_(1, suppress, NEG_INF)
        att_top, candidates = att.topk(K, dim=-1)  # (N, K)
        if ctc is not None:
            psi, r = ctc.extend(candidates)
            joint = (1 - lam) * att_top + lam * (psi - ctc.score[:, None])
        else:
            joint = att_top
        if lm is not None and options.lm_weight > 0:  # shallow fusion with e.g. `lm.NgramLM`
            joint = joint + options.lm_weight * lm.log_probs(sequences, candidates)
        total = (scores[:, None] + joint).view(B, W * K)
        done_mask = torch.tensor(done, device=device)[:, None]
        total = total.masked_fill(done_mask, NEG_INF)
        best, flat = total.topk(W, dim=-1)  # (B, W)
        rows = (torch.arange(B, device=device)[:, None] * W + flat // K).flatten()
        columns = (flat % K).flatten()
        new_tokens = candidates[rows, columns]
        scores = best.flatten().clone()
        new_sequences = []
        for i, (row, token) in enumerate(zip(rows.tolist(), new_tokens.tolist())):
            b = i // W
            seq = sequences[row] if token == special.eos else sequences[row] + [token]
            new_sequences.append(seq)
            if scores[i] == NEG_INF or done[b]:
                continue
            if token == special.eos or repeats_too_often(seq, options.max_repeats):
                finished[b].append(Hypothesis(seq, float(scores[i])))
                scores[i] = NEG_INF
        sequences = new_sequences
        for b in range(B):
            if not done[b] and (len(finished[b]) >= W or not (scores[b * W:(b + 1) * W] > NEG_INF).any()):
                done[b] = True
        cache = [(k[rows], v[rows]) for k, v in cache]
        if ctc is not None:
            ctc.select(rows, columns, candidates, psi, r)
        tokens = new_tokens[:, None]
    return [max(f, key=lambda h: h.normalized(options.length_penalty)) if f else Hypothesis([], NEG_INF)
            for f in finished]


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


@torch.no_grad()
def decode(model, memory: Tensor, lengths: Tensor, options: DecodingOptions = DecodingOptions(),
           special: SpecialTokens = SpecialTokens(), lm=None) -> list[Hypothesis]:
    """Search chosen by `options`: encoder states `(B, S, D)` and lengths `(B,)` -> one hypothesis each.

    `special` (the tokenizer's) says how the decoder starts and ends and which tokens it never emits;
    `lm` (with `options.lm_weight` > 0) is fused into beam search.
    A model without a CTC head (an imported Whisper model) decodes on attention scores alone.
    """
    if model.ctc_head is None and options.ctc_weight > 0 and options.method == "attention":
        options = replace(options, ctc_weight=0.0)
    if options.method == "ctc":
        return ctc_greedy_search(model.ctc_log_probs(memory), lengths, special.blank)
    if options.beam_size == 1 and options.ctc_weight == 0.0 and (lm is None or options.lm_weight == 0.0):
        return greedy_search(model, memory, lengths, options, special)
    return beam_search(model, memory, lengths, options, special, lm)
