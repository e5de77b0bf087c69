"""Tokenizers: text <-> token ids, behind one small interface that decoding and training use.

Two kinds, chosen by the `tokenizer` entry of a model directory's config.json (`load_tokenizer`):
- `Tokenizer` (type "sentencepiece"): ours. Ids 0 is the CTC blank, 1 is <sos/eos> (one token starts and
  ends every decoder sequence, as in ESPnet), and SentencePiece's pieces follow from 2 on (its <unk> included).
- `WhisperTokenizer` (type "whisper"): Whisper's byte-level BPE through tiktoken, for imported Whisper models,
  or (`pruned`) a subset of it for English transcription only, for a student distilled from Whisper
  (`prune_vocabulary` writes it).

Both give `vocab_size`, `special` (what decoding needs: prompt, eos, suppressed ids, blank), `encode`,
`decode`, `id_to_piece` ('▁' marks a word start), `to_config`/`to_bytes` and the `file_name` they are stored as.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from speech_transformer.text.normalize import normalize_transcript, whisper_style

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
    suppress_at_start: tuple[int, ...] = ()  # not emitted as the first token (Whisper: " " and <|endoftext|>)
    no_speech: int | None = None  # Whisper's <|nospeech|>: its probability after the prompt's first token


class TextTokenizer(Protocol):
    """What every tokenizer offers."""

    file_name: str
    special: SpecialTokens

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def id_to_piece(self, i: int) -> str: ...
    def to_config(self) -> dict: ...
    def to_bytes(self) -> bytes: ...


class Tokenizer:
    """SentencePiece (unigram or BPE) after our two special ids."""

    def __init__(self, model_file: str | os.PathLike):
        import sentencepiece as spm  # imported here: the model itself needs only the ids above

        self.model_file = Path(model_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except Exception as e:
            raise ValueError(f"{model_file}: not a SentencePiece model ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size() + NUM_SPECIAL

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
    import sentencepiece as spm

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


# Whisper's language tokens, in vocabulary order (the first 99 in the multilingual models, 100 in large-v3)
LANGUAGES = ("en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg "
             "lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so "
             "af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue").split()
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>


class WhisperTokenizer:
    """Whisper's tokenizer, in the interface of ours: encode/decode text, `special` tokens for decoding.

    Decoding starts from `<|startoftranscript|>` [`<|lang|>` `<|task|>`] `<|notimestamps|>` and ends at
    `<|endoftext|>`; every other special token (timestamps included) is suppressed.
    """

    file_name = "tokenizer.tiktoken"

    def __init__(self, vocab_file: str | os.PathLike, multilingual: bool, num_languages: int = 99,
                 language: str | None = "en", task: str = "transcribe", pruned: bool = False):
        import tiktoken  # optional: the [whisper] extra

        self.vocab_file, self.multilingual, self.num_languages = Path(vocab_file), multilingual, num_languages
        self.language, self.task = (language or "en", task) if multilingual else (None, "transcribe")
        self.pruned = pruned
        if pruned and (self.language, task) != ("en", "transcribe"):
            raise ValueError("a pruned Whisper vocabulary only transcribes English")
        if multilingual and self.language not in LANGUAGES[:num_languages]:
            raise ValueError(f"unsupported language {language!r}; choose from {' '.join(LANGUAGES[:num_languages])}")
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
        ranks = {base64.b64decode(token): int(rank)
                 for token, rank in (line.split() for line in self.vocab_file.read_text().splitlines() if line)}
        names = (PRUNED_SPECIALS if pruned else
                 ["<|endoftext|>", "<|startoftranscript|>", *[f"<|{c}|>" for c in LANGUAGES[:num_languages]],
                  "<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>",
                  "<|notimestamps|>", *[f"<|{i * 0.02:.2f}|>" for i in range(TIMESTAMPS)]])
        self.special_ids = {name: len(ranks) + i for i, name in enumerate(names)}
        self.encoding = tiktoken.Encoding(name=self.vocab_file.stem, explicit_n_vocab=len(ranks) + len(names),
                                          pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_ids)
        self.eot = self.special_ids["<|endoftext|>"]
        prompt = [self.special_ids["<|startoftranscript|>"]]
        if multilingual:
            prompt += [self.special_ids[f"<|{self.language}|>"], self.special_ids[f"<|{self.task}|>"]]
        prompt.append(self.special_ids["<|notimestamps|>"])
        specials = [i for i in self.special_ids.values() if i != self.eot]
        self.special = SpecialTokens(prompt=tuple(prompt), eos=self.eot, blank=self.eot,
                                     suppress=tuple(sorted({*specials, *self.non_speech_tokens()})),
                                     suppress_at_start=(*self.encoding.encode(" "), self.eot),
                                     no_speech=self.special_ids["<|nospeech|>"])

    def non_speech_tokens(self) -> tuple[int, ...]:
        """Tokens of speaker tags and non-speech annotations ("♪♪♪", "[DAVID]", "( LAUGHS )"), suppressed as
        openai-whisper's `suppress_tokens="-1"` does; basic punctuation, and "-" or "'" inside words, stay."""
        encode = self.encoding.encode
        symbols = list('"#()*+/:;<=>@[\\]^_`{|}~「」『』') + "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split()
        miscellaneous = list("♩♪♫♬♭♮♯")  # U+2640..267F: a multi-token symbol's first token is safe to drop
        def whole(tokens: list[int]) -> bool:  # never a lone byte that other characters start with too (" ", 0xE2)
            return len(tokens) == 1 or len(self.encoding.decode_single_token_bytes(tokens[0])) > 1

        result = {tokens[0] for tokens in (encode(" -"), encode(" '")) if len(tokens) == 1}
        for symbol in symbols + miscellaneous:
            for tokens in (encode(symbol), encode(" " + symbol)):
                if len(tokens) == 1 or (symbol in miscellaneous and whole(tokens)):
                    result.add(tokens[0])
        return tuple(sorted(result))

    @classmethod
    def from_config(cls, vocab_file: str | os.PathLike, spec: dict) -> "WhisperTokenizer":
        return cls(vocab_file, spec["multilingual"], spec.get("num_languages", 99), spec.get("language"),
                   spec.get("task", "transcribe"), spec.get("pruned", False))

    def to_config(self) -> dict:
        spec = {"type": "whisper", "multilingual": self.multilingual, "num_languages": self.num_languages,
                "language": self.language, "task": self.task}
        return {**spec, "pruned": True} if self.pruned else spec

    def to_bytes(self) -> bytes:
        return self.vocab_file.read_bytes()

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def decode(self, ids) -> str:
        return self.encoding.decode([int(i) for i in ids if int(i) < self.eot])

    def id_to_piece(self, i: int) -> str:
        """A token as text, '▁' for a leading space (as SentencePiece marks a word start)."""
        if i >= self.eot:
            return next(name for name, j in self.special_ids.items() if j == i)
        text = self.encoding.decode_single_token_bytes(i).decode("utf-8", errors="replace")
        return "▁" + text[1:] if text.startswith(" ") else text


