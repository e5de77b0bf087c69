"""CTranslate2 (faster-whisper) Whisper folders, read from the bytes: no ctranslate2, nothing unpickled.

A faster-whisper model folder holds `model.bin` (CTranslate2's binary format), `config.json` (suppression
lists, language ids) and `vocabulary.txt`/`vocabulary.json` (+ `tokenizer.json`). `model.bin`, as written by
`ctranslate2.specs.model_spec.ModelSpec._serialize` and read by `src/models/model.cc`, is little-endian:

    u32 binary version (<= 6)
    [version >= 2] string spec name ("WhisperSpec"), u32 spec revision
    u32 number of variables, then for each:
        string name; u8 rank; u32 dims[rank]
        [version >= 4] u8 dtype id (float32, int8, int16, int32, float16, bfloat16), u32 number of bytes
        [version <  4] u8 item size, u32 number of items
        the bytes (C order)
    [version >= 3] u32 number of aliases, then pairs of strings (alias, target)

    string = u16 length (terminating NUL included), the UTF-8 bytes, NUL

Quantised weights (int8, int16) come with `<name>_scale`: int8 rows are divided by their per-row scale
(conv weights flattened to rows first), int16 by one scale. An alias also aliases its `_scale`.

WhisperSpec names (`/`-separated; `linear_0` of self-attention holds q, k, v stacked on rows, with a zero
block for Whisper's missing key bias; cross-attention's `linear_0` is q and `linear_1` is k, v stacked):

    encoder/conv{1,2}/{weight,bias}  encoder/position_encodings/encodings  encoder/layer_norm/{gamma,beta}
    encoder/layer_N/self_attention/{layer_norm, linear_0 (qkv), linear_1 (out)}   .../ffn/{layer_norm, linear_0, linear_1}
    decoder/embeddings/weight  decoder/position_encodings/encodings  decoder/layer_norm  decoder/projection (tied)
    decoder/layer_N/self_attention/...  decoder/layer_N/attention/{layer_norm, linear_0 (q), linear_1 (kv), linear_2}

`to_openai_state_dict` puts them under openai-whisper's names, so the import continues on the path that
openai `.pt` files take.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Iterable, Sequence

import numpy as np
import torch

MAX_BINARY_VERSION = 6
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")  # CTranslate2's DataType ids, in order
_NUMPY = {"float32": np.float32, "int8": np.int8, "int16": np.int16, "int32": np.int32, "float16": np.float16,
          "bfloat16": np.uint16}
_OLD_ITEM_SIZES = {4: "float32", 2: "int16", 1: "int8"}  # how version < 4 files name their dtypes


class CTranslate2Error(ValueError):
    """A model.bin (or its folder) is truncated, of an unknown version, or not a Whisper model."""


class Truncated(CTranslate2Error):
    """The bytes end before what the format says comes next."""


@dataclass
class ModelBin:
    """The contents of one model.bin: raw variables (their stored dtype) and aliases."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, torch.Tensor] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)

    def dequantized(self) -> dict[str, torch.Tensor]:
        """Every variable and alias as float32 (integers kept for rank-0 flags), `_scale` variables consumed."""
        out = {}
        names = [n for n in self.variables if not n.endswith("_scale")] + list(self.aliases)
        for name in names:
            target = self.aliases.get(name, name)
            if target not in self.variables:
                raise CTranslate2Error(f"alias {name!r} names a missing variable {target!r}")
            out[name] = _dequantize(target, self.variables[target], self.variables.get(target + "_scale"))
        return out


