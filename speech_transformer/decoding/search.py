"""Decoding: encoder states -> token sequences, with one search loop built from swappable pieces.

Searches (`options.method`):
- "ctc": CTC greedy (best path of the CTC head);
- "attention": the decoder writes the text, in `search`, the one loop (whisper's `DecodingTask`) over B
  utterances x W hypotheses. Its pieces: the decoder as a full scorer (`scorers.DecoderScorer`), a token chooser
  (whisper's `TokenDecoder`): `GreedyDecoder` (greedy, or sampling at a temperature > 0) or `BeamSearchDecoder`
  (joint scores of the decoder and weighted partial `Scorer`s: the CTC prefix score and a token LM, over the
  candidates of a `Candidates` piece: the decoder's top K, or what a grammar allows, `commands.matching`);
  `Limits` (a length limit tied to the input length, and the loop guard) and `Beams` (running and finished
  hypotheses, <eos>) are handled once for all;
- "lexicon": word-level CTC beam search over a lexicon with a word n-gram LM (`speech_transformer.decoding.lexicon`).

Every search ends. `decoding.fallback` adds Whisper's temperature fallback and no-speech decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.scorers import NEG_INF, CTCScorer, DecoderScorer, LMScorer, Scorer, default_filters
from speech_transformer.text.tokenizer import SpecialTokens


@dataclass
class Hypothesis:
    tokens: list[int]
    score: float  # sum of log-probabilities (joint score for beam search)
    no_speech_prob: float | None = None  # models with a no-speech token (Whisper)

    def normalized(self, length_penalty: float) -> float:
        return self.score / max(1, len(self.tokens) + 1) ** length_penalty


def ctc_greedy_search(ctc_log_probs: Tensor, lengths: Tensor, blank: int = SpecialTokens.blank) -> list[Hypothesis]:
    """Best path: argmax per frame, merge repeats, drop blanks. ctc_log_probs `(B, S, V)`."""
    best, ids = ctc_log_probs.max(-1)
    out = []
    for b, n in enumerate(lengths.tolist()):
        path = torch.unique_consecutive(ids[b, :n]).tolist()
        out.append(Hypothesis([t for t in path if t != blank], float(best[b, :n].sum())))
    return out


# --- when a hypothesis ends ------------------------------------------------------------------------------

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
    """When a hypothesis must end: its utterance's length limit, or a loop (`max_repeats` None: never)."""

    lengths: list[int]  # per utterance
    max_repeats: int | None

    def loops(self, tokens: list[int]) -> bool:
        return self.max_repeats is not None and repeats_too_often(tokens, self.max_repeats)


@dataclass
class Beams:
    """W hypotheses of each utterance still in the batch, flattened to N rows: rows p*W .. p*W + W-1 are those of
    utterance `ids[p]`. `finished` and `done` are indexed by utterance (all B)."""

    W: int
    scores: Tensor  # (N,) running scores; -inf: no live hypothesis in that row
    sequences: list[list[int]]
    finished: list[list[Hypothesis]]
    done: list[bool]
    ids: list[int]

    @classmethod
    def start(cls, B: int, W: int, device: torch.device, live: int = 1, dtype=torch.float32) -> "Beams":
        """`live` rows of each utterance start from the prompt: one for beam search, W independent samples."""
        scores = torch.full((B, W), NEG_INF, device=device, dtype=dtype)
        scores[:, :live] = 0.0
        return cls(W, scores.flatten(), [[] for _ in range(B * W)], [[] for _ in range(B)], [False] * B,
                   list(range(B)))

    def end_out_of_length(self, limits: Limits, step: int) -> None:
        """Utterances whose limit is `step` tokens: their running hypotheses end as they are."""
        W = self.W
        for p, b in enumerate(self.ids):
            if not self.done[b] and step >= limits.lengths[b]:
                self.finished[b] += [Hypothesis(self.sequences[p * W + w], float(self.scores[p * W + w]))
                                     for w in range(W) if self.scores[p * W + w] > NEG_INF]
                self.done[b] = True

    def update_done(self) -> None:
        """An utterance is done with W finished hypotheses, or none running."""
        live = (self.scores.view(len(self.ids), self.W) > NEG_INF).any(1).tolist()
        for b, a in zip(self.ids, live):
            self.done[b] = self.done[b] or len(self.finished[b]) >= self.W or not a

    def leave(self) -> tuple[Tensor, Tensor] | None:
        """Utterances that are done leave the batch: the positions (in `ids`) and the rows that stay, or None."""
        stay = [p for p, b in enumerate(self.ids) if not self.done[b]]
        if len(stay) == len(self.ids):
            return None
        rows = torch.tensor([p * self.W + w for p in stay for w in range(self.W)], device=self.scores.device)
        self.ids = [self.ids[p] for p in stay]
        self.scores = self.scores[rows]
        self.sequences = [self.sequences[r] for r in rows.tolist()]
        return torch.tensor(stay, device=rows.device), rows

    def best(self, length_penalty: float) -> list[Hypothesis]:
        return [max(f, key=lambda h: h.normalized(length_penalty)) if f else Hypothesis([], NEG_INF)
                for f in self.finished]


