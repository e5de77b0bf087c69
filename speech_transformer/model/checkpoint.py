"""Model directories and checkpoint averaging. Nothing here unpickles.

A model directory holds:
- `config.json`, read and written as a `ModelDirectory`: {"format": 1, "model": ModelConfig fields,
  "tokenizer": {"type": ...}, "weights_sha256": ..., "tokenizer_sha256": ..., "info": {...},
  "decoding": {...} (optional: the preferred method and each search's tuned settings, `DecodingOptions.to_dict`),
  "commands": {...} (optional: the grammar matcher's `MatchOptions` fields)}
- `model.safetensors`: the weights (front-end feature statistics included); a matrix stored as int8 has its
  per-row scales beside it under `NAME` + `SCALE_SUFFIX` (`quantize_int8`); one stored as 4 bits is NAME
  (uint8, two codes a byte) with `NAME` + `INT4_SCALE` and `NAME` + `INT4_OFFSET` per group of columns
  (`quantize_int4`); `load_state_dict` dequantizes both
- `tokenizer.model`: the SentencePiece model, or `tokenizer.tiktoken` for an imported Whisper model
- `ctc_tokenizer.model` (only where the CTC head spells in its own vocabulary, `ModelConfig.ctc_vocab_size`:
  a student distilled from Whisper): that vocabulary, a SentencePiece model; config.json's "ctc_tokenizer" and
  "ctc_tokenizer_sha256" describe it as "tokenizer" and "tokenizer_sha256" do the decoder's
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.utils.files import atomic_path, atomic_write
from speech_transformer.utils.runtime import malloc_trim
from speech_transformer.model.quantize import dequantize_groups, quantize_groups, quantize_model, quantize_rows
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer
from speech_transformer.text.tokenizer import TextTokenizer, tokenizer_class
from speech_transformer.text.tokenizer import load_tokenizer

FORMAT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE = "config.json", "model.safetensors", "tokenizer.model"
CTC_TOKENIZER_FILE = "ctc_tokenizer.model"
TIED_INPUT, TIED_OUTPUT = "decoder.embed.weight", "decoder.output.weight"  # one matrix when tie_embeddings
SCALE_SUFFIX = ":int8_scale"  # `NAME:int8_scale` holds the per-row scales of the int8 tensor NAME
INT4_SCALE, INT4_OFFSET = ":int4_scale", ":int4_offset"  # those of the 4-bit matrix NAME, per group of columns
INT4_GROUP = 64
WEIGHT_STORAGE = ("float32", "int8", "int4")


class CheckpointError(ValueError):
    """A model directory or checkpoint file is missing, corrupt, or does not match its config."""


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors, written atomically. Tensors are copied: safetensors refuses tied (shared) storage."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp))


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; int8 and 4-bit matrices come back as float32 (`dequantize_int8`,
    `dequantize_int4`)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    return dequantize_int4(dequantize_int8(state, path), path)


def quantize_int8(state: dict[str, torch.Tensor], names: set[str]) -> dict[str, torch.Tensor]:
    """`state` with each float tensor of `names` of 2 or more dimensions `(R, ...)` stored as int8, symmetric
    per row (first dimension, `quantize.quantize_rows`), its float32 scales `(R,)` under NAME + SCALE_SUFFIX;
    the rest unchanged."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if name not in names or value.dim() < 2 or not value.is_floating_point():
            out[name] = value
            continue
        out[name], out[name + SCALE_SUFFIX] = quantize_rows(value)
    return out


