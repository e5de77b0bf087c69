"""Scoring: the English normaliser applied before scoring, and WER/CER with alignments (jiwer).

Two normalisers are defined; every report names the one it used.

`english-v1` (the default), applied to reference and hypothesis alike, in this order:
1. Unicode folded to ASCII letters (accents dropped); curly quotes and backticks become `'`.
2. Numbers spelled out with `normalize.spell_out` ("$5" -> "five dollars", "2nd" -> "second",
   "1984" -> "nineteen eighty four"); `&`, `%`, `+`, `@` become words.
3. Lower case.
4. Hyphens, dashes and all other punctuation become spaces; an apostrophe is kept only inside a
   word ("don't", "john's"), so quotes and trailing possessive apostrophes go.
5. Unambiguous contractions are expanded: n't -> " not" (won't -> will not, can't -> can not,
   cannot -> can not), 're -> are, 'll -> will, 've -> have, 'm -> am. The ambiguous 's and 'd are
   kept as written on both sides.
6. Spelling variants mapped to one form (British -> American, e.g. colour -> color,
   counselled -> counseled; okay/ok -> okay; mr -> mister, mrs -> missus).
7. Whitespace collapsed.

`raw`: the text is only split on whitespace (case and punctuation count as errors).

WER = (S + D + I) / N over all reference words of the scored utterances; CER likewise over
characters of the normalised text (single spaces between words count as characters). When a
reference is empty, N is taken as 1 so that the rate stays finite.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import jiwer

from speech_transformer.text.normalize import spell_out

DEFAULT_NORMALIZER = "english-v1"

_CONTRACTIONS = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bcannot\b", "can not"),
    (r"\bshan't\b", "shall not"), (r"\bain't\b", "is not"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'ll\b", " will"), (r"'ve\b", " have"), (r"\bi'm\b", "i am"),
]
_OUR_WORDS = ("colour favour honour labour neighbour humour harbour behaviour rumour vapour armour splendour odour "
              "vigour parlour valour clamour ardour fervour savour endeavour").split()
_ISE_STEMS = ("real organ recogn apolog civil critic sympath emphas author character memor patron scrutin "
              "agon symbol tyrann").split()
_LL_STEMS = "travel cancel counsel quarrel marvel jewel signal label level revel model dishevel".split()
_WORD_VARIANTS = {
    "centre": "center", "centres": "centers", "theatre": "theater", "theatres": "theaters",
    "metre": "meter", "metres": "meters", "litre": "liter", "litres": "liters", "fibre": "fiber",
    "sombre": "somber", "spectre": "specter", "sceptre": "scepter", "calibre": "caliber", "lustre": "luster",
    "grey": "gray", "greyish": "grayish", "programme": "program", "programmes": "programs",
    "defence": "defense", "offence": "offense", "licence": "license", "pretence": "pretense",
    "catalogue": "catalog", "dialogue": "dialog", "analyse": "analyze", "analysed": "analyzed",
    "paralyse": "paralyze", "paralysed": "paralyzed", "judgement": "judgment", "plough": "plow",
    "ploughed": "plowed", "mould": "mold", "moustache": "mustache", "jewellery": "jewelry",
    "woollen": "woolen", "skilful": "skillful", "wilful": "willful", "fulfil": "fulfill",
    "ok": "okay", "mr": "mister", "mrs": "missus",
}


def _variant_map() -> dict[str, str]:
    out = {}
    for word in _OUR_WORDS:
        for end in ("", "s", "ed", "ing", "ful", "able", "ably", "ite", "ites", "er", "ers", "less"):
            out[word + end] = word[:-2] + "r" + end
    for stem in _ISE_STEMS:
        for end in ("e", "es", "ed", "ing", "ation", "ations", "er", "ers"):
            out[stem + "is" + end] = stem + "iz" + end
    for stem in _LL_STEMS:
        for end in ("ed", "ing", "er", "ers", "or", "ors", "ous", "ously"):
            out[stem + "l" + end] = stem + end
    out.update(_WORD_VARIANTS)
    return out


SPELLING_VARIANTS = _variant_map()


def normalize_english(text: str) -> str:
    """The `english-v1` normaliser (see the module docstring)."""
    text = spell_out(text, "&%+@").lower()
    text = re.sub(r"[^a-z0-9']+", " ", text)
    text = re.sub(r"(?<![a-z0-9])'+|'+(?![a-z0-9])", " ", text)
    for pattern, repl in _CONTRACTIONS:
        text = re.sub(pattern, repl, text)
    return " ".join(SPELLING_VARIANTS.get(w, w) for w in text.split())


def normalize_raw(text: str) -> str:
    """The `raw` normaliser: whitespace only."""
    return " ".join(text.split())


NORMALIZERS: dict[str, Callable[[str], str]] = {"english-v1": normalize_english, "raw": normalize_raw}
NORMALIZER_DESCRIPTIONS = {
    "english-v1": "lower case; punctuation and hyphens removed (word-internal apostrophes kept); numbers and "
                  "&%+@ spelled out; n't/'re/'ll/'ve/'m expanded; British spellings and ok/mr/mrs mapped",
    "raw": "whitespace splitting only (case and punctuation are scored)",
}


def get_normalizer(name: str) -> Callable[[str], str]:
    try:
        return NORMALIZERS[name]
    except KeyError:
        raise ValueError(f"unknown normaliser {name!r} (choose from {', '.join(NORMALIZERS)})") from None


class ErrorRates:
    """Error counts -> rates, for dataclasses with substitutions, deletions, insertions, n_words,
    char_errors and n_chars fields."""

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        return self.errors / max(self.n_words, 1)

    @property
    def cer(self) -> float:
        return self.char_errors / max(self.n_chars, 1)


@dataclass
class UtteranceScore(ErrorRates):
    """One scored utterance. `alignment` is a list of (op, ref_word, hyp_word), op in = S D I."""

    ref: str
    hyp: str
    hits: int
    substitutions: int
    deletions: int
    insertions: int
    n_words: int
    char_errors: int
    n_chars: int
    alignment: list[tuple[str, str, str]]


@dataclass
class CorpusScore(ErrorRates):
    """Totals over a set of utterances."""

    normalizer: str
    n_utts: int = 0
    n_words: int = 0  # reference words
    n_chars: int = 0  # reference characters
    hits: int = 0  # words aligned to themselves
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    char_errors: int = 0  # character edits, over all utterances
    sentence_errors: int = 0  # utterances with at least one word error
    utterances: list[UtteranceScore] = field(default_factory=list)
    per_speaker: dict[str, dict] = field(default_factory=dict)
    top_substitutions: list[tuple[str, str, int]] = field(default_factory=list)
    top_insertions: list[tuple[str, int]] = field(default_factory=list)
    top_deletions: list[tuple[str, int]] = field(default_factory=list)

    @property
    def ser(self) -> float:
        return self.sentence_errors / max(self.n_utts, 1)


_OPS = {"equal": "=", "substitute": "S", "delete": "D", "insert": "I"}


def _alignment(ref: list[str], hyp: list[str], chunks) -> list[tuple[str, str, str]]:
    out = []
    for c in chunks:
        op = _OPS[c.type]
        r = ref[c.ref_start_idx:c.ref_end_idx]
        h = hyp[c.hyp_start_idx:c.hyp_end_idx]
        for i in range(max(len(r), len(h))):
            out.append((op, r[i] if i < len(r) else "", h[i] if i < len(h) else ""))
    return out


def score_utterances(refs: Sequence[str], hyps: Sequence[str], normalizer: str = DEFAULT_NORMALIZER,
                     speakers: Iterable[str | None] | None = None, top: int = 20) -> CorpusScore:
    """Normalise both sides, align each pair with jiwer, and total the counts."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    norm = get_normalizer(normalizer)
    refs_n = [norm(r) for r in refs]
    hyps_n = [norm(h) for h in hyps]
    total = CorpusScore(normalizer=normalizer)
    if not refs_n:
        return total
    words = jiwer.process_words(refs_n, hyps_n)
    chars = jiwer.process_characters(refs_n, hyps_n)
    for i, (r, h) in enumerate(zip(refs_n, hyps_n)):
        rw, hw = r.split(), h.split()
        al = _alignment(rw, hw, words.alignments[i])
        counts = Counter(op for op, _, _ in al)
        char_errors = sum(max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
                          for c in chars.alignments[i] if c.type != "equal")
        total.utterances.append(UtteranceScore(r, h, counts["="], counts["S"], counts["D"], counts["I"], len(rw),
                                               char_errors, len(r), al))
    _add_totals(total, total.utterances)
    speakers = list(speakers) if speakers is not None else [None] * len(refs_n)
    by_speaker: dict[str, list[UtteranceScore]] = defaultdict(list)
    for spk, u in zip(speakers, total.utterances):
        if spk is not None:
            by_speaker[str(spk)].append(u)
    for spk in sorted(by_speaker):
        s = CorpusScore(normalizer=normalizer)
        _add_totals(s, by_speaker[spk])
        total.per_speaker[spk] = {"wer": s.wer, "cer": s.cer, "n_utts": s.n_utts, "n_words": s.n_words,
                                  "errors": s.errors}
    subs, ins, dels = Counter(), Counter(), Counter()
    for u in total.utterances:
        for op, r, h in u.alignment:
            if op == "S":
                subs[(r, h)] += 1
            elif op == "I":
                ins[h] += 1
            elif op == "D":
                dels[r] += 1
    total.top_substitutions = [(r, h, n) for (r, h), n in _most_common(subs, top)]
    total.top_insertions = _most_common(ins, top)
    total.top_deletions = _most_common(dels, top)
    return total


def _most_common(counter: Counter, n: int) -> list:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _add_totals(total: CorpusScore, utts: Iterable[UtteranceScore]) -> None:
    for u in utts:
        total.n_utts += 1
        total.n_words += u.n_words
        total.n_chars += u.n_chars
        total.hits += u.hits
        total.substitutions += u.substitutions
        total.deletions += u.deletions
        total.insertions += u.insertions
        total.char_errors += u.char_errors
        total.sentence_errors += u.errors > 0


def wer(ref: str, hyp: str, normalizer: str = DEFAULT_NORMALIZER) -> float:
    """WER of one pair after normalisation."""
    return score_utterances([ref], [hyp], normalizer).wer


def cer(ref: str, hyp: str, normalizer: str = DEFAULT_NORMALIZER) -> float:
    """CER of one pair after normalisation."""
    return score_utterances([ref], [hyp], normalizer).cer
