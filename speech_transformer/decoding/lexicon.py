"""Word-level decoding of the CTC head: a lexicon spelled by the model's own tokenizer, a word n-gram LM,
and n-best rescoring with the attention decoder.

Flashlight's lexicon beam search (the decoder behind `torchaudio.models.decoder.ctc_decoder`) walks a trie
of every word's token spellings over the CTC posteriors, scoring

    score = log p_ctc(path) + lm_weight * log10 p_lm(words) + word_score * len(words)

(KenLM gives log10). A SentencePiece word starts with a '▁' piece, so there is no silence token: the blank
stands in for it, and a word ends on its last piece. `rescore` re-ranks the n-best lists with

    total = (1 - rescore_weight) * log p_ctc(y) + rescore_weight * log p_att(y) + lm_weight * lm + word_score * |W|

where p_ctc(y) is the full-sum CTC probability of the token sequence and p_att the teacher-forced
attention decoder (`decoding.sequence_log_probs`), as ESPnet's joint CTC/attention scoring.

Unknown words: a word the tokenizer can only spell with <unk> is left out of the lexicon; a lexicon word
the LM lacks gets the LM's <unk> probability (user words: `oov_log10`); with a finite `unk_score` a spelling
that ends inside the trie may be emitted as an unknown word, written as its token spelling.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from speech_transformer.decoding.arpa import BOS, EOS, UNK, text_words
from speech_transformer.decoding.sphinx_lm import packaged_arpa
from speech_transformer.text.tokenizer import NUM_SPECIAL, SpecialTokens, respell

WORD_RE = re.compile(r"[a-z][a-z']*")
NEG_INF = float("-inf")


@dataclass(frozen=True)
class LexiconConfig:
    """Search settings; all but `nbest` are flashlight's LexiconDecoderOptions."""

    beam_size: int = 50
    beam_size_token: int | None = 16  # tokens tried per frame (best by CTC); None = all
    beam_threshold: float = 25.0  # drop hypotheses this far below the best
    lm_weight: float = 0.5  # times the LM's log10 probability
    word_score: float = 0.0  # added per word
    unk_score: float = NEG_INF  # per unknown word; -inf: only lexicon words
    nbest: int = 10  # distinct word sequences kept per utterance
    log_add: bool = False  # merge equal hypotheses by log-add instead of max


@dataclass
class WordHypothesis:
    words: list[str]
    tokens: list[int]
    score: float  # the search's score: ctc_score + lm_weight * lm_score + word_score * len(words)
    ctc_score: float  # log p of the best CTC path through the spelling (natural log)
    lm_score: float  # log10 p_lm(words), user-word boosts included
    attention_score: float | None = None  # log p_att(tokens + eos), set by rescore
    ctc_sum_score: float | None = None  # full-sum log p_ctc(tokens), set by rescore
    total: float | None = None  # rescoring's score, set by rescore

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass
class Lexicon:
    """word -> its token spellings (token-id tuples), and per-word LM boosts for user words."""

    spellings: dict[str, list[tuple[int, ...]]]
    boosts: dict[str, float] = field(default_factory=dict)  # log10 added to the LM score
    unspellable: list[str] = field(default_factory=list)  # words left out: the tokenizer needs <unk>

    def __len__(self) -> int:
        return len(self.spellings)


def _upper_case_pieces(tokenizer) -> bool:
    pieces = "".join(tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size))
    return sum(c.isupper() for c in pieces) > sum(c.islower() for c in pieces)


