"""Whisper import: random-weight openai-whisper models, converted, must match openai-whisper number for number.

No download: each model is built by openai-whisper's own code with random weights, saved as a `.pt`
checkpoint (and as a Hugging Face style folder), converted, and compared: log-mel features, encoder
outputs, decoder logits, greedy token ids (single and batched) and tokenizer ids.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper", reason="openai-whisper is in the test extra: pip install -e '.[test]'")
from whisper.decoding import DecodingOptions as TheirOptions  # noqa: E402
from whisper.decoding import decode as their_decode  # noqa: E402
from whisper.model import ModelDimensions, Whisper  # noqa: E402

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio  # noqa: E402
from speech_transformer.model.checkpoint import CheckpointError, load_model, save_state_dict  # noqa: E402
from speech_transformer.training.data import read_manifest  # noqa: E402
from speech_transformer.decoding.options import DecodingOptions  # noqa: E402
from speech_transformer.decoding.search import decode  # noqa: E402
from speech_transformer.recognition.recognizer import Recognizer  # noqa: E402
from speech_transformer.importers.whisper import download_checkpoint, resolve  # noqa: E402
from speech_transformer.importers.whisper_convert import import_whisper  # noqa: E402
from speech_transformer.text.tokenizer import WhisperTokenizer  # noqa: E402

TOLERANCE = 1e-4
# (d_model, heads, layers): Whisper tiny and base; vocabularies: English-only and multilingual
SIZES = {"tiny": (384, 6, 4), "base": (512, 8, 6)}
VOCABS = {"en": 51864, "multilingual": 51865}


def random_whisper(size: str, vocab: str, seed: int = 0) -> Whisper:
    """openai-whisper's model class with random weights spread enough that argmax decisions are clear."""
    d, heads, layers = SIZES[size]
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=d, n_audio_head=heads, n_audio_layer=layers,
                           n_vocab=VOCABS[vocab], n_text_ctx=448, n_text_state=d, n_text_head=heads,
                           n_text_layer=layers)
    torch.manual_seed(seed)
    model = Whisper(dims)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # layer-norm gains near 1, biases near 0
                p.normal_(1.0 if "ln" in name.rsplit(".", 2)[-2] and name.endswith("weight") else 0.0, 0.1)
            else:
                p.normal_(0.0, 2.0 / (p.shape[1] * p[0, 0].numel()) ** 0.5)
    return model.eval()


@functools.cache
def converted(size: str, vocab: str, root: str) -> tuple[Whisper, Path, Path]:
    model = random_whisper(size, vocab)
    checkpoint = Path(root) / f"{size}.{vocab}.pt"
    torch.save({"dims": dataclasses.asdict(model.dims), "model_state_dict": model.state_dict()}, checkpoint)
    return model, checkpoint, import_whisper(checkpoint, Path(root) / f"{size}.{vocab}")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("whisper"))


@pytest.fixture(scope="module")
def speech(data_dir) -> list[np.ndarray]:
    """Three real utterances of different lengths: jfk (11 s) and two LibriSpeech dev ones."""
    dev = read_manifest(data_dir / "librispeech" / "dev.tsv")[:2]
    return [load_audio(data_dir / "samples" / "jfk.flac")] + [load_audio(u.audio) for u in dev]


def their_greedy(model: Whisper, mel: torch.Tensor, n: int, suppress: str = "") -> list[list[int]]:
    options = TheirOptions(language="en", without_timestamps=True, suppress_tokens=suppress,
                           suppress_blank=bool(suppress), sample_len=n, fp16=False)
    return [r.tokens for r in their_decode(model, mel, options)]


def our_greedy(model, tokenizer, waves: list[np.ndarray], n: int, suppress: bool) -> list[list[int]]:
    special = tokenizer.special if suppress else dataclasses.replace(tokenizer.special, suppress=(),
                                                                     suppress_at_start=())
    audio = torch.zeros(len(waves), max(len(w) for w in waves))
    for i, w in enumerate(waves):
        audio[i, : len(w)] = torch.from_numpy(w)
    lengths = torch.tensor([len(w) for w in waves])
    memory, memory_lengths = model.encode(*model.frontend(audio, lengths))
    options = DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=n, max_repeats=n)
    return [h.tokens for h in decode(model, memory, memory_lengths, options, special)]