class _Stream:
    """Several files read as one (a model.bin split into parts), with exact-length reads."""

    def __init__(self, files: Sequence[str | os.PathLike]):
        self.names = [str(f) for f in files]
        self.files: list[BinaryIO] = []
        self.position = 0

    def __enter__(self) -> "_Stream":
        try:
            self.files = [open(f, "rb") for f in self.names]
        except OSError:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for f in self.files:
            f.close()

    def read(self, n: int) -> bytes:
        chunks, wanted = [], n
        while wanted and self.files:
            chunk = self.files[0].read(wanted)
            if not chunk:
                self.files.pop(0).close()
                continue
            chunks.append(chunk)
            wanted -= len(chunk)
        data = b"".join(chunks)
        if len(data) != n:
            raise Truncated(f"{' + '.join(self.names)}: truncated, wanted {n} bytes at offset "
                                   f"{self.position}, got {len(data)}")
        self.position += n
        return data

    def unpack(self, fmt: str) -> tuple:
        return struct.unpack("<" + fmt, self.read(struct.calcsize("<" + fmt)))

    def string(self) -> str:
        (length,) = self.unpack("H")
        raw = self.read(length)
        if not raw or raw[-1] != 0:
            raise CTranslate2Error(f"{self.names[0]}: bad string at offset {self.position - length}")
        return raw[:-1].decode("utf-8")

    def at_end(self) -> bool:
        return all(f.read(1) == b"" for f in self.files)


def read_model_bin(files: str | os.PathLike | Sequence[str | os.PathLike]) -> ModelBin:
    """Parse a CTranslate2 model.bin (or its parts, concatenated on the fly) into raw tensors."""
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    with _Stream(files) as s:
        (version,) = s.unpack("I")
        if not 1 <= version <= MAX_BINARY_VERSION:
            raise CTranslate2Error(f"{files[0]}: binary version {version} is not one this reader knows "
                                   f"(1..{MAX_BINARY_VERSION}); not a CTranslate2 model.bin?")
        spec, revision = (s.string(), s.unpack("I")[0]) if version >= 2 else ("", 1)
        model = ModelBin(version, spec, revision)
        (count,) = s.unpack("I")
        for i in range(count):
            try:
                name = s.string()
                (rank,) = s.unpack("B")
                shape = s.unpack(f"{rank}I")
                dtype, size = _variable_type(s, version, name)
                model.variables[name] = _tensor(s.read(size), dtype, shape, name, files[0])
            except Truncated as e:
                raise Truncated(f"{e}: the file ends in variable {i + 1} of {count} (a part missing or "
                                f"cut short?)") from None
        if version >= 3:
            (count,) = s.unpack("I")
            for _ in range(count):
                alias = s.string()
                model.aliases[alias] = s.string()
        if not s.at_end():
            raise CTranslate2Error(f"{files[-1]}: trailing bytes after offset {s.position}")
    return model


def _variable_type(s: _Stream, version: int, name: str) -> tuple[str, int]:
    """(dtype name, number of bytes) of the variable whose header `s` is reading."""
    if version >= 4:
        type_id, size = s.unpack("BI")
        if type_id >= len(DTYPES):
            raise CTranslate2Error(f"{s.names[0]}: variable {name!r} has unknown dtype id {type_id}")
        return DTYPES[type_id], size
    item_size, items = s.unpack("BI")
    if item_size not in _OLD_ITEM_SIZES:
        raise CTranslate2Error(f"{s.names[0]}: variable {name!r} has unknown item size {item_size}")
    return _OLD_ITEM_SIZES[item_size], item_size * items