def dequantize_int8(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The inverse of `quantize_int8`: every int8 tensor with scales becomes float32 `q x scale`."""
    out = {k: v for k, v in state.items() if not k.endswith(SCALE_SUFFIX)}
    for key in state.keys() - out.keys():
        name, scale = key[: -len(SCALE_SUFFIX)], state[key].float()
        if name not in out or out[name].dtype != torch.int8 or scale.shape != out[name].shape[:1]:
            raise CheckpointError(f"{source}: {key} has no int8 tensor {name} with {tuple(scale.shape)} rows")
        out[name] = out[name].float() * scale.reshape(-1, *([1] * (out[name].dim() - 1)))
    return out


def quantize_int4(state: dict[str, torch.Tensor], names: set[str], groups: dict[str, int] | None = None
                  ) -> dict[str, torch.Tensor]:
    """`state` with each float matrix `(R, C)` of `names` whose C is a multiple of its group stored in 4 bits
    (`quantize.quantize_groups`); the other tensors of `names` of 2 or more dimensions (convolutions) as int8
    (`quantize_int8`); the rest unchanged. `groups`: columns per group of the matrices whose names start with
    each prefix (the first that matches), `INT4_GROUP` for the others; the loader reads each from its scales."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        group = next((g for prefix, g in (groups or {}).items() if name.startswith(prefix)), INT4_GROUP)
        if name in names and value.dim() == 2 and value.is_floating_point() and value.shape[1] % group == 0:
            out[name], out[name + INT4_SCALE], out[name + INT4_OFFSET] = quantize_groups(value, group)
        else:
            out[name] = value
    return quantize_int8(out, names)  # the packed codes are not floats: left as they are


def dequantize_int4(state: dict[str, torch.Tensor], source: Path) -> dict[str, torch.Tensor]:
    """The inverse of `quantize_int4`'s 4-bit part: every packed matrix with scales and offsets becomes float32."""
    out = {k: v for k, v in state.items() if not k.endswith((INT4_SCALE, INT4_OFFSET))}
    for key in [k for k in state if k.endswith(INT4_SCALE)]:
        name = key[: -len(INT4_SCALE)]
        packed, scale, offset = out.get(name), state[key], state.get(name + INT4_OFFSET)
        if (packed is None or packed.dtype != torch.uint8 or packed.dim() != 2 or offset is None
                or scale.dim() != 2 or offset.shape != scale.shape or scale.shape[0] != packed.shape[0]
                or (2 * packed.shape[1]) % scale.shape[1]):
            raise CheckpointError(f"{source}: {key} has no 4-bit matrix {name} with its offsets to go with it")
        out[name] = dequantize_groups(packed, scale, offset)
    if len(out) + sum(k.endswith(INT4_SCALE) for k in state) * 2 != len(state):
        raise CheckpointError(f"{source}: 4-bit offsets without scales")
    return out


def save_model(model: SpeechTransformer, tokenizer: TextTokenizer, directory: str | os.PathLike,
               info: dict | None = None, decoding: DecodingOptions | dict | None = None, weights: str = "float32",
               commands: dict | None = None, ctc_tokenizer: TextTokenizer | None = None,
               int4_groups: dict[str, int] | None = None) -> Path:
    """Write a complete model directory (into a temp dir, then moved into place).

    `decoding` is the model's preferred decoding (`DecodingOptions`, or its dict), used when a caller gives none;
    `commands` its grammar-matching settings (`commands.MatchOptions` fields: joint weight, reject threshold).
    `weights`: how the parameter matrices are stored: "float32" (as the model has them), "int8" with per-row
    scales (`quantize_int8`: a quarter of float32) or "int4" (`quantize_int4`: 4 bits and a float16 scale and
    offset per 64 columns, 0.56 bytes a parameter; `int4_groups`: other group widths by name prefix, e.g.
    {"decoder.blocks.": 32}, 0.63 bytes a parameter there).
    `ctc_tokenizer`: the CTC head's own vocabulary, when it is not the decoder's.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    state = model.state_dict()
    if model.config.tie_embeddings:  # one copy of the shared matrix (`load_weights` ties it again)
        state.pop(TIED_OUTPUT, None)
    if weights not in WEIGHT_STORAGE:
        raise ValueError(f"weights must be one of {', '.join(WEIGHT_STORAGE)}, not {weights!r}")
    if weights != "float32":
        names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        state = quantize_int8(state, names) if weights == "int8" else quantize_int4(state, names, int4_groups)
    save_state_dict(state, tmp / WEIGHTS_FILE)
    (tmp / tokenizer.file_name).write_bytes(tokenizer.to_bytes())
    files = [WEIGHTS_FILE, tokenizer.file_name]
    if ctc_tokenizer is not None:
        (tmp / CTC_TOKENIZER_FILE).write_bytes(ctc_tokenizer.to_bytes())
        files.append(CTC_TOKENIZER_FILE)
    if not isinstance(decoding, DecodingOptions):
        decoding = DecodingOptions.from_dict(decoding)
    ModelDirectory(model.config, tokenizer.to_config(), decoding, commands or {}, info or {},
                   sha256(tmp / WEIGHTS_FILE), sha256(tmp / tokenizer.file_name),
                   ctc_tokenizer.to_config() if ctc_tokenizer is not None else None,
                   sha256(tmp / CTC_TOKENIZER_FILE) if ctc_tokenizer is not None else None).write(tmp)
    files.append(CONFIG_FILE)  # last: it vouches for the others
    for name in files:  # mkdtemp/safetensors make them private
        os.chmod(tmp / name, 0o644)
    os.chmod(tmp, 0o755)
    if directory.exists():
        for name in files:
            os.replace(tmp / name, directory / name)
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, directory)
    return directory


@dataclass
class ModelDirectory:
    """config.json, section by section: what a model directory says about itself."""

    model: ModelConfig
    tokenizer: dict[str, Any]
    decoding: DecodingOptions = field(default_factory=DecodingOptions)  # preferred method + tuned settings
    commands: dict[str, Any] = field(default_factory=dict)  # `commands.matching.MatchOptions` fields
    info: dict[str, Any] = field(default_factory=dict)  # provenance: training, shipping
    weights_sha256: str | None = None
    tokenizer_sha256: str | None = None
    ctc_tokenizer: dict[str, Any] | None = None  # the CTC head's own vocabulary (None: the decoder's)
    ctc_tokenizer_sha256: str | None = None

    @classmethod
    def read(cls, directory: str | os.PathLike) -> "ModelDirectory":
        """Parse and check `directory/config.json`; CheckpointError names the file and the bad section."""
        return cls.from_config(read_config(directory), Path(directory) / CONFIG_FILE)

    @classmethod
    def from_config(cls, config: dict[str, Any], path: Path) -> "ModelDirectory":
        """The sections of a config.json already read from `path` (named in errors)."""
        sections = {"model": (ModelConfig.from_dict, config.get("model")),
                    "decoding": (DecodingOptions.from_dict, config.get("decoding"))}
        parsed = {}
        for name, (parse, value) in sections.items():
            try:
                parsed[name] = parse(value)
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path}: bad {name} entry ({e})") from None
        return cls(parsed["model"], dict(config.get("tokenizer") or {}), parsed["decoding"],
                   dict(config.get("commands") or {}), dict(config.get("info") or {}),
                   config.get("weights_sha256"), config.get("tokenizer_sha256"), config.get("ctc_tokenizer"),
                   config.get("ctc_tokenizer_sha256"))

    def to_config(self) -> dict[str, Any]:
        config = {"format": FORMAT_VERSION, "model": self.model.to_dict(), "tokenizer": self.tokenizer,
                  "weights_sha256": self.weights_sha256, "tokenizer_sha256": self.tokenizer_sha256,
                  "info": self.info}
        if self.ctc_tokenizer is not None:
            config.update(ctc_tokenizer=self.ctc_tokenizer, ctc_tokenizer_sha256=self.ctc_tokenizer_sha256)
        if self.decoding != DecodingOptions():
            config["decoding"] = self.decoding.to_dict()
        if self.commands:
            config["commands"] = self.commands
        return config

    def write(self, directory: str | os.PathLike) -> Path:
        """`directory/config.json`, written atomically."""
        path = Path(directory) / CONFIG_FILE
        atomic_write(path, json.dumps(self.to_config(), indent=2) + "\n")
        return path


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a model directory (no {CONFIG_FILE})")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if config.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported format {config.get('format')!r} (expected {FORMAT_VERSION})")
    return config


def tokenizer_file(config: dict) -> str:
    try:
        return tokenizer_class(config.get("tokenizer")).file_name
    except ValueError as e:
        raise CheckpointError(f"{CONFIG_FILE}: {e}") from None


def model_tokenizer(directory: str | os.PathLike, config: dict | None = None) -> TextTokenizer:
    """A model directory's tokenizer, the one its config.json names: SentencePiece (ours) or Whisper's (tiktoken)."""
    config = read_config(directory) if config is None else config
    return load_tokenizer(Path(directory) / tokenizer_file(config), config.get("tokenizer"))


def model_ctc_tokenizer(directory: str | os.PathLike, config: dict | None = None) -> TextTokenizer:
    """The tokenizer of the CTC head's vocabulary: its own (`ctc_tokenizer.model`) or the decoder's."""
    config = read_config(directory) if config is None else config
    if config.get("ctc_tokenizer") is None:
        return model_tokenizer(directory, config)
    return load_tokenizer(Path(directory) / CTC_TOKENIZER_FILE, config["ctc_tokenizer"])


def stored_quantized(path: Path) -> bool:
    """Whether a weights file holds int8 or 4-bit matrices (`quantize_int8`, `quantize_int4`), read from its
    header alone."""
    try:
        with safe_open(str(path), "pt") as f:
            return any(key.endswith((SCALE_SUFFIX, INT4_SCALE)) for key in f.keys())
    except (SafetensorError, OSError):
        return False  # load_model names the problem


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu", compute: str = "float32"
               ) -> tuple[SpeechTransformer, TextTokenizer, dict]:
    """Load (model in eval mode, tokenizer, config dict). Checks files against the recorded hashes.

    `compute="int8"` (CPU only) runs the matrices as int8 (`quantize.quantize_model`); a model stored as int8
    then multiplies by exactly its stored integers (a 4-bit one by its rows' int8 rounding). `"auto"`: int8
    for a model stored as int8 or in 4 bits, on the CPU.
    """
    if compute not in ("float32", "int8", "auto"):
        raise ValueError(f"compute must be float32, int8 or auto, not {compute!r}")
    directory = Path(directory)
    if compute == "auto":
        compute = "int8" if torch.device(device).type == "cpu" and stored_quantized(directory / WEIGHTS_FILE) else "float32"
    config = read_config(directory)
    model_config = ModelDirectory.from_config(config, directory / CONFIG_FILE).model  # bad sections named first
    files = [(WEIGHTS_FILE, "weights_sha256"), (tokenizer_file(config), "tokenizer_sha256")]
    if config.get("ctc_tokenizer") is not None:
        files.append((CTC_TOKENIZER_FILE, "ctc_tokenizer_sha256"))
    for name, key in files:
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{directory}: missing {name}")
        if config.get(key) and sha256(path) != config[key]:
            raise CheckpointError(f"{path}: contents do not match the sha256 recorded in {CONFIG_FILE} "
                                  "(file corrupt or modified)")
    tokenizer = model_tokenizer(directory, config)
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(f"{directory}: tokenizer has {tokenizer.vocab_size} tokens, model expects "
                              f"{model_config.vocab_size}")
    if model_config.ctc_vocab_size and model_ctc_tokenizer(directory, config).vocab_size != model_config.ctc_vocab_size:
        raise CheckpointError(f"{directory}: the CTC head has {model_config.ctc_vocab_size} outputs, "
                              f"{CTC_TOKENIZER_FILE} does not have as many tokens")
    model = SpeechTransformer(model_config)
    load_weights(model, load_state_dict(directory / WEIGHTS_FILE), directory / WEIGHTS_FILE, assign=True)
    model = model.to(device).eval()
    if compute == "int8":
        model = quantize_model(model)
        for tensor in [*model.parameters(), *model.buffers()]:  # what stays float32 (embeddings, norms) leaves the
            tensor.data = tensor.data.clone()  # file's map, which then closes with the swapped-out matrices' pages
        malloc_trim()
    return model, tokenizer, config


def load_weights(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path, assign: bool = False) -> None:
    """Load `state` into `model`, checking names and shapes first. `assign`: the model's parameters become
    `state`'s tensors instead of copies (those of `load_file` are copy-on-write maps of the file, so a float32
    matrix that int8 compute replaces is never copied into memory)."""
    expected = model.state_dict()
    config = getattr(model, "config", None)
    if getattr(config, "tie_embeddings", False) and TIED_OUTPUT not in state and TIED_INPUT in state:
        state = {**state, TIED_OUTPUT: state[TIED_INPUT]}  # stored once (`save_model`)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(f"{source}: weights do not match the config (missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]})")
    if assign:  # the model's dtypes, as copying into its parameters gives (float16 files: float32); none copied
        state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, assign=assign)
    if getattr(config, "tie_embeddings", False):  # `assign` gave the two names a Parameter each
        model.decoder.output.weight = model.decoder.embed.weight


def average_state_dicts(paths: list[str | os.PathLike]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several safetensors files with the same keys (integer buffers from the last)."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = load_state_dict(Path(path))
        if total and set(state) != set(total):
            raise CheckpointError(f"{path}: keys differ from {paths[0]}")
        for k, v in state.items():
            total[k] = v.double() + total[k] if k in total and v.is_floating_point() else (
                v.double() if v.is_floating_point() else v)
    return {k: (v / len(paths)).float() if v.is_floating_point() else v for k, v in total.items()}