def spell(tokenizer, word: str, n: int = 1, upper: bool | None = None) -> list[tuple[int, ...]]:
    """The tokenizer's segmentations of one word, best first (SentencePiece n-best when n > 1); [] when
    every segmentation needs <unk>. Spelled in the tokenizer's case (`upper`; found from its pieces if None)."""
    upper = _upper_case_pieces(tokenizer) if upper is None else upper
    text = word.upper() if upper else word
    spellings = [tuple(tokenizer.encode(text))]
    sp = getattr(tokenizer, "sp", None)
    if n > 1 and sp is not None:
        try:
            spellings += [tuple(i + NUM_SPECIAL for i in ids) for ids in sp.nbest_encode_as_ids(text, n)]
        except RuntimeError:  # BPE models have no n-best
            pass
    out = []
    for s in spellings:
        if s and not any(tokenizer.id_to_piece(i) == "<unk>" for i in s) and s not in out:
            out.append(s)
    return out[:n]


def build_lexicon(words: Sequence[str], tokenizer, n_spellings: int = 1,
                  boosts: dict[str, float] | None = None) -> Lexicon:
    """Spell every word (lower case, [a-z'] only; other entries such as <s> or 'a.' are skipped)."""
    upper = _upper_case_pieces(tokenizer)
    spellings: dict[str, list[tuple[int, ...]]] = {}
    unspellable = []
    for w in words:
        if w in spellings or not WORD_RE.fullmatch(w):
            continue
        s = spell(tokenizer, w, n_spellings, upper)
        if s:
            spellings[w] = s
        else:
            unspellable.append(w)
    return Lexicon(spellings, dict(boosts or {}), unspellable)


def read_user_words(path: str | os.PathLike, default_boost: float = 2.0) -> dict[str, float]:
    """A words file: one word a line, optionally followed by its boost (log10 added to its LM score);
    blank lines and lines starting with # are skipped. Bad lines raise ValueError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such words file")
    out: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.rsplit(None, 1)
            boost = default_boost
            if len(parts) == 2:
                try:
                    boost = float(parts[1])
                    line = parts[0]
                except ValueError:
                    pass
            words = text_words(line)
            if len(words) != 1:
                raise ValueError(f"{path}:{lineno}: {line!r} is {len(words)} words after normalisation; "
                                 "give one word a line")
            if not WORD_RE.fullmatch(words[0]):
                raise ValueError(f"{path}:{lineno}: {words[0]!r} is not a word of letters and apostrophes")
            out[words[0]] = boost
    if not out:
        raise ValueError(f"{path}: no words in the file")
    return out


def arpa_vocab(path: str | os.PathLike) -> list[str]:
    """The unigrams of an ARPA file, read without the rest of it."""
    path = Path(path)
    words, inside = [], False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if line == "\\1-grams:":
                inside = True
            elif inside and (line.startswith("\\") or not line):
                if words:
                    break
            elif inside:
                parts = line.split()
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: bad unigram line")
                words.append(parts[1])
    if not words:
        raise ValueError(f"{path}: no \\1-grams: section (not an ARPA file)")
    return words


def _flashlight():
    try:
        from flashlight.lib.text import decoder as fl
        from flashlight.lib.text.dictionary import Dictionary
    except ImportError:
        raise RuntimeError("lexicon decoding needs flashlight-text (pip install flashlight-text)") from None
    return fl, Dictionary


def _boosted_lm(fl, base, boosts: dict[int, float], replace_scores: dict[int, float]):
    """A flashlight LM that adds `boosts[word index]` to `base`'s scores, and scores the indices in
    `replace_scores` (user words the LM lacks) with that log10 value instead of the LM's <unk>."""

    class BoostedLM(fl.LM):
        def __init__(self):
            fl.LM.__init__(self)

        def start(self, start_with_nothing: bool):
            return base.start(start_with_nothing)

        def score(self, state, index: int):
            if index in replace_scores:  # an unknown word keeps the context, as KenLM's <unk> does not
                return state, replace_scores[index] + boosts.get(index, 0.0)
            new_state, s = base.score(state, index)
            return new_state, s + boosts.get(index, 0.0)

        def finish(self, state):
            return base.finish(state)

    return BoostedLM()


