"""Word n-gram language models in the ARPA format: `ArpaLM` (a backoff model, log10 probabilities and backoff
weights as ARPA writes them), `read_arpa` / `write_arpa`, perplexity, and the text they are built from.

Words are lower case, as the english-v1 scoring normaliser writes them; `<s>`, `</s>`, `<unk>` as usual.
Building and mixing models: `decoding.word_lm`; pocketsphinx's packaged English LM: `decoding.sphinx_lm`;
the `lm-words` command: `apps.lm_cli`.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from speech_transformer.utils.files import atomic_path

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10_ZERO = -99.0  # how ARPA files write log10(0)

Ngram = tuple[str, ...]


@dataclass
class ArpaLM:
    """A backoff n-gram LM: `ngrams[n - 1][words] = (log10 p(w_n | w_1..w_n-1), log10 backoff(w_1..w_n))`."""

    ngrams: list[dict[Ngram, tuple[float, float]]] = field(default_factory=list)

    @property
    def order(self) -> int:
        return len(self.ngrams)

    @property
    def vocab(self) -> list[str]:
        return [w for (w,) in self.ngrams[0]]

    def counts(self) -> list[int]:
        return [len(level) for level in self.ngrams]

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 P(word | context) with backoff; context is oldest first, only its last order-1 words count."""
        context = tuple(context)[max(0, len(context) - self.order + 1):]
        backoff = 0.0
        for start in range(len(context) + 1):
            h = context[start:]
            entry = self.ngrams[len(h)].get(h + (word,))
            if entry is not None:
                return backoff + entry[0]
            bo = self.ngrams[len(h) - 1].get(h) if h else None
            backoff += bo[1] if bo is not None else 0.0
        unk = self.ngrams[0].get((UNK,))
        return backoff + unk[0] if unk is not None else LOG10_ZERO

    def sentence_log10_prob(self, words: Sequence[str]) -> float:
        """log10 P(words </s> | <s>)."""
        history, total = [BOS], 0.0
        for w in list(words) + [EOS]:
            total += self.log10_prob(w, history)
            history.append(w)
        return total


# ---------------------------------------------------------------------------------------------- ARPA files

def _open_text(path: Path, mode: str):
    return gzip.open(path, mode + "t", encoding="utf-8") if path.suffix == ".gz" else open(path, mode, encoding="utf-8")


def read_arpa(path: str | os.PathLike) -> ArpaLM:
    """An ARPA file (optionally .gz) -> ArpaLM; a malformed file raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ARPA file")
    declared: list[int] = []
    lm = ArpaLM()
    n = 0
    with _open_text(path, "r") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            if line == "\\data\\":
                continue
            m = re.fullmatch(r"ngram (\d+)\s*=\s*(\d+)", line)
            if m and n == 0:
                declared.append(int(m.group(2)))
                continue
            m = re.fullmatch(r"\\(\d+)-grams:", line)
            if m:
                n = int(m.group(1))
                if n != len(lm.ngrams) + 1:
                    raise ValueError(f"{path}:{lineno}: \\{n}-grams section out of order")
                lm.ngrams.append({})
                continue
            if line == "\\end\\":
                break
            if n == 0:
                continue  # header text before \data\
            parts = line.split()
            if len(parts) not in (n + 1, n + 2):
                raise ValueError(f"{path}:{lineno}: expected log-prob, {n} words and an optional backoff")
            try:
                prob = float(parts[0])
                bo = float(parts[n + 1]) if len(parts) == n + 2 else 0.0
            except ValueError:
                raise ValueError(f"{path}:{lineno}: bad number in {line[:60]!r}") from None
            lm.ngrams[n - 1][tuple(parts[1:n + 1])] = (prob, bo)
    if not lm.ngrams:
        raise ValueError(f"{path}: no \\1-grams: section (not an ARPA file)")
    if declared and declared[:lm.order] != lm.counts():
        raise ValueError(f"{path}: header declares {declared} n-grams but the sections hold {lm.counts()}")
    return lm


def write_arpa(lm: ArpaLM, path: str | os.PathLike) -> Path:
    """Write `lm` as ARPA (gzip when the name ends in .gz), atomically; n-grams sorted within each order."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with (gzip.open(tmp, "wt", encoding="utf-8") if path.suffix == ".gz" else open(tmp, "w", encoding="utf-8")) as f:
            f.write("\\data\\\n")
            for n, count in enumerate(lm.counts(), 1):
                f.write(f"ngram {n}={count}\n")
            for n, level in enumerate(lm.ngrams, 1):
                f.write(f"\n\\{n}-grams:\n")
                last = n == lm.order
                lines = []
                for words in sorted(level):
                    prob, bo = level[words]
                    text = f"{max(prob, LOG10_ZERO):.6f}\t{' '.join(words)}"
                    lines.append(text if last else f"{text}\t{bo:.6f}")
                f.write("\n".join(lines))
                f.write("\n")
            f.write("\n\\end\\\n")
    return path


def perplexity(lm: ArpaLM, sentences: Iterable[Sequence[str]]) -> float:
    """Per-word perplexity (</s> counted as a word), as SRILM's ppl."""
    total, words = 0.0, 0
    for s in sentences:
        total += lm.sentence_log10_prob(s)
        words += len(s) + 1
    return 10.0 ** (-total / max(words, 1))


def text_words(text: str) -> list[str]:
    """A transcript or sentence -> lower-case words as the english-v1 normaliser scores them."""
    from speech_transformer.text.normalize import normalize_transcript

    return normalize_transcript(text).lower().split()


def read_corpus(path: str | os.PathLike) -> list[list[str]]:
    """Sentences of a manifest (.tsv/.jsonl: the text column) or a text file (one sentence a line; a leading
    `<id>\\t` is dropped), normalised to words."""
    path = Path(path)
    if path.suffix in (".tsv", ".jsonl"):
        from speech_transformer.audio.manifests import read_manifest

        return [text_words(u.text) for u in read_manifest(path)]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such text file")
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            text = line.rstrip("\n").split("\t")[-1]
            if text.strip():
                out.append(text_words(text))
    return out
