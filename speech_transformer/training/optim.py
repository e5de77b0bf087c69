"""The optimiser side of training: AdamW groups (frozen prefixes, per-prefix learning-rate scales, no decay on
biases and norms), the learning-rate schedule, and the autocast precision."""

from __future__ import annotations

import math

import torch

from speech_transformer.training.config import TrainConfig


def learning_rate(c: TrainConfig, step: int) -> float:
    warm = max(1, c.warmup_steps)
    if step < warm:
        return c.lr * (step + 1) / warm
    if c.schedule == "noam":
        return c.lr * math.sqrt(warm / (step + 1))
    if c.schedule == "cosine":
        progress = min(1.0, (step - warm) / max(1, c.max_steps - warm))
        return c.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))
    return c.lr


def set_learning_rate(optimizer: torch.optim.Optimizer, c: TrainConfig, step: int) -> None:
    """The schedule's rate for `step`, times each parameter group's `lr_scale` (see `build_optimizer`)."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate(c, step) * group.get("lr_scale", 1.0)


def build_optimizer(model: torch.nn.Module, c: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    for name, p in model.named_parameters():
        if name.startswith(tuple(c.freeze)):
            p.requires_grad_(False)
    def scale(name: str) -> float:  # the longest matching prefix of lr_scale, else 1
        return next((c.lr_scale[k] for k in sorted(c.lr_scale, key=len, reverse=True) if name.startswith(k)), 1.0)

    groups: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault((scale(name), p.dim() >= 2), []).append(p)  # no decay on biases and norms
    return torch.optim.AdamW([{"params": params, "weight_decay": c.weight_decay if decay else 0.0, "lr_scale": s}
                              for (s, decay), params in sorted(groups.items(), key=lambda kv: (kv[0][0], not kv[0][1]))],
                             lr=c.lr, betas=tuple(c.betas), fused=device.type == "cuda")


def autocast_dtype(c: TrainConfig, device: torch.device) -> torch.dtype | None:
    precision = c.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
