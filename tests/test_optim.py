"""The optimiser side of training: the learning-rate schedules, frozen prefixes and per-prefix rates."""

import pytest
import torch

from speech_transformer.model.transformer import SpeechTransformer, preset
from speech_transformer.training.config import TrainConfig
from speech_transformer.training.optim import autocast_dtype, build_optimizer, learning_rate, set_learning_rate


def test_learning_rate_schedules():
    c = TrainConfig(lr=1e-3, warmup_steps=10, max_steps=100, schedule="cosine")
    assert learning_rate(c, 0) == pytest.approx(1e-4) and learning_rate(c, 9) == pytest.approx(1e-3)
    assert learning_rate(c, 99) < 1e-4
    noam = TrainConfig(lr=1e-3, warmup_steps=10, schedule="noam")
    assert learning_rate(noam, 39) == pytest.approx(1e-3 * 0.5)


def test_freeze_and_lr_scale_pick_what_learns_and_how_fast():
    """Frozen prefixes are not in the optimiser; each lr_scale prefix (the longest match) gets its factor."""
    model = SpeechTransformer(preset("tiny", vocab_size=40, encoder_layers=2, decoder_layers=1))
    c = TrainConfig(lr=1e-3, freeze=["encoder.subsampling.", "encoder.blocks.0."],
                    lr_scale={"encoder.": 0.1, "encoder.norm.": 0.5})
    optimizer = build_optimizer(model, c, torch.device("cpu"))
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        frozen = name.startswith(("encoder.subsampling.", "encoder.blocks.0."))
        assert (id(p) not in group_of) == frozen == (not p.requires_grad), name
        if not frozen:
            expected = 0.5 if name.startswith("encoder.norm.") else 0.1 if name.startswith("encoder.") else 1.0
            assert group_of[id(p)]["lr_scale"] == expected, name
            assert group_of[id(p)]["weight_decay"] == (c.weight_decay if p.dim() >= 2 else 0.0), name


def test_set_learning_rate_scales_each_group_and_cpu_trains_in_fp32():
    model = SpeechTransformer(preset("tiny", vocab_size=40, encoder_layers=1, decoder_layers=1))
    c = TrainConfig(lr=1e-3, warmup_steps=1, schedule="constant", lr_scale={"encoder.": 0.1})
    optimizer = build_optimizer(model, c, torch.device("cpu"))
    set_learning_rate(optimizer, c, 5)
    assert sorted(g["lr"] for g in optimizer.param_groups) == pytest.approx([1e-4, 1e-4, 1e-3, 1e-3])
    assert autocast_dtype(c, torch.device("cpu")) is None
