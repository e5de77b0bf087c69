"""Word n-gram language models in ARPA form: read/write, a Kneser-Ney builder, the packaged English LM, mixing.

- `ArpaLM`: a backoff n-gram model, log10 probabilities and backoff weights as in the ARPA format, with
  `read_arpa` / `write_arpa` and `log10_prob(word, context)`.
- `build_kneser_ney(sentences, order)`: interpolated modified Kneser-Ney (Chen & Goodman, 1998) with three
  discounts per order estimated from counts of counts, as KenLM's lmplz and SRILM's `-kndiscount -interpolate`.
- `read_sphinx_lm(path)`: pocketsphinx's binary "Trie Language Model" (`en-us.lm.bin`, a generic US-English
  3-gram, 72,547 words), read directly: pocketsphinx's own ARPA writer crashes on it. `packaged_arpa()` converts
  it once and caches the ARPA under $SPEECH_TRANSFORMER_CACHE (default ~/.cache/speech_transformer).
- `interpolate(models, weights)`: linear interpolation of several models into one backoff model, backoff
  weights renormalised (SRILM's `-mix-lm`), so the mixed model is one ARPA file that KenLM loads.

Words are lower case, as the english-v1 scoring normaliser writes them; `<s>`, `</s>`, `<unk>` as usual.
`main()` is the `lm-words` command: build, convert, mix.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import math
import os
import re
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from speech_transformer.files import atomic_path, cache_dir

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
LOG10_ZERO = -99.0  # how ARPA files write log10(0)
SPHINX_HEADER = b"Trie Language Model"
SPHINX_LOG_BASE = 1.0001  # pocketsphinx stores log probabilities in logmath units of this base

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


# --------------------------------------------------------------------------------------- Kneser-Ney builder

def _discounts(count_of_counts: Counter) -> tuple[float, float, float]:
    """Modified KN discounts D1, D2, D3+ from n1..n4 (Chen & Goodman eq. 26); 0.5/1.0/1.5 where undefined."""
    n1, n2, n3, n4 = (count_of_counts.get(k, 0) for k in (1, 2, 3, 4))
    if min(n1, n2, n3, n4) == 0:
        return 0.5, 1.0, 1.5  # too little text for the estimate
    y = n1 / (n1 + 2 * n2)
    return (max(0.0, 1 - 2 * y * n2 / n1), max(0.0, 2 - 3 * y * n3 / n2), max(0.0, 3 - 4 * y * n4 / n3))


def _adjusted_counts(sentences: Iterable[Sequence[str]], order: int) -> list[Counter]:
    """Counts per order: raw counts at the top order and for n-grams starting with <s>; otherwise
    continuation counts N1+(. w_2..w_n) (how many different words precede it)."""
    raw = Counter()
    for words in sentences:
        tokens = [BOS, *words, EOS]
        for i in range(1, len(tokens)):
            raw[tuple(tokens[max(0, i - order + 1):i + 1])] += 1
    counts = [Counter() for _ in range(order)]
    for ngram, c in raw.items():  # ngram of the top order, or shorter at the sentence start
        counts[len(ngram) - 1][ngram] += c
    for n in range(order - 1, 0, -1):  # n-grams of order n+1 -> continuation counts of their suffixes
        for ngram in counts[n]:
            suffix = ngram[1:]
            counts[n - 1][suffix] += 1  # <s> only ever starts an n-gram, so suffixes never do
    return counts


def build_kneser_ney(sentences: Iterable[Sequence[str]], order: int = 3,
                     discounts: Sequence[tuple[float, float, float]] | None = None) -> ArpaLM:
    """Interpolated modified Kneser-Ney over word sentences (each implicitly <s> ... </s>).

    p(w | h) = (c(h w) - D(c(h w))) / c(h) + gamma(h) p(w | h'),  gamma(h) = (D1 N1(h .) + D2 N2(h .) + D3 N3+(h .)) / c(h)
    with c the adjusted counts of `_adjusted_counts`, and at the bottom p(w | ()) interpolated with the uniform
    distribution over the vocabulary (</s> and <unk> included, <s> not), so <unk> gets gamma(()) / |V|.
    The ARPA backoff weight of h is gamma(h): the interpolated form needs no renormalisation.
    `discounts[n - 1]` overrides the estimated (D1, D2, D3+) of order n.
    """
    sentences = [list(s) for s in sentences]
    if not any(sentences):
        raise ValueError("no text to build a language model from")
    if order < 1:
        raise ValueError("order must be >= 1")
    counts = _adjusted_counts(sentences, order)
    vocab = {w for (w,) in counts[0]} | {EOS, UNK}
    vocab.discard(BOS)
    lm = ArpaLM([{} for _ in range(order)])
    lower: dict[Ngram, float] = {}  # probabilities of order n-1, linear
    for n in range(1, order + 1):
        level = counts[n - 1]
        d = discounts[n - 1] if discounts else _discounts(Counter(level.values()))
        totals: dict[Ngram, float] = defaultdict(float)
        kinds: dict[Ngram, list[int]] = defaultdict(lambda: [0, 0, 0])
        for ngram, c in level.items():
            totals[ngram[:-1]] += c
            kinds[ngram[:-1]][min(c, 3) - 1] += 1
        gamma = {h: (d[0] * k[0] + d[1] * k[1] + d[2] * k[2]) / totals[h] for h, k in kinds.items()}
        probs: dict[Ngram, float] = {}
        for ngram, c in level.items():
            h = ngram[:-1]
            below = 1.0 / len(vocab) if n == 1 else lower[ngram[1:]]
            probs[ngram] = (c - d[min(c, 3) - 1]) / totals[h] + gamma[h] * below
        if n == 1:
            for w in vocab - {w for (w,) in level}:
                probs[(w,)] = gamma[()] / len(vocab)
            probs[(BOS,)] = 0.0
        for ngram, p in probs.items():
            lm.ngrams[n - 1][ngram] = (math.log10(p) if p > 0 else LOG10_ZERO, 0.0)
        if n > 1:
            for h, g in gamma.items():
                prob, _ = lm.ngrams[n - 2][h]
                lm.ngrams[n - 2][h] = (prob, math.log10(g) if g > 0 else LOG10_ZERO)
        lower = probs
    return lm


# ------------------------------------------------------------------------------ pocketsphinx's binary trie LM

def _read_bits(mem: np.ndarray, offsets: np.ndarray, nbits: int) -> np.ndarray:
    """Little-endian bit fields of `nbits` at bit `offsets` of byte array `mem` (pocketsphinx's bitarr.c)."""
    byte = offsets >> 3
    value = np.zeros(len(offsets), np.uint64)
    for k in range(8):
        value |= mem[byte + k].astype(np.uint64) << np.uint64(8 * k)
    return (value >> (offsets & 7).astype(np.uint64)) & np.uint64((1 << nbits) - 1)


def _take(data: np.ndarray, pos: int, size: int, path: Path, what: str) -> np.ndarray:
    if pos + size > len(data):
        raise ValueError(f"{path}: truncated Sphinx trie LM (reading {what})")
    return data[pos:pos + size]


def read_sphinx_lm(path: str | os.PathLike) -> ArpaLM:
    """pocketsphinx's binary trie LM (lm_trie.c; KenLM's reversed trie with 16-bit quantised probabilities
    and backoffs above the unigrams) -> ArpaLM, log probabilities converted from base 1.0001 to log10.

    The trie is keyed by the predicted word first, then the history newest-first: path (w, h1, h2) is the
    n-gram "h2 h1 w". Entries pocketsphinx added to make a longer n-gram reachable carry the backed-off
    probability and backoff 0, so writing them as explicit n-grams changes no score.
    """
    path = Path(path)
    data = np.fromfile(path, dtype=np.uint8)
    order, counts, pos = _sphinx_header(data, path)
    tables, pos = _sphinx_quantiser(data, pos, order, path)
    unigrams = np.frombuffer(_take(data, pos, 12 * (int(counts[0]) + 1), path, "unigrams").tobytes(),
                             dtype=[("prob", "<f4"), ("bo", "<f4"), ("next", "<u4")])
    levels, pos = _sphinx_levels(data, pos + unigrams.nbytes, counts, tables, path)
    size = int(np.frombuffer(_take(data, pos, 4, path, "word strings").tobytes(), "<u4")[0])
    strings = _take(data, pos + 4, size, path, "word strings").tobytes().split(b"\0")[:-1]
    words = [w.decode("utf-8", errors="replace") for w in strings]
    if len(words) != counts[0]:
        raise ValueError(f"{path}: {len(words)} word strings for {counts[0]} unigrams")
    return _sphinx_to_arpa(words, unigrams, levels, path)


def _sphinx_header(data: np.ndarray, path: Path) -> tuple[int, np.ndarray, int]:
    """(order, n-gram counts, position after them)."""
    if data[:len(SPHINX_HEADER)].tobytes() != SPHINX_HEADER:
        raise ValueError(f"{path}: not a Sphinx trie LM (no {SPHINX_HEADER.decode()!r} header)")
    pos = len(SPHINX_HEADER)
    order = int(_take(data, pos, 1, path, "order")[0])
    if not 1 <= order <= 5:
        raise ValueError(f"{path}: unsupported n-gram order {order}")
    counts = np.frombuffer(_take(data, pos + 1, 4 * order, path, "counts").tobytes(), "<u4").astype(np.int64)
    return order, counts, pos + 1 + 4 * order


def _sphinx_quantiser(data: np.ndarray, pos: int, order: int, path: Path
                      ) -> tuple[list[tuple[np.ndarray, np.ndarray]], int]:
    """The (probability bins, backoff bins) of each order >= 2, and the position after them."""
    if order == 1:
        return [], pos
    pos += 4  # former quantisation type
    bins = 1 << 16
    values = np.frombuffer(_take(data, pos, 4 * ((order - 2) * 2 * bins + bins), path, "quantiser").tobytes(), "<f4")
    tables = [(values[2 * i * bins:(2 * i + 1) * bins], values[(2 * i + 1) * bins:(2 * i + 2) * bins])
              for i in range(order - 2)]
    tables.append((values[(order - 2) * 2 * bins:], np.zeros(bins, np.float32)))
    return tables, pos + values.nbytes


def _sphinx_levels(data: np.ndarray, pos: int, counts: np.ndarray, tables: list[tuple[np.ndarray, np.ndarray]],
                   path: Path) -> tuple[list[tuple], int]:
    """Per order >= 2: (word, prob, backoff, next) arrays over its bit-packed trie entries."""
    order, word_bits = len(counts), int(counts[0]).bit_length()
    levels = []
    for n in range(2, order + 1):
        entries = int(counts[n - 1])
        next_bits = int(counts[n]).bit_length() if n < order else 0
        total = word_bits + (32 if n < order else 16) + next_bits
        size = ((1 + entries) * total + 7) // 8 + 8
        mem = _take(data, pos, size, path, f"{n}-grams")
        pos += size
        at = np.arange(entries + 1, dtype=np.int64) * total
        word = _read_bits(mem, at[:-1], word_bits).astype(np.int64)
        prob_table, bo_table = tables[n - 2]
        if n < order:  # 16 bits backoff code, then 16 bits probability code
            bo = bo_table[_read_bits(mem, at[:-1] + word_bits, 16).astype(np.int64)]
            prob = prob_table[_read_bits(mem, at[:-1] + word_bits + 16, 16).astype(np.int64)]
            nxt = _read_bits(mem, at + word_bits + 32, next_bits).astype(np.int64)
        else:
            prob = prob_table[_read_bits(mem, at[:-1] + word_bits, 16).astype(np.int64)]
            bo, nxt = np.zeros(entries, np.float32), None
        levels.append((word, prob, bo, nxt))
    return levels, pos


def _sphinx_to_arpa(words: list[str], unigrams: np.ndarray, levels: list[tuple], path: Path) -> ArpaLM:
    """Walk the trie from the unigrams down, naming every reachable entry's n-gram."""
    scale = math.log10(SPHINX_LOG_BASE)
    lm = ArpaLM([{} for _ in range(len(levels) + 1)])
    uni_prob = unigrams["prob"][:-1].astype(np.float64) * scale
    uni_bo = unigrams["bo"][:-1].astype(np.float64) * scale
    for i, w in enumerate(words):
        lm.ngrams[0][(w,)] = (float(uni_prob[i]), float(uni_bo[i]))
    # parents[i] = the trie path (reversed n-gram, as word ids) of entry i of the current level
    parents = np.arange(len(words))[:, None]
    starts = unigrams["next"].astype(np.int64)
    for n, (word, prob, bo, nxt) in enumerate(levels, 2):
        # pocketsphinx sizes each level by an upper bound: entries past the last pointer are unreachable
        ends = starts[:len(parents) + 1]
        if ends[0] != 0 or np.any(np.diff(ends) < 0) or ends[-1] > len(word):
            raise ValueError(f"{path}: bad {n}-gram pointers")
        reach = int(ends[-1])
        owner = np.repeat(np.arange(len(parents)), np.diff(ends))
        word, prob, bo = word[:reach], prob[:reach], bo[:reach]
        nxt = nxt[:reach + 1] if nxt is not None else None
        paths = np.concatenate([parents[owner], word[:, None]], axis=1)
        probs, bos = prob.astype(np.float64) * scale, bo.astype(np.float64) * scale
        level = lm.ngrams[n - 1]
        for p, b, ids in zip(probs.tolist(), bos.tolist(), paths[:, ::-1].tolist()):
            level[tuple(words[i] for i in ids)] = (p, b)
        parents, starts = paths, nxt
    return lm


def packaged_lm_path() -> Path:
    """pocketsphinx's `en-us.lm.bin` (the [pocketsphinx] extra)."""
    try:
        import pocketsphinx
    except ImportError:
        raise RuntimeError("the generic English LM comes with pocketsphinx: pip install pocketsphinx") from None
    return Path(pocketsphinx.get_model_path()) / "en-us" / "en-us.lm.bin"


def _file_key(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def packaged_arpa(source: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The packaged LM (or another Sphinx trie LM) as ARPA, converted once into the cache folder."""
    source = Path(source) if source else packaged_lm_path()
    target = Path(cache or cache_dir()) / f"{source.stem}-{_file_key(source)}.arpa"
    if not target.is_file():
        write_arpa(read_sphinx_lm(source), target)
    return target


# ------------------------------------------------------------------------------------------------ mixing

def _probs_of_context(lm: ArpaLM, context: Ngram, words: Iterable[str], known: set[str], share: float
                      ) -> dict[str, float]:
    """p(w | context) for each w; a word `lm` does not know gets `share` of its <unk> probability."""
    out = {}
    for w in words:
        if w in known and w != UNK:
            out[w] = 10.0 ** lm.log10_prob(w, context)
        else:
            out[w] = 10.0 ** lm.log10_prob(UNK, context) * share
    return out


def interpolate(models: Sequence[ArpaLM], weights: Sequence[float]) -> ArpaLM:
    """p(w | h) = sum_i weights[i] p_i(w | h) on the union of all n-grams, backoff weights renormalised:

    bo(h) = (1 - sum_{w: h w listed} p(w | h)) / (1 - sum_{w: h w listed} p(w | h')),
    so every context still sums to one and unlisted n-grams back off as in an ordinary ARPA model.
    A word that one model lacks gets from it an equal share of that model's <unk> probability.
    """
    if len(models) != len(weights) or not models:
        raise ValueError("one weight per model")
    if abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise ValueError(f"mixture weights must be >= 0 and sum to 1, not {list(weights)}")
    order = max(m.order for m in models)
    mixed = ArpaLM([{} for _ in range(order)])
    union = set().union(*(m.vocab for m in models))
    known = [set(m.vocab) for m in models]
    # words a model lacks share its <unk> mass equally with <unk> itself, so each model still sums to one
    shares = [1.0 / (len(union - k - {UNK}) + 1) for k in known]
    for n in range(1, order + 1):
        by_context: dict[Ngram, set[str]] = defaultdict(set)
        for m in models:
            if n <= m.order:
                for ngram in m.ngrams[n - 1]:
                    by_context[ngram[:-1]].add(ngram[-1])
        for h, words in by_context.items():
            total = dict.fromkeys(words, 0.0)
            for m, lam, k, share in zip(models, weights, known, shares):
                for w, p in _probs_of_context(m, h, words, k, share).items():
                    total[w] += lam * p
            for w, p in total.items():
                mixed.ngrams[n - 1][h + (w,)] = (math.log10(p) if p > 0 else LOG10_ZERO, 0.0)
        if n > 1:
            for h, words in by_context.items():
                seen = sum(10.0 ** mixed.ngrams[n - 1][h + (w,)][0] for w in words if w != BOS)
                below = sum(10.0 ** mixed.log10_prob(w, h[1:]) for w in words if w != BOS)
                prob, _ = mixed.ngrams[n - 2][h]
                bo = (1.0 - seen) / (1.0 - below) if below < 1.0 and seen < 1.0 else 1e-99
                mixed.ngrams[n - 2][h] = (prob, math.log10(max(bo, 1e-99)))
    return mixed


def perplexity(lm: ArpaLM, sentences: Iterable[Sequence[str]]) -> float:
    """Per-word perplexity (</s> counted as a word), as SRILM's ppl."""
    total, words = 0.0, 0
    for s in sentences:
        total += lm.sentence_log10_prob(s)
        words += len(s) + 1
    return 10.0 ** (-total / max(words, 1))


# ------------------------------------------------------------------------------------------------- text

def text_words(text: str) -> list[str]:
    """A transcript or sentence -> lower-case words as the english-v1 normaliser scores them."""
    from speech_transformer.text.normalize import normalize_transcript

    return normalize_transcript(text).lower().split()


def read_corpus(path: str | os.PathLike) -> list[list[str]]:
    """Sentences of a manifest (.tsv/.jsonl: the text column) or a text file (one sentence a line; a leading
    `<id>\\t` is dropped), normalised to words."""
    path = Path(path)
    if path.suffix in (".tsv", ".jsonl"):
        from speech_transformer.training.data import read_manifest

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


def main(argv: list[str] | None = None) -> int:
    """`lm-words`: build a word LM from text, convert the packaged LM, or mix both into one ARPA file."""
    p = argparse.ArgumentParser(prog="speech-transformer lm-words", description=main.__doc__)
    p.add_argument("output", help="ARPA file to write (.arpa or .arpa.gz)")
    p.add_argument("--text", nargs="*", default=[], help="manifests (.tsv/.jsonl) or text files to build from")
    p.add_argument("--order", type=int, default=3)
    p.add_argument("--generic", action="store_true", help="mix in the packaged generic English LM")
    p.add_argument("--generic-weight", type=float, default=0.5, help="its interpolation weight (0..1)")
    args = p.parse_args(argv)
    if not args.text and not args.generic:
        p.error("give --text and/or --generic")
    models, weights = [], []
    if args.text:
        sentences = [s for path in args.text for s in read_corpus(path)]
        models.append(build_kneser_ney(sentences, args.order))
        weights.append(1.0 - args.generic_weight if args.generic else 1.0)
        print(f"in-domain: {len(sentences)} sentences, n-grams {models[-1].counts()}", file=sys.stderr)
    if args.generic:
        models.append(read_arpa(packaged_arpa()))
        weights.append(args.generic_weight if args.text else 1.0)
    lm = models[0] if len(models) == 1 else interpolate(models, weights)
    write_arpa(lm, args.output)
    print(f"{args.output}: n-grams {lm.counts()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