class LexiconDecoder:
    """Trie and LM built once (per process: see `get_decoder`); `decode` runs the search on CTC posteriors."""

    def __init__(self, lexicon: Lexicon, tokenizer, lm_path: str | os.PathLike | None = None,
                 special: SpecialTokens = SpecialTokens(), oov_log10: float = -6.0):
        fl, Dictionary = _flashlight()
        self.fl, self.tokenizer, self.special, self.lexicon = fl, tokenizer, special, lexicon
        started = time.perf_counter()
        self.words = sorted(lexicon.spellings) + [UNK]
        self.word_index = {w: i for i, w in enumerate(self.words)}
        self.word_dict = Dictionary(self.words)
        if lm_path is None:
            self.lm, self.lm_vocab = fl.ZeroLM(), set()
        else:
            self.kenlm = fl.KenLM(str(lm_path), self.word_dict)
            self.lm_vocab = set(arpa_vocab(lm_path))
            missing = {self.word_index[w]: oov_log10 for w in lexicon.boosts if w not in self.lm_vocab}
            boosts = {self.word_index[w]: b for w, b in lexicon.boosts.items() if w in self.word_index}
            self.lm = _boosted_lm(fl, self.kenlm, boosts, missing) if boosts or missing else self.kenlm
        self.trie = fl.Trie(tokenizer.vocab_size, special.blank)
        start = self.lm.start(False)
        for w, spellings in lexicon.spellings.items():
            i = self.word_index[w]
            _, s = self.lm.score(start, i)
            for spelling in spellings:
                self.trie.insert(list(spelling), i, s)
        self.trie.smear(fl.SmearingMode.MAX)
        self.load_seconds = time.perf_counter() - started
        self._decoders: dict[LexiconConfig, object] = {}

    def _decoder(self, config: LexiconConfig):
        if config not in self._decoders:
            fl = self.fl
            options = fl.LexiconDecoderOptions(
                beam_size=config.beam_size, beam_size_token=config.beam_size_token or self.tokenizer.vocab_size,
                beam_threshold=config.beam_threshold, lm_weight=config.lm_weight, word_score=config.word_score,
                unk_score=config.unk_score, sil_score=0.0, log_add=config.log_add,
                criterion_type=fl.CriterionType.CTC)
            self._decoders[config] = fl.LexiconDecoder(options, self.trie, self.lm, self.special.blank,
                                                       self.special.blank, self.word_index[UNK], [], False)
        return self._decoders[config]

    def decode(self, ctc_log_probs: Tensor, lengths: Tensor, config: LexiconConfig = LexiconConfig()
               ) -> list[list[WordHypothesis]]:
        """CTC log-posteriors `(B, S, V)` (float32, cpu) and valid frames `(B,)` -> n-best lists, best first."""
        if ctc_log_probs.dim() != 3 or ctc_log_probs.shape[-1] != self.tokenizer.vocab_size:
            raise ValueError(f"ctc_log_probs must be (B, S, {self.tokenizer.vocab_size}), "
                             f"not {tuple(ctc_log_probs.shape)}")
        decoder = self._decoder(config)
        x = ctc_log_probs.detach().to("cpu", torch.float32)
        out = []
        for b, n in enumerate(lengths.tolist()):
            emissions = x[b, :n].contiguous()
            results = decoder.decode(emissions.data_ptr(), n, emissions.shape[1]) if n > 0 else []
            out.append(self._nbest(results, config))
        return out

    def _nbest(self, results, config: LexiconConfig) -> list[WordHypothesis]:
        seen, out = set(), []
        for r in results:
            tokens = self._tokens(r.tokens)
            words = self._words([w for w in r.words if w >= 0], tokens)
            tokens = self._spelled(words, tokens)
            key = tuple(words)
            if key in seen:
                continue
            seen.add(key)
            out.append(WordHypothesis(words, tokens, r.score, r.emittingModelScore, r.lmScore))
            if len(out) == config.nbest:
                break
        return out or [WordHypothesis([], [], NEG_INF, NEG_INF, 0.0)]

    def _tokens(self, path: Sequence[int]) -> list[int]:
        out, last = [], None
        for t in path:
            if t != last and t != self.special.blank and t >= 0:
                out.append(int(t))
            last = t
        return out

    def _spelled(self, words: list[str], tokens: list[int]) -> list[int]:
        """The tokens of `words`: the path's own where they spell the words, else each word's first spelling
        (the path can merge a word's last token with the next word's first, see the module docstring)."""
        if self.tokenizer.decode(tokens).lower().split() == words or any(w not in self.lexicon.spellings
                                                                          for w in words):
            return tokens
        return [t for w in words for t in self.lexicon.spellings[w][0]]

    def _words(self, indices: list[int], tokens: list[int]) -> list[str]:
        words = [self.words[i] for i in indices]
        if UNK not in words:
            return words
        groups, current = [], []  # an unknown word is written as the token spelling of its group
        for t in tokens:
            if self.tokenizer.id_to_piece(t).startswith("▁") and current:
                groups.append(current)
                current = []
            current.append(t)
        groups += [current] if current else []
        if len(groups) != len(words):
            return [w for w in words if w != UNK]
        return [self.tokenizer.decode(g).lower() if w == UNK else w for w, g in zip(words, groups)]


