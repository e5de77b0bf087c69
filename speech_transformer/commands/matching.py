"""Voice commands: match utterances against a grammar, or say "not understood".

    speech-transformer commands --grammar desktop clip.wav more/ --recursive   (apps/commands_cli.py)

How an utterance is matched (`match`):

1. The encoder runs once per batch; its CTC head gives log-posteriors `(S, V)` per utterance.
2. Candidates. A grammar with at most `max_expansions` phrases is scored whole: the CTC forced-alignment
   log-likelihood log p_ctc(phrase | audio) of every phrase (one batched `ctc_loss`, reduction='none').
   A bigger one (loops such as `{letter}+`) is searched instead: the decoding search (`decoding.search`) with
   a candidate filter that lets only grammar-allowed tokens (and <eos> where a phrase may end) extend a
   hypothesis, scored by the attention decoder joined with CTC prefix scores (by CTC alone where the decoder
   has its own vocabulary, a distilled student's: `scorers.FlatScorer`; the decoder then only rescores).
3. Rescoring. The `rescore` best candidates get the decoder's teacher-forced log p_att(phrase | audio);
   the joint score is `ctc_weight * log p_ctc + (1 - ctc_weight) * log p_att`, and the best joint wins.
   Confidence is its share of the candidates' joint probability (softmax over the rescored candidates).
4. Rejection (the filler model). Unconstrained decoding scores what the audio "really" sounds like: the
   CTC best path (the most likely frame-by-frame labelling, no grammar) and the attention decoder's greedy
   transcript. Each head gives a log-likelihood ratio of the winner to its own unconstrained output, in
   nats (the decoder's per token, times the tokens of its transcript, as the two differ in length), and
   `llr` is the smaller of the two: both heads must find the grammar phrase about as likely as
   what they would say freely (about 0, or above, when the phrase is what the model hears anyway; far below
   for speech the grammar cannot say); `fit` is `llr` per encoder frame. An utterance with
   `llr < reject_threshold` is rejected (None). Not per frame: CTC frames are mostly blank for both paths,
   so per frame a 10 s sentence the grammar cannot say looks as good as a short command the model mishears a
   little. Not CTC alone: a short sentence with a command word in it ("... wait no longer" against "no")
   leaves CTC's best path only a few nats above the command, while the decoder, which reads the whole
   utterance, gives "no" a far lower probability per token than its own transcript. Not the decoder alone:
   its transcript of a long sentence the weak model hardly understands is poor, and only per token does
   it beat a grammar phrase. The threshold and the joint weight belong to the model: its config.json's
   "commands" entry (MatchOptions fields, `MatchOptions.for_model`), tuned on training data only
   (`python bench/commands.py --tune`; docs/commands.md); the class defaults serve models without one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.scorers import NEG_INF, CTCScorer, DecoderScorer, FlatScorer
from speech_transformer.decoding.search import Beams, Limits, attention_search, beam_decoder, search, sequence_log_probs
from speech_transformer.commands.grammar import Grammar, GrammarError, WordGraph, epsilon_closure
from speech_transformer.text.tokenizer import respell

# for a model whose config.json has no "commands" entry; a shipped model carries its own, tuned with
# `python bench/commands.py --tune` on FSDD train, the in-grammar AN4 train commands and LibriSpeech train
# (out of grammar): see docs/commands.md
DEFAULT_REJECT_THRESHOLD = -21.6  # default model v2 with ctc_weight 0.85 (session 4; v1: -29.5)
CONFIG_KEY = "commands"  # config.json entry: the model's MatchOptions fields


@dataclass(frozen=True)
class MatchOptions:
    ctc_weight: float = 0.85  # share of CTC in the joint score (default model v2; v1: 0.5)
    max_expansions: int = 5000  # grammars with more phrases are searched, not enumerated
    rescore: int = 8  # candidates rescored by the attention decoder
    beam_size: int = 8  # constrained search
    max_tokens_per_frame: float = 0.5
    reject_threshold: float | None = DEFAULT_REJECT_THRESHOLD  # None: never reject
    batch_seconds: float = 60.0  # padded audio per encoder batch

    def __post_init__(self):
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")
        if self.rescore < 1 or self.beam_size < 1:
            raise ValueError("rescore and beam_size must be >= 1")

    @classmethod
    def for_model(cls, config: dict | None, **overrides) -> "MatchOptions":
        """The options a model's config.json names in its "commands" entry (class defaults for the rest),
        then `overrides` (None values ignored)."""
        entry = dict((config or {}).get(CONFIG_KEY) or {})
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(entry) - known):
            raise ValueError(f'config.json "{CONFIG_KEY}": unknown fields {unknown}')
        return replace(cls(**entry), **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class CommandMatch:
    text: str  # the phrase, normalised words ("OPEN THE BROWSER")
    action: str | None  # the command's action name (`-> name`), None if it has none
    slots: dict[str, str]  # slot values by name ({"app": "browser"})
    confidence: float  # the winner's share of the rescored candidates' probability, in [0, 1]
    score: float  # joint log-likelihood of the winner
    llr: float  # joint log-likelihood ratio of the winner to unconstrained decoding, nats: the rejection statistic
    fit: float  # llr per encoder frame
    command: int = -1  # index into grammar.commands

    def to_dict(self) -> dict:
        return {"command": self.text, "action": self.action, "slots": self.slots,
                "confidence": round(self.confidence, 4), "llr": round(self.llr, 3)}


# --- the grammar in the model's tokens ---------------------------------------------------------

class TokenGraph:
    """The grammar's word graph with every word spelled in tokens, determinised lazily.

    A state is a frozenset of NFA states; `next(state)` maps each allowed token to the following state.
    """

    def __init__(self, graph: WordGraph, tokenizer):
        self.arcs: list[list[tuple[int, int]]] = [[] for _ in graph.words]
        self.eps = [list(e) for e in graph.eps]
        spelled: dict[str, list[int]] = {}
        for s, arcs in enumerate(graph.words):
            for word, t in arcs:
                ids = spelled.setdefault(word, tokenizer.encode(word))
                prev = s
                for k, tok in enumerate(ids):
                    if k == len(ids) - 1:
                        nxt = t
                    else:
                        nxt = len(self.arcs)
                        self.arcs.append([])
                        self.eps.append([])
                    self.arcs[prev].append((tok, nxt))
                    prev = nxt
        self.final_nfa = set(graph.final)
        self.start = self._closure({0})
        self._next: dict[frozenset, dict[int, frozenset]] = {}

    def _closure(self, states) -> frozenset:
        return epsilon_closure(self.eps, states)

    def next(self, state: frozenset) -> dict[int, frozenset]:
        if state not in self._next:
            moves: dict[int, set[int]] = {}
            for s in state:
                for tok, t in self.arcs[s]:
                    moves.setdefault(tok, set()).add(t)
            self._next[state] = {tok: self._closure(ts) for tok, ts in moves.items()}
        return self._next[state]

    def is_final(self, state: frozenset) -> bool:
        return not self.final_nfa.isdisjoint(state)


class CompiledGrammar:
    """A grammar ready for one tokenizer: every phrase's tokens when they are few, else the token graph."""

    def __init__(self, grammar: Grammar, tokenizer, max_expansions: int):
        self.grammar, self.tokenizer = grammar, tokenizer
        self.phrases = grammar.expand() if grammar.count() <= max_expansions else None
        self.graph: TokenGraph | None = None
        self._spelled: dict[str, list[int]] = {}
        if self.phrases is not None:
            self.tokens = [self.spell_words(p.words) for p in self.phrases]
        else:
            self.graph = TokenGraph(grammar.automaton(), tokenizer)

    def spell_words(self, words) -> list[int]:
        """A phrase's tokens: each word as the tokenizer spells it alone."""
        return [t for w in words for t in self._spelled.setdefault(w, self.tokenizer.encode(w))]

    def spell(self, tokens: list[int]) -> list[int]:
        """Any spelling of a phrase -> `spell_words`' spelling of it."""
        return self.spell_words(self.tokenizer.decode(tokens).split())


