"""OpenAI Whisper checkpoints converted into our own model: weights renamed, config mapped, Whisper's tokenizer.

Whisper is the same family as our model (log-mel -> transformer encoder -> autoregressive decoder), so no
second model class is needed: `whisper_config` sets the `ModelConfig` switches (conv1d stem, learned
position tables, unscaled embeddings, no key bias, no CTC head, Whisper's front end) and the weights are
renamed into ours. Three sources are read, none by unpickling code:

- openai-whisper's `.pt` files: {"dims": ..., "model_state_dict": ...}, read with `torch.load(weights_only=True)`;
- Hugging Face `openai/whisper-*` folders: `config.json` + `model.safetensors`;
- faster-whisper (CTranslate2) folders: `model.bin` (float16/float32/int8, read from the bytes by
  `speech_transformer.importers.ctranslate2`) + `config.json` + `vocabulary.txt`/`tokenizer.json`.

The tokenizer is Whisper's byte-level BPE through tiktoken, with the vocabulary files that the
openai-whisper package ships (`pip install "speech_transformer[whisper]"`); the converted model directory
keeps its own copy, so it later needs only tiktoken. Where weights come from (`whisper:NAME`):
`importers.whisper`; the command: `speech-transformer whisper` (`apps.whisper_cli`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import torch

from speech_transformer.model.checkpoint import CheckpointError, load_state_dict, load_weights, save_model
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer
from speech_transformer.text.tokenizer import WhisperTokenizer

ENGLISH_VOCAB_SIZE = 51864  # English-only models; multilingual ones have one more token, large-v3 two
# an imported model's preferred decoding: greedy with openai-whisper's temperature fallback (beam 5 was 0.7 WER
# points better on LibriSpeech dev but 1.6x slower on 2 CPU threads: docs/whisper.md)
PREFERRED_DECODING = {"temperatures": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}


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