@pytest.mark.parametrize("size,vocab", [("tiny", "en"), ("tiny", "multilingual"), ("base", "en"),
                                        ("base", "multilingual")])
def test_converted_model_matches_openai_whisper(size, vocab, root, speech):
    theirs, _, directory = converted(size, vocab, root)
    ours, tokenizer, _ = load_model(directory)
    wave = speech[0]
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))  # (80, 3000)
    feats, feat_lengths = ours.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert feats.shape == (1, 3000, 80)
    assert (feats[0].T - mel).abs().max() <= TOLERANCE
    with torch.no_grad():
        their_memory = theirs.encoder(mel[None])
        memory, memory_lengths = ours.encode(feats, feat_lengths)
        assert memory.shape == their_memory.shape == (1, 1500, SIZES[size][0])
        assert (memory - their_memory).abs().max() <= TOLERANCE
        prompt = torch.tensor([list(tokenizer.special.prompt) + tokenizer.encode(" and so my fellow Americans")])
        their_logits = theirs.decoder(prompt, their_memory)
        logits, _ = ours.decoder(prompt, ours.decoder.memory_kv(memory), memory_lengths)
        assert (logits - their_logits).abs().max() <= TOLERANCE
        assert their_logits.std() > 1.0  # the comparison is not between near-constant numbers
    theirs_20 = their_greedy(theirs, mel[None], 20)
    assert our_greedy(ours, tokenizer, [wave], 20, suppress=False) == theirs_20
    assert len(theirs_20[0]) > 0


def test_batched_greedy_and_suppression_match(root, speech):
    theirs, _, directory = converted("tiny", "multilingual", root)
    ours, tokenizer, _ = load_model(directory)
    mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(w))) for w in speech])
    assert our_greedy(ours, tokenizer, speech, 20, suppress=False) == their_greedy(theirs, mels, 20)
    # our default: every special token but <|endoftext|> and the non-speech symbols are suppressed, and a blank
    # start (openai-whisper's suppress_blank); the same list given to openai-whisper
    suppress = ",".join(str(t) for t in tokenizer.special.suppress)
    assert our_greedy(ours, tokenizer, speech, 20, suppress=True) == their_greedy(theirs, mels, 20, suppress)


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """openai-whisper names -> the names of transformers' WhisperForConditionalGeneration (written out here)."""
    block = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm",
             "cross_attn.query": "encoder_attn.q_proj", "cross_attn.key": "encoder_attn.k_proj",
             "cross_attn.value": "encoder_attn.v_proj", "cross_attn.out": "encoder_attn.out_proj",
             "cross_attn_ln": "encoder_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2", "mlp_ln": "final_layer_norm"}
    top = {"encoder.conv1": "model.encoder.conv1", "encoder.conv2": "model.encoder.conv2",
           "encoder.ln_post": "model.encoder.layer_norm", "decoder.token_embedding": "model.decoder.embed_tokens",
           "decoder.ln": "model.decoder.layer_norm"}
    out = {"model.encoder.embed_positions.weight": state["encoder.positional_embedding"],
           "model.decoder.embed_positions.weight": state["decoder.positional_embedding"],
           "proj_out.weight": state["decoder.token_embedding.weight"]}
    for name, tensor in state.items():
        module, leaf = name.rsplit(".", 1)
        if module in top:
            out[f"{top[module]}.{leaf}"] = tensor
        elif ".blocks." in module:
            side, _, index, rest = module.split(".", 3)
            out[f"model.{side}.layers.{index}.{block[rest]}.{leaf}"] = tensor
    assert len(out) == len(state) + 1  # every tensor placed, plus the tied proj_out
    return out