def ctc_sequence_log_probs(ctc_log_probs: Tensor, lengths: Tensor, sequences: list[list[int]],
                           blank: int = SpecialTokens.blank) -> Tensor:
    """Full-sum log p_ctc(sequence) for one sequence per row of `(N, S, V)` -> `(N,)`."""
    targets = torch.tensor([t for s in sequences for t in s], dtype=torch.long)
    target_lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    loss = F.ctc_loss(ctc_log_probs.transpose(0, 1).float().cpu(), targets, lengths.cpu(), target_lengths,
                      blank=blank, reduction="none", zero_infinity=False)
    return -loss


@torch.no_grad()
def rescore(model, memory: Tensor, lengths: Tensor, ctc_log_probs: Tensor, nbest: list[list[WordHypothesis]],
            rescore_weight: float, lm_weight: float, word_score: float,
            special: SpecialTokens = SpecialTokens(), spell=None,
            decoder_special: SpecialTokens | None = None) -> list[list[WordHypothesis]]:
    """Re-rank each utterance's n-best list (memory `(B, S, D)`, ctc_log_probs `(B, S, V)`) by

    total = (1 - rescore_weight) * ctc_sum + rescore_weight * attention + lm_weight * lm + word_score * |W|.
    `special` is the CTC vocabulary's; where the decoder has its own (a distilled student's), `spell` gives its
    tokens of a hypothesis and `decoder_special` its specials.
    """
    from speech_transformer.decoding.search import sequence_log_probs  # imported late: decoding may import us

    rows = [b for b, hyps in enumerate(nbest) for _ in hyps]
    flat = [h for hyps in nbest for h in hyps]
    if not flat:
        return nbest
    index = torch.tensor(rows, device=memory.device)
    sequences = [h.tokens for h in flat]
    decoder_sequences = [spell(s) for s in sequences] if spell else sequences
    att = sequence_log_probs(model, memory[index], lengths[index], decoder_sequences, decoder_special or special) \
        if rescore_weight > 0 else torch.zeros(len(flat))
    ctc = ctc_sequence_log_probs(ctc_log_probs[index.cpu()], lengths[index].cpu(), sequences, special.blank) \
        if rescore_weight < 1 else torch.zeros(len(flat))
    for h, a, c in zip(flat, att.tolist(), ctc.tolist()):
        h.attention_score, h.ctc_sum_score = a, c
        h.total = (1 - rescore_weight) * c + rescore_weight * a + lm_weight * h.lm_score + word_score * len(h.words)
    return [sorted(hyps, key=lambda h: -h.total) for hyps in nbest]