def _tensor(raw: bytes, dtype: str, shape: tuple[int, ...], name: str, source) -> torch.Tensor:
    array = np.frombuffer(raw, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<"))
    if array.size != int(np.prod(shape)):
        raise CTranslate2Error(f"{source}: variable {name!r} has {array.size} {dtype} values for shape {shape}")
    tensor = torch.from_numpy(array.astype(array.dtype.newbyteorder("="))).reshape(shape)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _dequantize(name: str, value: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """float32 of a stored variable: int8 rows / per-row scale, int16 / one scale, floats cast."""
    if value.dtype in (torch.int8, torch.int16) and value.dim() > 0 and name.endswith("weight"):
        if scale is None:
            raise CTranslate2Error(f"quantised variable {name!r} has no {name}_scale")
        rows = value.reshape(value.shape[0], -1).float()
        scale = scale.float().reshape(-1, 1) if scale.numel() > 1 else scale.float().reshape(1, 1)
        return (rows / scale).reshape(value.shape)
    return value.float() if value.is_floating_point() else value


# --- WhisperSpec -> openai-whisper names --------------------------------------------------------------

_LINEAR = {"weight": "weight", "bias": "bias"}
_NORM = {"gamma": "weight", "beta": "bias"}


def _layer_rules(side: str) -> list[tuple[str, str]]:
    """(WhisperSpec pattern, openai name) for one block list; `{q,k,v}` marks a fused matrix to split."""
    rules = [(rf"{side}/layer_(\d+)/self_attention/layer_norm/(gamma|beta)", rf"{side}.blocks.\1.attn_ln.NORM"),
             (rf"{side}/layer_(\d+)/self_attention/linear_0/(weight|bias)", rf"{side}.blocks.\1.attn.{{q,k,v}}.\2"),
             (rf"{side}/layer_(\d+)/self_attention/linear_1/(weight|bias)", rf"{side}.blocks.\1.attn.out.\2"),
             (rf"{side}/layer_(\d+)/ffn/layer_norm/(gamma|beta)", rf"{side}.blocks.\1.mlp_ln.NORM"),
             (rf"{side}/layer_(\d+)/ffn/linear_0/(weight|bias)", rf"{side}.blocks.\1.mlp.0.\2"),
             (rf"{side}/layer_(\d+)/ffn/linear_1/(weight|bias)", rf"{side}.blocks.\1.mlp.2.\2")]
    if side == "decoder":
        rules += [(r"decoder/layer_(\d+)/attention/layer_norm/(gamma|beta)", r"decoder.blocks.\1.cross_attn_ln.NORM"),
                  (r"decoder/layer_(\d+)/attention/linear_0/(weight|bias)", r"decoder.blocks.\1.cross_attn.query.\2"),
                  (r"decoder/layer_(\d+)/attention/linear_1/(weight|bias)", r"decoder.blocks.\1.cross_attn.{k,v}.\2"),
                  (r"decoder/layer_(\d+)/attention/linear_2/(weight|bias)", r"decoder.blocks.\1.cross_attn.out.\2")]
    return rules


WHISPER_RULES = [
    (r"encoder/conv([12])/(weight|bias)", r"encoder.conv\1.\2"),
    (r"encoder/position_encodings/encodings", "encoder.positional_embedding"),
    (r"encoder/layer_norm/(gamma|beta)", "encoder.ln_post.NORM"),
    (r"decoder/embeddings/weight", "decoder.token_embedding.weight"),
    (r"decoder/position_encodings/encodings", "decoder.positional_embedding"),
    (r"decoder/layer_norm/(gamma|beta)", "decoder.ln.NORM"),
    *_layer_rules("encoder"), *_layer_rules("decoder"),
]
_IGNORED = re.compile(r"decoder/projection/weight")  # tied to decoder/embeddings/weight (checked)
_PARTS = {"q": "query", "k": "key", "v": "value"}


def to_openai_state_dict(variables: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Dequantised WhisperSpec variables -> openai-whisper's state dict (fused q/k/v split; rank-0 flags dropped)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in variables.items():
        if tensor.dim() == 0 or _IGNORED.fullmatch(name):
            continue
        for pattern, template in WHISPER_RULES:
            m = re.fullmatch(pattern, name)
            if m:
                leaf = m.groups()[-1] if m.groups() else ""
                target = m.expand(template).replace("NORM", _NORM.get(leaf, ""))
                out.update(_split(target, tensor))
                break
        else:
            raise CTranslate2Error(f"{source}: unexpected variable {name!r} (not a WhisperSpec model?)")
    projection = variables.get("decoder/projection/weight")
    if projection is not None and not torch.equal(projection, variables["decoder/embeddings/weight"]):
        raise CTranslate2Error(f"{source}: decoder/projection/weight is not the token embedding, which Whisper ties")
    return out


def _split(target: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """`a.{q,k,v}.weight` -> equal row blocks under a.query/a.key/a.value; the key's bias (zeros) is dropped."""
    m = re.search(r"\{([a-z,]+)\}", target)
    if not m:
        return {target: tensor}
    parts = m.group(1).split(",")
    out = {}
    for part, block in zip(parts, tensor.chunk(len(parts), dim=0)):
        name = target.replace(m.group(0), _PARTS[part])
        if not (part == "k" and name.endswith(".bias")):
            out[name] = block.contiguous()
    return out


@dataclass(frozen=True)
class WhisperDims:
    """openai-whisper's ModelDimensions, from the shapes of the variables."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int


WHISPER_FLAGS = {"decoder/pre_norm": 1, "decoder/activation": 3, "decoder/scale_embeddings": 0, "decoder/alibi": 0}
# pre-LayerNorm blocks, exact (erf) GELU, unscaled token embeddings, learned positions: what whisper_config sets


def check_flags(variables: dict[str, torch.Tensor], source: str) -> None:
    """The scalar switches that WhisperSpec stores must be the ones our Whisper configuration implements."""
    for name, expected in WHISPER_FLAGS.items():
        if name in variables and int(variables[name]) != expected:
            raise CTranslate2Error(f"{source}: {name} is {int(variables[name])}, a Whisper model has {expected}")


def whisper_dims(variables: dict[str, torch.Tensor], source: str) -> WhisperDims:
    """Model dimensions of a WhisperSpec model: widths from the weights, heads from `*/num_heads`."""
    try:
        conv1 = variables["encoder/conv1/weight"]  # (d, n_mels, 3)
        layers = {side: 1 + max(int(m.group(1)) for n in variables
                                if (m := re.match(rf"{side}/layer_(\d+)/", n))) for side in ("encoder", "decoder")}
        heads = {side: int(variables[f"{side}/num_heads"]) for side in ("encoder", "decoder")}
        return WhisperDims(
            n_mels=conv1.shape[1], n_audio_ctx=variables["encoder/position_encodings/encodings"].shape[0],
            n_audio_state=conv1.shape[0], n_audio_head=heads["encoder"], n_audio_layer=layers["encoder"],
            n_vocab=variables["decoder/embeddings/weight"].shape[0],
            n_text_ctx=variables["decoder/position_encodings/encodings"].shape[0],
            n_text_state=variables["decoder/embeddings/weight"].shape[1], n_text_head=heads["decoder"],
            n_text_layer=layers["decoder"])
    except (KeyError, ValueError) as e:
        raise CTranslate2Error(f"{source}: not a complete Whisper model (missing {e})") from None


# --- folders ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FasterWhisperFolder:
    """Where a faster-whisper model lives: `model.bin` (or its parts, in order) and the folder of its JSON files."""

    directory: Path
    model_files: tuple[Path, ...]

    @classmethod
    def at(cls, directory: str | os.PathLike) -> "FasterWhisperFolder":
        """A folder with model.bin, or with model.bin.part1, .part2, ... (concatenated in number order)."""
        directory = Path(directory)
        if (directory / "model.bin").is_file():
            return cls(directory, (directory / "model.bin",))
        parts = sorted(directory.glob("model.bin.part*"), key=lambda p: int(re.sub(r"\D", "", p.suffix) or 0))
        if not parts:
            raise CTranslate2Error(f"{directory}: no model.bin (not a faster-whisper / CTranslate2 folder)")
        return cls(directory, tuple(parts))

    def __str__(self) -> str:
        return str(self.model_files[0] if len(self.model_files) == 1 else self.directory)

    def materialize(self, root: str | os.PathLike) -> Path:
        """A real folder with one model.bin (what ctranslate2 loads): this one, or the parts concatenated once
        into `root`/<hash of the parts>, written to a temp folder first and then renamed into place."""
        if len(self.model_files) == 1 and self.model_files[0].name == "model.bin":
            return self.directory
        key = ":".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in self.model_files)
        target = Path(root) / hashlib.sha256(key.encode()).hexdigest()[:12]
        if (target / "model.bin").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            with open(tmp / "model.bin", "wb") as out:
                for part in self.model_files:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
            for name in ("config.json", "tokenizer.json", "vocabulary.txt", "vocabulary.json",
                         "preprocessor_config.json"):
                if (self.directory / name).is_file():
                    shutil.copyfile(self.directory / name, tmp / name)
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / "model.bin").is_file():
                raise
        return target

    def config(self) -> dict:
        """config.json (suppress_ids, suppress_ids_begin, lang_ids, alignment_heads), {} when absent."""
        path = self.directory / "config.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else {}
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CTranslate2Error(f"{path}: not valid JSON ({e})") from None

    def vocabulary(self) -> list[str] | None:
        """The tokens in id order (byte-level BPE strings) from vocabulary.json or vocabulary.txt, if present."""
        json_path, txt_path = self.directory / "vocabulary.json", self.directory / "vocabulary.txt"
        try:
            if json_path.is_file():
                return json.loads(json_path.read_text(encoding="utf-8"))
            if txt_path.is_file():
                return txt_path.read_text(encoding="utf-8").split("\n")[:-1] if txt_path.stat().st_size else []
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CTranslate2Error(f"{self.directory}: unreadable vocabulary ({e})") from None
        return None


def read_faster_whisper(folder: FasterWhisperFolder | str | os.PathLike
                        ) -> tuple[WhisperDims, dict[str, torch.Tensor]]:
    """A faster-whisper folder -> (dimensions, float32 weights under openai-whisper's names)."""
    folder = folder if isinstance(folder, FasterWhisperFolder) else FasterWhisperFolder.at(folder)
    model = read_model_bin(folder.model_files)
    if model.spec != "WhisperSpec":
        raise CTranslate2Error(f"{folder}: a {model.spec or 'unnamed'} model, not WhisperSpec")
    variables = model.dequantized()
    check_flags(variables, str(folder))
    return whisper_dims(variables, str(folder)), to_openai_state_dict(variables, str(folder))


def byte_level_token(token: bytes) -> str:
    """A token's bytes in GPT-2's byte-to-unicode spelling (as vocabulary.txt and tokenizer.json write it)."""
    return "".join(_BYTE_TO_UNICODE[b] for b in token)


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(extra)}}


_BYTE_TO_UNICODE = _bytes_to_unicode()


SPECIAL_SPELLINGS = {"<|nocaptions|>": "<|nospeech|>"}  # Hugging Face's name for openai's token, same id


def vocabulary_mismatch(tokenizer, tokens: Iterable[str]) -> str | None:
    """None when `tokens` (id order) spell exactly `tokenizer`'s ids; else the first difference, in words."""
    tokens = list(tokens)
    if len(tokens) != tokenizer.vocab_size:
        return f"{len(tokens)} tokens, the tokenizer has {tokenizer.vocab_size}"
    for i, token in enumerate(tokens):
        ours = (tokenizer.id_to_piece(i) if i >= tokenizer.eot
                else byte_level_token(tokenizer.encoding.decode_single_token_bytes(i)))
        if ours != SPECIAL_SPELLINGS.get(token, token):
            return f"id {i} is {token!r} there, {ours!r} in the tokenizer"
    return None


def openai_whisper_model(folder: FasterWhisperFolder | str | os.PathLike):
    """openai-whisper's own `Whisper` model holding a faster-whisper folder's weights (float32, eval mode):
    the reference that our converted model is compared with. Needs the openai-whisper package."""
    from dataclasses import asdict

    from whisper.model import ModelDimensions, Whisper

    dims, state = read_faster_whisper(folder)
    model = Whisper(ModelDimensions(**asdict(dims)))
    model.load_state_dict(state)
    return model.eval()