def test_hugging_face_folder_converts_to_the_same_model(root, speech, tmp_path):
    theirs, _, _ = converted("tiny", "en", root)
    hf = tmp_path / "whisper-tiny.en"
    hf.mkdir()
    save_state_dict(to_hf_state_dict(theirs.state_dict()), hf / "model.safetensors")
    d = theirs.dims
    (hf / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": d.n_mels, "vocab_size": d.n_vocab, "d_model": d.n_audio_state,
        "encoder_attention_heads": d.n_audio_head, "decoder_attention_heads": d.n_text_head,
        "encoder_layers": d.n_audio_layer, "decoder_layers": d.n_text_layer, "encoder_ffn_dim": 4 * d.n_audio_state,
        "decoder_ffn_dim": 4 * d.n_text_state, "max_source_positions": d.n_audio_ctx,
        "max_target_positions": d.n_text_ctx}))
    ours, tokenizer, _ = load_model(import_whisper(hf, tmp_path / "converted"))
    wave = speech[1]
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(wave)))
    with torch.no_grad():
        memory, _ = ours.encode(*ours.frontend(torch.from_numpy(wave)[None], torch.tensor([len(wave)])))
        assert (memory - theirs.encoder(mel[None])).abs().max() <= TOLERANCE
    assert our_greedy(ours, tokenizer, [wave], 20, suppress=False) == their_greedy(theirs, mel[None], 20)


@pytest.mark.parametrize("multilingual", [False, True])
def test_tokenizer_ids_match_openai_whisper(multilingual):
    from whisper.tokenizer import get_tokenizer

    theirs = get_tokenizer(multilingual, language="en" if multilingual else None, task="transcribe")
    from speech_transformer.importers.whisper_convert import packaged_vocabulary

    ours = WhisperTokenizer(packaged_vocabulary(multilingual), multilingual)
    for text in ["And so, my fellow Americans: ask not what your country can do for you.",
                 " He hoped there would be stew for dinner, turnips and carrots (and 42 potatoes)!",
                 "It's 3:30 p.m. — don't they'll we've"]:
        ids = ours.encode(text)
        assert ids == theirs.encode(text)
        assert ours.decode(ids) == text == theirs.decode(ids)
    assert ours.special.prompt == tuple(theirs.sot_sequence_including_notimestamps)
    assert ours.special.eos == theirs.eot
    assert ours.vocab_size == theirs.encoding.n_vocab
    assert ours.special_ids["<|0.00|>"] == theirs.timestamp_begin
    assert ours.id_to_piece(ours.encode(" Americans")[0]).startswith("▁")
    if multilingual:
        german = WhisperTokenizer(packaged_vocabulary(True), True, language="de", task="translate")
        assert german.special.prompt == tuple(get_tokenizer(True, language="de", task="translate")
                                              .sot_sequence_including_notimestamps)
        with pytest.raises(ValueError, match="unsupported language"):
            WhisperTokenizer(packaged_vocabulary(True), True, language="klingon")


def test_recognizer_and_beam_search_run_on_an_imported_model(root, speech):
    _, _, directory = converted("tiny", "en", root)
    recognizer = Recognizer.from_dir(directory)
    greedy = recognizer.recognize(speech, DecodingOptions(beam_size=1, ctc_weight=0.0, max_length=20))
    beam1 = recognizer.recognize(speech, DecodingOptions(beam_size=1, ctc_weight=0.3, max_length=20))  # no CTC head
    beam3 = recognizer.recognize(speech, DecodingOptions(beam_size=3, ctc_weight=0.3, max_length=20))
    assert [r.tokens for r in beam1] == [r.tokens for r in greedy]
    assert all(len(r.tokens) <= 20 and r.score <= 0 for r in beam3)
    assert all(t < recognizer.tokenizer.special.eos for r in beam3 + greedy for t in r.tokens)
    with pytest.raises(ValueError, match="no CTC head"):
        recognizer.recognize(speech[:1], DecodingOptions(method="ctc"))
    with pytest.raises(ValueError, match="at most 30 s"):
        recognizer.recognize([np.zeros(31 * SAMPLE_RATE, dtype=np.float32)])


def test_transcribe_cli_runs_a_whisper_model_with_vad_chunking(root, data_dir, tmp_path):
    from speech_transformer.apps import transcribe_cli as transcribe

    _, checkpoint, _ = converted("tiny", "en", root)
    sample = data_dir / "samples" / "jfk.flac"
    env_cache = tmp_path / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPEECH_TRANSFORMER_CACHE", str(env_cache))
        code = transcribe.main([str(sample), "-o", str(tmp_path / "out"), "--format", "json",
                                "--model", f"whisper:{checkpoint}", "--temperatures", "0"])  # random weights: unsure
        assert code == 0
        first = resolve(str(checkpoint))
        assert resolve(str(checkpoint)) == first and first.parent.parent == env_cache  # converted once, cached
    result = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert result["segments"], result
    words = [w for s in result["segments"] for w in s["words"]]
    assert all(s["start"] <= w["start"] <= w["end"] <= s["end"] for s in result["segments"] for w in s["words"])
    assert words