# ------------------------------------------------------------------------ one decoder per process, for decode()

_DECODERS: dict[tuple, LexiconDecoder] = {}
GENERIC = "generic"


def resolve_lm(lm: str | os.PathLike | None) -> Path | None:
    """'generic' -> the packaged English LM as ARPA (converted once, cached); a path -> itself; None -> no LM."""
    if lm is None or str(lm) in ("", "none"):
        return None
    if str(lm) == GENERIC:
        return packaged_arpa()
    path = Path(lm)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ARPA language model")
    return path


def get_decoder(tokenizer, lm: str | os.PathLike | None = GENERIC, words_file: str | os.PathLike | None = None,
                n_spellings: int = 1, special: SpecialTokens = SpecialTokens()) -> LexiconDecoder:
    """The process's LexiconDecoder for this tokenizer, LM and words file (built on first use).

    The lexicon is the LM's vocabulary plus the user's words (boosted).
    """
    path = resolve_lm(lm)
    key = (str(getattr(tokenizer, "model_file", id(tokenizer))), str(path), str(words_file), n_spellings)
    if key not in _DECODERS:
        boosts = read_user_words(words_file) if words_file else {}
        vocab = [w for w in arpa_vocab(path) if w not in (BOS, EOS, UNK)] if path else []
        _DECODERS[key] = LexiconDecoder(build_lexicon(vocab + list(boosts), tokenizer, n_spellings, boosts),
                                        tokenizer, path, special)
    return _DECODERS[key]


class LexiconSearch:
    """The "lexicon" method as `decoding.decode`'s word search, for one model's tokenizer.

    Reads `DecodingOptions` beam_size, lm_weight, word_score, rescore_weight, nbest, word_lm and words_file
    (see docs/lexicon.md); the decoder (lexicon + LM) is built once per process on first use.
    """

    def __init__(self, tokenizer, decoder_tokenizer=None):
        self.tokenizer = tokenizer  # the CTC head's vocabulary
        self.decoder_tokenizer = decoder_tokenizer or tokenizer  # the rescoring decoder's

    @torch.inference_mode()
    def search(self, model, memory: Tensor, lengths: Tensor, ctc_log_probs: Tensor, options,
               special: SpecialTokens) -> list:
        """Encoder states `(B, S, D)`, lengths `(B,)`, CTC log-posteriors `(B, S, V)` -> one `decoding.Hypothesis`
        per utterance."""
        from speech_transformer.decoding.search import Hypothesis

        decoder = get_decoder(self.tokenizer, options.word_lm, options.words_file, special=special)
        config = LexiconConfig(beam_size=max(options.beam_size, 1), lm_weight=options.lm_weight,
                               word_score=options.word_score, nbest=options.nbest)
        nbest = decoder.decode(ctc_log_probs.cpu(), lengths.cpu(), config)
        if options.rescore_weight > 0:
            own = self.decoder_tokenizer is self.tokenizer
            spell = None if own else (lambda ids: respell(ids, self.tokenizer, self.decoder_tokenizer))
            nbest = rescore(model, memory, lengths, ctc_log_probs, nbest, options.rescore_weight, config.lm_weight,
                            config.word_score, special, spell, None if own else self.decoder_tokenizer.special)
        return [Hypothesis(h[0].tokens, h[0].total if h[0].total is not None else h[0].score) if h
                else Hypothesis([], NEG_INF) for h in nbest]


def lexicon_search(recognizer, encoding, options, special: SpecialTokens | None = None) -> list:
    """An Encoding of `recognizer` -> one `decoding.Hypothesis` per utterance (`LexiconSearch` on its tokenizer)."""
    if encoding.ctc_log_probs is None:
        raise ValueError("lexicon decoding needs a model with a CTC head")
    return recognizer.words.search(recognizer.model, encoding.memory, encoding.lengths, encoding.ctc_log_probs,
                                   options, special or recognizer.ctc_tokenizer.special)