_COMPILED: dict[tuple[int, int, int], tuple[Grammar, object, CompiledGrammar]] = {}


def compile_grammar(grammar: Grammar, tokenizer, max_expansions: int = 5000) -> CompiledGrammar:
    """Cached per (grammar, tokenizer, limit) object."""
    key = (id(grammar), id(tokenizer), max_expansions)
    hit = _COMPILED.get(key)
    if hit is None or hit[0] is not grammar or hit[1] is not tokenizer:
        if len(_COMPILED) > 16:
            _COMPILED.clear()
        hit = _COMPILED[key] = (grammar, tokenizer, CompiledGrammar(grammar, tokenizer, max_expansions))
    return hit[2]


# --- scoring -----------------------------------------------------------------------------------

def ctc_log_likelihoods(log_probs: Tensor, sequences: list[list[int]], blank: int = 0,
                        chunk: int = 512) -> Tensor:
    """log p_ctc(sequence | audio) of each sequence, summed over all alignments, for one utterance.

    log_probs `(S, V)` (its valid frames) -> `(N,)`; -inf where a sequence cannot fit in S frames.
    """
    S, V = log_probs.shape
    out = []
    for i in range(0, len(sequences), chunk):
        part = sequences[i:i + chunk]
        lens = torch.tensor([len(s) for s in part], dtype=torch.long)
        targets = torch.zeros(len(part), max(1, int(lens.max())), dtype=torch.long)
        for k, s in enumerate(part):
            targets[k, :len(s)] = torch.tensor(s, dtype=torch.long)
        nll = F.ctc_loss(log_probs[:, None].expand(S, len(part), V), targets,
                         torch.full((len(part),), S, dtype=torch.long), lens, blank=blank, reduction="none",
                         zero_infinity=False)
        out.append(-nll)
    return torch.cat(out) if out else torch.zeros(0)