def test_bad_checkpoints_are_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an openai-whisper checkpoint"):
        import_whisper(tmp_path / "other.pt", tmp_path / "out")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.pt"):
        import_whisper(tmp_path / "text.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_download_checks_the_sha256_in_the_url(tmp_path):
    payload = b"pretend checkpoint bytes" * 1000
    digest = hashlib.sha256(payload).hexdigest()
    served = tmp_path / "served" / digest
    served.mkdir(parents=True)
    (served / "tiny.en.pt").write_bytes(payload)
    wrong = tmp_path / "served" / ("0" * 64)
    wrong.mkdir()
    (wrong / "tiny.en.pt").write_bytes(payload)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        got = download_checkpoint(f"{base}/{digest}/tiny.en.pt", tmp_path / "cache" / "tiny.en.pt")
        assert got.read_bytes() == payload
        with pytest.raises(CheckpointError, match="does not match"):
            download_checkpoint(f"{base}/{'0' * 64}/tiny.en.pt", tmp_path / "cache2" / "tiny.en.pt")
        assert not any((tmp_path / "cache2").iterdir())  # nothing partial left behind
        with pytest.raises(ConnectionError, match="cannot download"):
            download_checkpoint(f"{base}/{digest}/missing.pt", tmp_path / "cache3" / "missing.pt")
    finally:
        server.shutdown()


def test_demo_draws_pictures_for_a_whisper_model(root, data_dir):
    from speech_transformer.apps.demo import Demo

    _, _, directory = converted("tiny", "en", root)
    demo = Demo(Recognizer.from_dir(directory))
    text, details, spectrogram, attention = demo.transcribe(str(data_dir / "samples" / "jfk.flac"), beam_size=2)
    assert "beam 2" in details and spectrogram.ndim == attention.ndim == 3
    assert spectrogram.shape[1] == attention.shape[1]  # one time axis for both pictures
    from speech_transformer.apps.demo import model_card

    assert "Whisper features" in model_card(demo.recognizer, directory)


def test_fine_tune_an_imported_model_with_our_trainer(tmp_path, data_dir):
    """`init_from` a converted Whisper model: the trainer learns (loss falls), exports a loadable Whisper-format dir."""
    from speech_transformer.training.data import write_manifest
    from speech_transformer.training.trainer import main as train_main

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=1,
                           n_vocab=VOCABS["en"], n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    small = Whisper(dims)
    with torch.no_grad():
        small.decoder.positional_embedding.normal_(0.0, 0.02)  # torch.empty in openai-whisper
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": small.state_dict()}, tmp_path / "small.pt")
    start = import_whisper(tmp_path / "small.pt", tmp_path / "start")
    write_manifest(read_manifest(data_dir / "fsdd" / "train.tsv")[:4], tmp_path / "train.jsonl")
    settings = {"out_dir": tmp_path / "run", "train": f"[{tmp_path / 'train.jsonl'}]", "init_from": start,
                "ctc_weight": 0, "batch_seconds": 30, "max_steps": 12, "warmup_steps": 1, "lr": 0.003,
                "schedule": "constant", "log_every": 1, "save_every": 6, "average_last": 1, "num_workers": 0,
                "progress": "false", "speed_perturb": "[1.0]", "spec_augment": "null", "label_smoothing": 0}
    with pytest.raises(ValueError, match="no CTC head"):
        train_main([f"--set={k}={v}" for k, v in {**settings, "ctc_weight": 0.3}.items()])
    assert train_main([f"--set={k}={v}" for k, v in settings.items()]) == 0
    losses = [m["loss"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in m]
    assert len(losses) == 12 and losses[-1] < 0.5 * losses[0], losses
    model, tokenizer, config = load_model(tmp_path / "run" / "model")
    assert config["tokenizer"]["type"] == "whisper" and model.config.frontend == "whisper"
