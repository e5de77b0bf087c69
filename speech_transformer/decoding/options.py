"""Decoding options: which search, and its settings. A model directory stores its preferred ones."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

METHODS = ("attention", "ctc", "lexicon")


@dataclass(frozen=True)
class DecodingOptions:
    method: str = "attention"  # "attention" (greedy or beam), "ctc" (CTC greedy) or "lexicon" (words + LM)
    beam_size: int = 1
    ctc_weight: float = 0.0  # share of the CTC prefix score in beam search; 0 = attention only
    length_penalty: float = 1.0  # hypotheses are ranked by score / length**length_penalty
    max_tokens_per_frame: float = 0.5  # max output length = this x encoder frames
    max_length: int = 448
    max_repeats: int = 4  # loop guard: an n-gram may repeat at most this many times in a row
    pre_beam_ratio: float = 1.5  # candidates scored by CTC per hypothesis = ratio x beam
    lm_weight: float = 0.0  # weight of an external LM: token LM in beam search, word LM in "lexicon"
    word_score: float = 0.0  # "lexicon": bonus per word
    rescore_weight: float = 0.0  # "lexicon": weight of the attention decoder when re-ranking the n-best list
    nbest: int = 10  # "lexicon": candidates kept for rescoring
    word_lm: str | None = "generic"  # "lexicon": "generic" (pocketsphinx's English 3-gram), an ARPA file, "none"
    words_file: str | None = None  # "lexicon": the user's own words (one a line, optional boost), added boosted
    # Whisper-style fallback: a result that looks like a loop (gzip compression ratio above the threshold) or
    # is unsure (avg log-prob below the threshold) is decoded again, sampling at the next temperature
    temperatures: tuple[float, ...] = (0.0,)
    best_of: int = 5  # samples per temperature > 0; the most probable one is kept
    compression_ratio_threshold: float = 2.4
    logprob_threshold: float = -1.0
    no_speech_threshold: float = 0.6  # models with a no-speech token: above it (and unsure) the result is silence
    seed: int = 0  # of the sampling at temperatures > 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown decoding method {self.method!r} (known: {', '.join(METHODS)})")
        if self.beam_size < 1:
            raise ValueError("beam_size must be >= 1")
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError("ctc_weight must be in [0, 1]")
        object.__setattr__(self, "temperatures", tuple(float(t) for t in self.temperatures))  # JSON gives lists
        if not self.temperatures or min(self.temperatures) < 0:
            raise ValueError("temperatures must be one or more values >= 0")

    @property
    def is_greedy(self) -> bool:
        return self.method == "attention" and self.beam_size == 1 and self.ctc_weight == 0.0 and self.lm_weight == 0.0

    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from the defaults (what a model directory stores)."""
        default = DecodingOptions()
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v != getattr(default, k)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "DecodingOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(d or {}) - known
        if unknown:
            raise ValueError(f"unknown decoding option(s) {sorted(unknown)} (known: {', '.join(sorted(known))})")
        return cls(**(d or {}))

    def override(self, **changes: Any) -> "DecodingOptions":
        """These options with the fields given (not None) changed: a flag overrides one field, not all.
        Only the attention search reads `ctc_weight`: changing it without a `method` on options of another
        method switches to "attention" (`beam=4,ctc=0.3` is the joint beam search whatever a model prefers),
        without the word LM's weight (a token LM is another model)."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "ctc_weight" in changes and "method" not in changes and self.method != "attention":
            changes = {"method": "attention", "lm_weight": 0.0, **changes}
        return replace(self, **changes)

    def describe(self) -> str:
        if self.method == "ctc":
            return "CTC greedy"
        if self.method == "lexicon":
            return (f"lexicon beam {self.beam_size}, LM weight {self.lm_weight:g}, word score {self.word_score:g}"
                    + (f", rescored by attention x{self.rescore_weight:g}" if self.rescore_weight else ""))
        if self.is_greedy:
            return "greedy"
        extra = "".join(f", {name} {w:g}" for name, w in (("CTC weight", self.ctc_weight), ("LM weight", self.lm_weight))
                        if w)
        return f"beam {self.beam_size}{extra}"