class GrammarCandidates:
    """The search's candidate filter for a grammar: a hypothesis may say only the tokens that its `TokenGraph`
    state allows, <eos> in a final state, and only <eos> once its utterance's length limit is reached."""

    def __init__(self, graph: TokenGraph, W: int, limits: list[int], eos: int):
        self.graph, self.W, self.limits, self.eos = graph, W, limits, eos
        self.states: list[frozenset] | None = None  # of the N = B x W rows

    def propose(self, log_probs: Tensor, beams: Beams, step: int) -> tuple[Tensor, Tensor, Tensor]:
        graph, eos = self.graph, self.eos
        if self.states is None:
            self.states = [graph.start] * len(beams.sequences)
        allowed = []
        for i, (state, live) in enumerate(zip(self.states, (beams.scores > NEG_INF).tolist())):
            a = (list(graph.next(state)) + ([eos] if graph.is_final(state) else [])) if live else []
            allowed.append(([eos] if eos in a else []) if step >= self.limits[beams.ids[i // self.W]] else a)
        K = max(1, max(len(a) for a in allowed))
        candidates = torch.full((len(allowed), K), eos, dtype=torch.long)
        valid = torch.zeros(len(allowed), K, dtype=torch.bool)
        for i, a in enumerate(allowed):
            candidates[i, :len(a)] = torch.tensor(a, dtype=torch.long)
            valid[i, :len(a)] = True
        candidates, valid = candidates.to(log_probs.device), valid.to(log_probs.device)
        return log_probs.gather(1, candidates), candidates, valid

    def select(self, rows: Tensor, tokens: Tensor, beams: Beams) -> None:
        live = (beams.scores > NEG_INF).tolist()
        self.states = [self.graph.next(self.states[row])[token] if alive else self.graph.start
                       for row, token, alive in zip(rows.tolist(), tokens.tolist(), live)]

    def keep(self, utterances: Tensor, rows: Tensor) -> None:
        self.states = [self.states[r] for r in rows.tolist()]


@torch.no_grad()
def grammar_search(model, enc, graph: TokenGraph, options: MatchOptions, special, shared_vocabulary: bool = True
                   ) -> list[list[list[int]]]:
    """The decoding search over grammar paths only, for all utterances of an `Encoding` at once, scored by the
    decoder joined with CTC prefix scores (by CTC alone where the decoder has its own vocabulary, not
    `shared_vocabulary`: it rescores the results instead): per utterance up to `beam_size` distinct token
    sequences, best first."""
    W = options.beam_size
    limits = [max(1, int(n * options.max_tokens_per_frame)) for n in enc.lengths.tolist()]
    ctc = CTCScorer(options.ctc_weight if shared_vocabulary else 1.0, enc.ctc_log_probs, enc.lengths, special, W)
    lengths = Limits([n + 1 for n in limits], None)  # the step at the limit says <eos> (GrammarCandidates)
    chooser = beam_decoder([ctc], GrammarCandidates(graph, W, limits, special.eos), special, lengths)
    decoder = (DecoderScorer(model, enc.memory, enc.lengths, special, [], W) if shared_vocabulary else
               FlatScorer(enc.ctc_log_probs.shape[-1], enc.memory.device))
    beams = search(decoder, chooser, Beams.start(len(enc), W, enc.memory.device), lengths)
    out = []
    for finished in beams.finished:
        distinct = {tuple(h.tokens): h.tokens for h in sorted(finished, key=lambda h: -h.score)}
        out.append(list(distinct.values())[:W])
    return out


@torch.no_grad()
def match(recognizer, waveforms: Sequence[np.ndarray], grammar: Grammar,
          options: MatchOptions | None = None) -> list[CommandMatch | None]:
    """16 kHz waveforms `(T_i,)`, one utterance each -> the command each one is, or None (rejected).
    `options` default to the model's (`MatchOptions.for_model(recognizer.info)`)."""
    options = options or MatchOptions.for_model(recognizer.info)
    best = match_all(recognizer, waveforms, grammar, options)
    t = options.reject_threshold
    return [m if m is not None and (t is None or m.llr >= t) else None for m in best]


@torch.no_grad()
def match_all(recognizer, waveforms: Sequence[np.ndarray], grammar: Grammar,
              options: MatchOptions | None = None) -> list[CommandMatch | None]:
    """The best grammar phrase of every utterance, never rejected (None only when no phrase fits at all)."""
    options = options or MatchOptions.for_model(recognizer.info)
    from speech_transformer.audio.features import length_sorted_batches

    if recognizer.model.ctc_head is None:
        raise ValueError("grammar matching needs a model with a CTC head")
    compiled = compile_grammar(grammar, recognizer.ctc_tokenizer, options.max_expansions)
    results: list[CommandMatch | None] = [None] * len(waveforms)
    for batch in length_sorted_batches([len(w) for w in waveforms], options.batch_seconds):
        for j, m in zip(batch, _match_batch(recognizer, [waveforms[j] for j in batch], compiled, options)):
            results[j] = m
    return results


def _candidates(model, enc, compiled: CompiledGrammar, options: MatchOptions, special, shared_vocabulary: bool
                ) -> tuple[list[list[list[int]]], list[Tensor], list[list[int]]]:
    """Per utterance: its best grammar token sequences by CTC (all phrases scored, or the grammar search),
    their CTC log-likelihoods, and their phrase indices (-1: found by the search)."""
    log_probs, lengths = enc.ctc_log_probs.cpu(), enc.lengths.cpu()
    searched = None if compiled.phrases is not None else grammar_search(model, enc, compiled.graph, options, special,
                                                                         shared_vocabulary)
    candidates, ctc_scores, phrase_ids = [], [], []
    for b in range(len(enc)):
        lp = log_probs[b, :int(lengths[b])]
        if searched is None:
            ll = ctc_log_likelihoods(lp, compiled.tokens, special.blank)
            top = ll.topk(min(options.rescore, len(ll))).indices.tolist()
            top = [t for t in top if ll[t] > NEG_INF] or top[:1]
            candidates.append([compiled.tokens[t] for t in top])
            ctc_scores.append(ll[top])
            phrase_ids.append(top)
        else:  # each phrase found in the spelling enumeration gives it, however the search spelt it
            canonical = {tuple(compiled.spell(s)): None for s in searched[b]}
            seqs = [list(s) for s in canonical][:options.rescore] or [[]]
            candidates.append(seqs)
            ctc_scores.append(ctc_log_likelihoods(lp, seqs, special.blank))
            phrase_ids.append([-1] * len(seqs))
    return candidates, ctc_scores, phrase_ids


def _match_batch(recognizer, waveforms: list[np.ndarray], compiled: CompiledGrammar,
                 options: MatchOptions) -> list[CommandMatch | None]:
    model, special = recognizer.model, recognizer.ctc_tokenizer.special
    decoder_special = recognizer.tokenizer.special
    enc = recognizer.encode(waveforms)
    log_probs = enc.ctc_log_probs.cpu()
    lengths = enc.lengths.cpu()
    candidates, ctc_scores, phrase_ids = _candidates(model, enc, compiled, options, special,
                                                     recognizer.ctc_tokenizer is recognizer.tokenizer)
    counts = torch.tensor([len(c) for c in candidates])
    flat = [s for c in candidates for s in c]
    spelled = [respell(s, recognizer.ctc_tokenizer, recognizer.tokenizer) for s in flat]  # the decoder's tokens
    if options.ctc_weight < 1.0:
        att = sequence_log_probs(model, enc.memory.repeat_interleave(counts.to(enc.memory.device), dim=0),
                                 enc.lengths.repeat_interleave(counts.to(enc.lengths.device)), spelled,
                                 decoder_special).cpu()
        greedy = [(h.score, len(h.tokens) + 1)
                  for h in attention_search(model, enc.memory, enc.lengths, DecodingOptions(), decoder_special)]
    else:
        att = torch.zeros(len(flat))
        greedy = [(0.0, 1)] * len(candidates)
    out: list[CommandMatch | None] = []
    offset = 0
    lam = options.ctc_weight
    for b, seqs in enumerate(candidates):
        n = int(lengths[b])
        a, d = att[offset:offset + len(seqs)], spelled[offset:offset + len(seqs)]
        offset += len(seqs)
        c = ctc_scores[b]
        joint = lam * c + (1 - lam) * a
        if not torch.isfinite(joint).any():
            out.append(None)
            continue
        k = int(joint.argmax())
        confidence = float(torch.softmax(joint, 0)[k])
        best_path = float(log_probs[b, :n].max(-1).values.sum())
        # the decoder's gap per token (with <eos>), over as many tokens as its free transcript has
        g_score, g_len = greedy[b]
        att_gap = (float(a[k]) / (len(d[k]) + 1) - g_score / g_len) * g_len
        ctc_gap = float(c[k]) - best_path
        llr = min(ctc_gap, att_gap) if lam < 1.0 else ctc_gap
        if phrase_ids[b][k] >= 0:
            phrase = compiled.phrases[phrase_ids[b][k]]
        else:
            phrase = compiled.grammar.parse(recognizer.ctc_tokenizer.decode(seqs[k]).split())
            if phrase is None:  # cannot happen for a path of the grammar's own graph
                out.append(None)
                continue
        command = compiled.grammar.commands[phrase.command]
        out.append(CommandMatch(" ".join(phrase.words), command.action, dict(phrase.slots), confidence,
                                float(joint[k]), llr, llr / max(1, n), phrase.command))
    return out
