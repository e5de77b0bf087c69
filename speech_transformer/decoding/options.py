"""Decoding options: which search, and the settings of each search. A model directory stores its preferred
method and the tuned options of every search it was tuned for (config.json "decoding").

    DecodingOptions(method, attention=AttentionOptions, lexicon=LexiconOptions, fallback=FallbackOptions)

"ctc" (CTC greedy) has no settings. Flat names (`beam_size`, `lm_weight`, ...) read and write the options of
the search that `method` chooses, so `DecodingOptions(beam_size=4, ctc_weight=0.3)` is the joint beam search
and `options.override(method="lexicon")` the model's tuned lexicon search. `OPTIONS` is the one table that
maps each setting to its command-line flag, its `evaluate --system` key and its demo control.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

METHODS = ("attention", "ctc", "lexicon")


@dataclass(frozen=True)
class AttentionOptions:
    """The decoder writes the text: greedy (beam 1, no scorer), or beam search adding weighted scorers."""

    beam_size: int = 1
    ctc_weight: float = 0.0  # share of the CTC prefix score; 0 = attention only
    lm_weight: float = 0.0  # weight of the token n-gram LM (shallow fusion)
    length_penalty: float = 1.0  # hypotheses are ranked by score / length**length_penalty
    max_tokens_per_frame: float = 0.5  # max output length = this x encoder frames
    max_length: int = 448
    max_repeats: int = 4  # loop guard: an n-gram may repeat at most this many times in a row
    pre_beam_ratio: float = 1.5  # candidates scored by CTC per hypothesis = ratio x beam

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")

    @property
    def is_greedy(self) -> bool:
        return self.beam_size == 1 and self.ctc_weight == 0.0 and self.lm_weight == 0.0


@dataclass(frozen=True)
class LexiconOptions:
    """Word-level CTC beam search over a lexicon with a word n-gram LM, rescored by the decoder."""

    beam_size: int = 50
    lm_weight: float = 1.0  # weight of the word LM
    word_score: float = 0.0  # bonus per word
    rescore_weight: float = 0.0  # weight of the attention decoder when re-ranking the n-best list
    nbest: int = 10  # candidates kept for rescoring
    word_lm: str | None = "generic"  # "generic" (pocketsphinx's English 3-gram), an ARPA file, or "none"
    words_file: str | None = None  # the user's own words (one a line, optional boost), added boosted

    def __post_init__(self):
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")


@dataclass(frozen=True)
class FallbackOptions:
    """Whisper's temperature fallback and no-speech decision (attention searches): a result that looks like a
    loop (gzip ratio above the threshold) or is unsure (avg log-prob below the threshold) is decoded again,
    sampling at the next temperature."""

    temperatures: tuple[float, ...] = (0.0,)
    best_of: int = 5  # samples per temperature > 0; the most probable one is kept
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6  # models with a no-speech token: above it (and unsure) the result is silence
    seed: int = 0  # of the sampling at temperatures > 0

    def __post_init__(self):
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))  # JSON gives lists
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError("temperatures must be one or more values >= 0")


SEARCHES = {"attention": AttentionOptions, "lexicon": LexiconOptions, "fallback": FallbackOptions}


@dataclass(frozen=True)
class Option:
    """One setting: where it lives, its flag, its `--system` keys, and its demo control (min, max, step)."""

    name: str
    kind: type
    help: str
    keys: tuple[str, ...] = ()  # evaluate --system keys (the name itself always works)
    control: tuple[float, float, float] | None = None
    cli: str | None = ""  # the command-line flag ("": from the name; None: no flag)

    @property
    def flag(self) -> str | None:
        return None if self.cli is None else self.cli or "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """A value from its text (a flag's or a `--system` key's); ValueError when it is not one."""
        if self.kind is tuple:
            return tuple(float(t) for t in text.split(","))
        return self.kind(text)

    @property
    def searches(self) -> tuple[str, ...]:
        return tuple(s for s, cls in SEARCHES.items() if self.name in {f.name for f in fields(cls)})


OPTIONS = {o.name: o for o in [
    Option("method", str, "attention (greedy or beam search), ctc (CTC greedy) or lexicon (words + LM)"),
    Option("beam_size", int, "beam width of the chosen search; attention: 1 with no CTC or LM weight is greedy",
           ("beam",), (1, 16, 1), cli="--beam"),
    Option("ctc_weight", float, "attention: share of the CTC prefix score in beam search, 0..1", ("ctc",),
           (0.0, 1.0, 0.05)),
    Option("lm_weight", float, "weight of the LM: lm.json in beam search, the word LM in lexicon", ("lm",),
           (0.0, 3.0, 0.1)),
    Option("length_penalty", float, "attention: rank by score / length**penalty", cli=None),
    Option("max_tokens_per_frame", float, "attention: output length limit per encoder frame", cli=None),
    Option("max_length", int, "attention: output length limit in tokens", cli=None),
    Option("max_repeats", int, "attention: loop guard (times an n-gram may repeat)", cli=None),
    Option("pre_beam_ratio", float, "attention: candidates scored by CTC = ratio x beam", cli=None),
    Option("word_score", float, "lexicon: bonus per word", ("ws",), (-3.0, 3.0, 0.1)),
    Option("rescore_weight", float, "lexicon: share of the attention decoder in n-best rescoring", ("rescore",),
           (0.0, 1.0, 0.05)),
    Option("nbest", int, "lexicon: candidates kept for rescoring", cli=None),
    Option("word_lm", str, "lexicon: 'generic' (pocketsphinx's English 3-gram), an ARPA file, or 'none'"),
    Option("words_file", str, "lexicon: your own words (names, jargon), one a line, optional boost after a tab; "
           "added to the lexicon without retraining", ("words",), cli="--words"),
    Option("temperatures", tuple, "temperature fallback: decode again, sampling at each next temperature, where "
           "a result loops or is unsure (imported Whisper models: 0,0.2,...,1; 0 turns it off)"),
    Option("best_of", int, "fallback: samples per temperature > 0", cli=None),
    Option("compression_ratio_threshold", float, "fallback: gzip ratio above which a result is a loop", cli=None),
    Option("logprob_threshold", float, "fallback: avg log-prob below which a result is unsure", cli=None),
    Option("no_speech_threshold", float, "no-speech probability above which an unsure result is silence", cli=None),
    Option("seed", int, "fallback: seed of the sampling", cli=None),
]}
SPEC_KEYS = {key: o.name for o in OPTIONS.values() for key in (o.name, *o.keys)}


@dataclass(frozen=True, init=False)
class DecodingOptions:
    method: str = "attention"
    attention: AttentionOptions = field(default_factory=AttentionOptions)
    lexicon: LexiconOptions = field(default_factory=LexiconOptions)
    fallback: FallbackOptions = field(default_factory=FallbackOptions)

    def __init__(self, method: str = "attention", attention: AttentionOptions | None = None,
                 lexicon: LexiconOptions | None = None, fallback: FallbackOptions | None = None, **flat: Any):
        if method not in METHODS:
            raise ValueError(f"unknown decoding method {method!r} (known: {', '.join(METHODS)})")
        parts = {"attention": attention or AttentionOptions(), "lexicon": lexicon or LexiconOptions(),
                 "fallback": fallback or FallbackOptions()}
        for name, value in flat.items():
            search = _search_of(name, method)
            parts[search] = replace(parts[search], **{name: value})
        object.__setattr__(self, "method", method)
        for search, value in parts.items():
            object.__setattr__(self, search, value)

    def __getattr__(self, name: str) -> Any:  # flat names read the chosen search's settings
        if name in OPTIONS and name != "method":
            return getattr(getattr(self, _search_of(name, self.method)), name)
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    @property
    def search(self) -> AttentionOptions | LexiconOptions | None:
        """The settings of the chosen search (None for CTC greedy)."""
        return getattr(self, self.method, None)

    @property
    def is_greedy(self) -> bool:
        return self.method == "attention" and self.attention.is_greedy

    def override(self, **changes: Any) -> "DecodingOptions":
        """These options with the settings given (not None) changed: a flag overrides one setting, not all.
        Only the attention search has `ctc_weight`, only the lexicon search `word_score`, ...: such a setting
        without a `method` chooses its search (`beam=4,ctc=0.3` is the joint beam search whatever a model
        prefers), with that search's stored settings."""
        changes = {k: v for k, v in changes.items() if v is not None}
        method = changes.pop("method", None) or self._implied_method(changes)
        return DecodingOptions(method, self.attention, self.lexicon, self.fallback, **changes)

    def _implied_method(self, changes: dict[str, Any]) -> str:
        for name in changes:
            own = [s for s in OPTIONS[name].searches if s != "fallback"] if name in OPTIONS else []
            if own and self.method not in own and len(own) == 1:
                return own[0]
        return self.method

    def to_dict(self) -> dict[str, Any]:
        """The method and, per search, the settings that differ from the defaults (what a model stores)."""
        out: dict[str, Any] = {"method": self.method}
        for search, cls in SEARCHES.items():
            default = cls()
            diff = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(getattr(self, search)).items()
                    if v != getattr(default, k)}
            if diff:
                out[search] = diff
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DecodingOptions":
        """`to_dict`'s form; flat settings (older model directories) go to the chosen search."""
        d = dict(d or {})
        nested = {s: d.pop(s) for s in SEARCHES if isinstance(d.get(s), dict)}
        unknown = set(d) - set(OPTIONS)
        for search, values in nested.items():
            unknown |= {f"{search}.{k}" for k in set(values) - {f.name for f in fields(SEARCHES[search])}}
        if unknown:
            raise ValueError(f"unknown decoding option(s) {sorted(unknown)} (known: {', '.join(OPTIONS)})")
        parts = {s: SEARCHES[s](**values) for s, values in nested.items()}
        return cls(d.pop("method", "attention"), **parts, **d)

    def describe(self) -> str:
        if self.method == "ctc":
            return "CTC greedy"
        if self.method == "lexicon":
            o = self.lexicon
            return (f"lexicon beam {o.beam_size}, LM weight {o.lm_weight:g}, word score {o.word_score:g}"
                    + (f", rescored by attention x{o.rescore_weight:g}" if o.rescore_weight else ""))
        if self.is_greedy:
            return "greedy"
        o = self.attention
        extra = "".join(f", {name} {w:g}" for name, w in (("CTC weight", o.ctc_weight), ("LM weight", o.lm_weight))
                        if w)
        return f"beam {o.beam_size}{extra}"


def _search_of(name: str, method: str) -> str:
    """Which search a flat setting belongs to: the chosen one where it has it, else the only one that does."""
    if name not in OPTIONS or name == "method":
        raise ValueError(f"unknown decoding option {name!r} (known: {', '.join(OPTIONS)})")
    searches = OPTIONS[name].searches
    return method if method in searches else searches[0]
