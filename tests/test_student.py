"""The Whisper student (training/student.py): built from a random-weight openai-whisper model, then fine-tuned."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

pytest.importorskip("whisper", reason="openai-whisper is in the test extra: pip install -e '.[test]'")
from whisper.model import ModelDimensions, Whisper  # noqa: E402

from speech_transformer.model.checkpoint import load_model  # noqa: E402
from speech_transformer.training.data import read_manifest  # noqa: E402

ENGLISH_VOCAB = 51864


def test_student_keeps_whispers_lower_encoder_and_trains_with_frozen_blocks(tmp_path, data_dir):
    """`student`: Whisper's stem and first blocks, new CTC head and decoder over our tokenizer;
    fine-tuned with `freeze`, the frozen weights stay Whisper's and the rest learns."""
    from speech_transformer.training.data import write_manifest
    from speech_transformer.pretrained import default_model_dir
    from speech_transformer.training.trainer import main as train_main
    from speech_transformer.apps.whisper_cli import main as whisper_main

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=ENGLISH_VOCAB, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    teacher = Whisper(dims)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": teacher.state_dict()}, tmp_path / "t.pt")
    assert whisper_main([str(tmp_path / "t.pt"), "--student", "3", "-o", str(tmp_path / "x"),
                        "--tokenizer-from", str(default_model_dir())]) == 2  # 2 layers only
    assert whisper_main([str(tmp_path / "t.pt"), "--student", "1", "-o", str(tmp_path / "student"),
                        "--tokenizer-from", str(default_model_dir())]) == 0
    student, tokenizer, _ = load_model(tmp_path / "student")
    c = student.config
    assert (c.encoder_layers, c.decoder_layers, c.ctc, c.frontend) == (1, 1, True, "whisper_log_mel")
    assert not c.scale_embeddings and c.decoder_scale_embeddings  # Whisper's encoder as it was, our decoder scaled
    assert tokenizer.vocab_size == c.vocab_size == load_model(default_model_dir())[1].vocab_size
    ours = student.state_dict()
    theirs = teacher.state_dict()
    assert torch.equal(ours["encoder.blocks.0.attn.query.weight"], theirs["encoder.blocks.0.attn.query.weight"])
    assert torch.equal(ours["encoder.subsampling.conv2.weight"], theirs["encoder.conv2.weight"])
    assert torch.equal(ours["encoder.positions.table.weight"], theirs["encoder.positional_embedding"])

    write_manifest(read_manifest(data_dir / "fsdd" / "train.tsv")[:4], tmp_path / "train.jsonl")
    frozen = ["encoder.subsampling.", "encoder.positions.", "encoder.blocks.0."]
    settings = {"out_dir": tmp_path / "run", "train": f"[{tmp_path / 'train.jsonl'}]",
                "init_from": tmp_path / "student", "freeze": json.dumps(frozen), "ctc_weight": 0.5,
                "batch_seconds": 30, "max_steps": 12, "warmup_steps": 1, "lr": 0.003, "schedule": "constant",
                "log_every": 1, "save_every": 6, "average_last": 1, "num_workers": 0, "progress": "false",
                "speed_perturb": "[1.0]", "spec_augment": "null", "label_smoothing": 0}
    assert train_main([f"--set={k}={v}" for k, v in settings.items()]) == 0
    losses = [m["loss"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in m]
    assert losses[-1] < 0.5 * losses[0], losses
    trained = load_model(tmp_path / "run" / "model")[0].state_dict()
    for name, value in ours.items():
        assert torch.equal(trained[name], value) == name.startswith(tuple(frozen)), name
