"""pocketsphinx's packaged English LM as one of ours: its binary trie read directly, converted to ARPA once.

`read_sphinx_lm(path)` reads pocketsphinx's binary "Trie Language Model" (`en-us.lm.bin`, a generic US-English
3-gram, 72,547 words) into an `ArpaLM`: pocketsphinx's own ARPA writer crashes on it. `packaged_arpa()`
converts it once and caches the ARPA under $SPEECH_TRANSFORMER_CACHE (default ~/.cache/speech_transformer).
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np

from speech_transformer.decoding.arpa import ArpaLM, write_arpa
from speech_transformer.utils.files import cache_dir

SPHINX_HEADER = b"Trie Language Model"
SPHINX_LOG_BASE = 1.0001  # pocketsphinx stores log probabilities in logmath units of this base


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