PRUNED_SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|nospeech|>",
                   "<|notimestamps|>"]  # English transcription without timestamps


def prune_vocabulary(tokenizer: WhisperTokenizer, keep: Iterable[int], output: str | os.PathLike
                     ) -> tuple[WhisperTokenizer, list[int]]:
    """Write the subset of a Whisper vocabulary that `keep` names (token ids below `<|endoftext|>`; the 256
    single-byte tokens are always kept, so every text still encodes) as a tokenizer file of its own, and return
    it with `old_ids`: old_ids[new id] is the token's id in `tokenizer` (its special tokens included, so that
    the teacher's embedding rows can be copied). Tokens keep their order, hence their BPE merge priority."""
    single_bytes = (i for i in range(tokenizer.eot) if len(tokenizer.encoding.decode_single_token_bytes(i)) == 1)
    kept = sorted({*single_bytes, *(int(i) for i in keep if int(i) < tokenizer.eot)})
    lines = [f"{base64.b64encode(tokenizer.encoding.decode_single_token_bytes(old)).decode()} {new}"
             for new, old in enumerate(kept)]
    Path(output).write_text("\n".join(lines) + "\n")
    pruned = WhisperTokenizer(output, multilingual=True, num_languages=1, pruned=True)
    return pruned, kept + [tokenizer.special_ids[name] for name in PRUNED_SPECIALS]


def respell(ids: Iterable[int], source: TextTokenizer, target: TextTokenizer) -> list[int]:
    """Tokens of `source` as `target` spells the same words, for a model whose CTC head and decoder have their
    own vocabularies: into Whisper's as Whisper writes (`whisper_style`), into ours as our transcripts are
    (`normalize_transcript`: upper case, no punctuation)."""
    if source is target:
        return list(ids)
    text = source.decode(ids)
    return target.encode(whisper_style(text) if isinstance(target, WhisperTokenizer) else normalize_transcript(text))


TOKENIZERS = {"sentencepiece": Tokenizer, "whisper": WhisperTokenizer}


def tokenizer_class(spec: dict | None) -> type:
    """The tokenizer class that a config.json `tokenizer` entry names (SentencePiece when absent)."""
    kind = (spec or {}).get("type", "sentencepiece")
    if kind not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer type {kind!r} (known: {', '.join(TOKENIZERS)})")
    return TOKENIZERS[kind]


def load_tokenizer(path: str | os.PathLike, spec: dict | None = None) -> TextTokenizer:
    """The tokenizer stored at `path`, of the type (and settings) that `spec` names."""
    cls = tokenizer_class(spec)
    return cls(path) if cls is Tokenizer else cls.from_config(path, spec)