# --- token choosers (whisper's TokenDecoder) -------------------------------------------------------------

class TokenDecoder(Protocol):
    def update(self, beams: Beams, logits: Tensor, step: int) -> tuple[Tensor | None, Tensor]:
        """Filtered logits `(N, V)` -> which old row each new hypothesis extends (None: its own) and the tokens
        `(N,)` fed to the decoder next; moves ended hypotheses to `beams.finished`."""

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        """Only these utterances `(B',)` (positions in the batch) and rows `(N',)` stay."""


def next_tokens(logits: Tensor, temperature: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The most probable token of each row `(N, V)` at temperature 0, else a sample; with its log-probability."""
    logp = logits.log_softmax(-1)
    if temperature == 0:
        return logp.max(-1)
    tokens = torch.multinomial((logits / temperature).softmax(-1), 1, generator=generator)[:, 0]
    return logp.gather(1, tokens[:, None])[:, 0], tokens


class GreedyDecoder:
    """Every row extends itself by its best token, or a sample at `temperature` > 0 (W samples per utterance).
    Scores add up in double precision."""

    def __init__(self, eos: int, limits: Limits, temperature: float = 0.0, generator: torch.Generator | None = None):
        self.eos, self.limits, self.temperature, self.generator = eos, limits, temperature, generator

    def update(self, beams: Beams, logits: Tensor, step: int) -> tuple[Tensor | None, Tensor]:
        best, tokens = next_tokens(logits, self.temperature, self.generator)
        scores = beams.scores.tolist()
        for i, (logp, token) in enumerate(zip(best.tolist(), tokens.tolist())):
            b = beams.ids[i // beams.W]
            if beams.done[b] or scores[i] == NEG_INF:
                continue
            scores[i] += logp
            seq = beams.sequences[i]
            if token != self.eos:
                seq.append(token)
            if token == self.eos or self.limits.loops(seq):
                beams.finished[b].append(Hypothesis(seq, scores[i]))
                scores[i] = NEG_INF
        beams.scores = torch.tensor(scores, dtype=beams.scores.dtype, device=beams.scores.device)
        beams.update_done()
        return None, tokens

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        pass


class Candidates(Protocol):
    """Which tokens may extend each hypothesis: the K that the partial scorers score."""

    def propose(self, log_probs: Tensor, beams: Beams, step: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Decoder log-probabilities `(N, V)` -> theirs at the candidates `(N, K)`, the candidates `(N, K)`,
        and which are real `(N, K)` (None: all)."""

    def select(self, rows: Tensor, tokens: Tensor, beams: Beams) -> None:
        """The new hypotheses: row i extends old row rows[i] by tokens[i]."""

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        """Only these utterances `(B',)` and rows `(N',)` stay in the batch."""


@dataclass
class TopK:
    """The decoder's K most probable tokens (ESPnet's pre-beam)."""

    K: int

    def propose(self, log_probs: Tensor, beams: Beams, step: int) -> tuple[Tensor, Tensor, Tensor | None]:
        top, candidates = log_probs.topk(self.K, dim=-1)
        return top, candidates, None

    def select(self, rows: Tensor, tokens: Tensor, beams: Beams) -> None:
        pass

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        pass


class BeamSearchDecoder:
    """Keeps the W best extensions per utterance by the joint score: `weight` x the decoder's log-probabilities
    at the candidates, plus each partial scorer's weighted score (all tokens of the search count)."""

    def __init__(self, weight: float, scorers: list[Scorer], candidates: Candidates, eos: int, limits: Limits):
        self.weight, self.scorers, self.candidates, self.eos, self.limits = weight, scorers, candidates, eos, limits

    def update(self, beams: Beams, logits: Tensor, step: int) -> tuple[Tensor | None, Tensor]:
        if all(beams.done):
            return None, torch.zeros(0)
        att, candidates, valid = self.candidates.propose(logits.log_softmax(-1), beams, step)
        joint = self.weight * att
        for s in self.scorers:
            joint = joint + s.weight * s.score(beams.sequences, candidates)
        if valid is not None:
            joint = joint.masked_fill(~valid, NEG_INF)
        rows, columns = self._keep_best(beams, beams.scores[:, None] + joint)
        new_tokens = candidates[rows, columns]
        self._extend(beams, rows, new_tokens)
        for s in self.scorers:
            s.select(rows, columns)
        self.candidates.select(rows, new_tokens, beams)
        return rows, new_tokens

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        for piece in (*self.scorers, self.candidates):
            piece.keep(utterances, rows)

    @staticmethod
    def _keep_best(beams: Beams, total: Tensor) -> tuple[Tensor, Tensor]:
        """W best of each utterance's W x K extensions `(N, K)`: the rows and columns they extend."""
        B, W, K = len(beams.ids), beams.W, total.shape[1]
        done = torch.tensor([beams.done[b] for b in beams.ids], device=total.device)
        total = total.view(B, W * K).masked_fill(done[:, None], NEG_INF)
        best, flat = total.topk(W, dim=-1)  # (B, W)
        beams.scores = best.flatten().clone()
        return (torch.arange(B, device=total.device)[:, None] * W + flat // K).flatten(), (flat % K).flatten()

    def _extend(self, beams: Beams, rows: Tensor, new_tokens: Tensor) -> None:
        """The new hypotheses' sequences; those that said <eos> or loop move to `finished`."""
        sequences = []
        for i, (row, token) in enumerate(zip(rows.tolist(), new_tokens.tolist())):
            b = beams.ids[i // beams.W]
            seq = beams.sequences[row] if token == self.eos else beams.sequences[row] + [token]
            sequences.append(seq)
            if beams.scores[i] == NEG_INF or beams.done[b]:
                continue
            if token == self.eos or self.limits.loops(seq):
                beams.finished[b].append(Hypothesis(seq, float(beams.scores[i])))
                beams.scores[i] = NEG_INF
        beams.sequences = sequences
        beams.update_done()


# --- the loop ---------------------------------------------------------------------------------------------

@torch.no_grad()
def search(decoder: DecoderScorer, chooser: TokenDecoder, beams: Beams, limits: Limits, start: int = 0) -> Beams:
    """Whisper's DecodingTask loop: the decoder scores, ended hypotheses leave, the chooser extends the rest;
    utterances that are done leave the batch (their rows cost nothing more). `start`: steps already taken."""
    for step in range(start, max(limits.lengths) + 1):
        logits = decoder.logits(beams.sequences)
        beams.end_out_of_length(limits, step)
        rows, tokens = chooser.update(beams, logits, step)
        if all(beams.done):
            break
        decoder.advance(tokens, rows)
        if (staying := beams.leave()) is not None:
            decoder.keep(*staying)
            chooser.keep(*staying)
    return beams


@torch.no_grad()
def follow_draft(decoder: DecoderScorer, beams: Beams, limits: Limits, draft: list[int]) -> int:
    """Greedy search's first steps in one pass, for one utterance: the decoder reads a guess of its answer (a
    stream's last partial) and keeps the longest start of it that is also its own greedy choice at every token
    (speculative decoding with the draft given). Returns the steps taken; the loop goes on from there.

    In float32 the result is greedy's, token for token. In int8 the read's products differ from the steps' by
    rounding (`quantize.row_scales` keeps that small), so a near tie may go the other way."""
    draft = draft[:limits.lengths[0]]
    best, choice = decoder.read(draft).log_softmax(-1).max(-1)
    kept = 0
    while kept < len(draft) and int(choice[kept]) == draft[kept] and not limits.loops(draft[:kept + 1]):
        kept += 1
    decoder.rewind(kept)
    beams.sequences[0] = draft[:kept]
    beams.scores[0] = best[:kept].double().sum()
    return kept


def pre_beam_size(options: DecodingOptions, vocab_size: int, scorers: list[Scorer]) -> int:
    """Candidates per hypothesis that the scorers see: the decoder's top K (all tokens when only CTC counts)."""
    if not any(isinstance(s, CTCScorer) for s in scorers):
        return options.beam_size
    if options.ctc_weight == 1.0:
        return vocab_size - 1
    return min(vocab_size - 1, max(options.beam_size, int(options.pre_beam_ratio * options.beam_size)))


def partial_scorers(model, memory: Tensor, lengths: Tensor, options: DecodingOptions, special: SpecialTokens,
                    lm=None, ctc_log_probs: Tensor | None = None, hypotheses: int = 1) -> list[Scorer]:
    """The weighted scorers that `options` asks for, for B utterances `(B, S, D)` x `hypotheses` rows each
    (`ctc_log_probs` `(B, S, V)`: the CTC head's, when the caller has them already)."""
    scorers: list[Scorer] = []
    if options.ctc_weight > 0 and model.ctc_head is not None:
        log_probs = model.ctc_log_probs(memory) if ctc_log_probs is None else ctc_log_probs
        scorers.append(CTCScorer(options.ctc_weight, log_probs, lengths, special, hypotheses))
    if lm is not None and options.lm_weight > 0:
        scorers.append(LMScorer(options.lm_weight, lm))
    return scorers


def beam_decoder(scorers: list[Scorer], candidates: Candidates, special: SpecialTokens,
                 limits: Limits) -> BeamSearchDecoder:
    """The decoder's weight is what the CTC scorer leaves (an LM adds on top)."""
    weight = 1.0 - sum(s.weight for s in scorers if isinstance(s, CTCScorer))
    return BeamSearchDecoder(weight, scorers, candidates, special.eos, limits)


@torch.no_grad()
def attention_search(model, memory: Tensor, lengths: Tensor, options: DecodingOptions,
                     special: SpecialTokens = SpecialTokens(), lm=None, ctc_log_probs: Tensor | None = None,
                     temperature: float = 0.0, generator: torch.Generator | None = None,
                     draft: list[int] | None = None) -> list[Hypothesis]:
    """The decoder's search over memory `(B, S, D)`: sampling `best_of` rows per utterance at `temperature` > 0;
    else greedy with no scorer and beam 1, else beam search. The most probable (length-normalised) result each.
    `draft`: a guess of the tokens of one utterance (B = 1) that greedy search checks in one pass (`follow_draft`:
    greedy's result in fewer steps); the other searches do not use it."""
    B = memory.shape[0]
    limits = Limits(max_lengths(lengths, options, position_cap(model, special)), options.max_repeats)
    scorers = [] if temperature > 0 else partial_scorers(model, memory, lengths, options, special, lm,
                                                         ctc_log_probs, options.beam_size)
    if temperature > 0 or (options.beam_size == 1 and not scorers):
        W = options.best_of if temperature > 0 else 1
        chooser: TokenDecoder = GreedyDecoder(special.eos, limits, temperature, generator)
        beams = Beams.start(B, W, memory.device, live=W, dtype=torch.float64)
    else:  # beam 1 with scorers: the joint one-best
        W = options.beam_size
        chooser = beam_decoder(scorers, TopK(pre_beam_size(options, model.config.vocab_size, scorers)), special,
                               limits)
        beams = Beams.start(B, W, memory.device)
    decoder = DecoderScorer(model, memory, lengths, special, default_filters(special, memory.device), W)
    start = 0
    if draft and B == 1 and isinstance(chooser, GreedyDecoder) and temperature == 0:
        start = follow_draft(decoder, beams, limits, draft)
    best = search(decoder, chooser, beams, limits, start).best(options.length_penalty)
    if decoder.no_speech_probs is not None:  # every row of an utterance starts from the same prompt
        for b, h in enumerate(best):
            h.no_speech_prob = decoder.no_speech_probs[b * W]
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


class WordSearch(Protocol):
    """The "lexicon" method's search (`speech_transformer.decoding.lexicon`): words from a lexicon, ranked by a word LM."""

    def search(self, model, memory: Tensor, lengths: Tensor, ctc_log_probs: Tensor, options: DecodingOptions,
               special: SpecialTokens) -> list[Hypothesis]: ...


@torch.no_grad()
def decode(model, memory: Tensor, lengths: Tensor, options: DecodingOptions = DecodingOptions(),
           special: SpecialTokens = SpecialTokens(), lm=None, words: WordSearch | None = None,
           ctc_log_probs: Tensor | None = None, draft: list[int] | None = None) -> list[Hypothesis]:
    """Search chosen by `options`: encoder states `(B, S, D)` and lengths `(B,)` -> one hypothesis each.

    `special` (the tokenizer's) says how the decoder starts and ends and which tokens it never emits;
    `lm` is a token LM that beam search fuses with `options.lm_weight`; `words` the word search of "lexicon";
    `ctc_log_probs` `(B, S, V)` the CTC head's output when the caller has it (else computed here if needed);
    `draft` a guess of the decoder's tokens for one utterance, which greedy search checks at once (`follow_draft`).
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
    return attention_search(model, memory, lengths, options, special, lm, ctc_log_probs, draft=draft)
