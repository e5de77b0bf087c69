"""Subword tokenizer: SentencePiece (unigram or BPE) plus the model's special tokens.

Our ids: 0 is the CTC blank, 1 is <sos/eos> (one token starts and ends every decoder sequence,
as in ESPnet), and SentencePiece's pieces follow from 2 on (its <unk> included).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

BLANK_ID = 0
SOS_EOS_ID = 1
NUM_SPECIAL = 2


@dataclass(frozen=True)
class SpecialTokens:
    """What decoding needs to know of a vocabulary: how the decoder starts, how it ends, what it never says."""

    prompt: tuple[int, ...] = (SOS_EOS_ID,)  # the decoder's first inputs
    eos: int = SOS_EOS_ID
    suppress: tuple[int, ...] = (BLANK_ID,)  # never emitted by attention decoding
    blank: int = BLANK_ID  # the CTC blank


class Tokenizer:
    def __init__(self, model_file: str | os.PathLike):
        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as e:
            raise ValueError(f"{model_file}: not a SentencePiece model ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + NUM_SPECIAL

    blank = BLANK_ID
    sos = SOS_EOS_ID
    eos = SOS_EOS_ID
    special = SpecialTokens()
    file_name = "tokenizer.model"  # in a model directory

    def to_config(self) -> dict:
        return {"type": "sentencepiece"}

    def encode(self, text: str) -> list[int]:
        return [i + NUM_SPECIAL for i in self.sp.encode(text)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) - NUM_SPECIAL for i in ids if int(i) >= NUM_SPECIAL])

    def id_to_piece(self, i: int) -> str:
        return {BLANK_ID: "<blank>", SOS_EOS_ID: "<sos/eos>"}.get(i) or self.sp.id_to_piece(i - NUM_SPECIAL)

    def to_bytes(self) -> bytes:
        return self.sp.serialized_model_proto()


def train_tokenizer(texts: Iterable[str], output: str | os.PathLike, vocab_size: int = 256,
                    model_type: str = "unigram") -> Tokenizer:
    """Train SentencePiece on normalised transcripts and write `output` (a .model file)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.txt"
        lines = [t for t in texts if t.strip()]
        if not lines:
            raise ValueError("no text to train the tokenizer on")
        corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
        spm.SentencePieceTrainer.train(
            input=str(corpus), model_prefix=str(Path(tmp) / "sp"), vocab_size=vocab_size - NUM_SPECIAL,
            model_type=model_type, character_coverage=1.0, unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1,
            hard_vocab_limit=False, num_threads=2, minloglevel=2)
        os.replace(Path(tmp) / "sp.model", output)
    return Tokenizer(output)
