"""The encoder's stems: log-mel frames `(B, F, n_mels)` -> `(B, S, D)` at a lower frame rate.

conv2d (factor 4 or 6, no time padding), frame stacking, or Whisper's two conv1d layers (factor 2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ConvSubsampling(nn.Module):
    """Stride-2/3 conv2d layers without time padding, so a valid output frame never sees padded input frames.

    factor 4: two 3x3 stride 2, S = ((F-1)//2 - 1)//2; factor 6: 3x3 stride 2 then 5x5 stride 3
    (as ESPnet's Conv2dSubsampling6); factor 8: three 3x3 stride 2. `(B, F, n_mels)` -> `(B, S, D)`.
    """

    LAYERS: ClassVar[dict[int, tuple[tuple[int, int], ...]]] = {4: ((3, 2), (3, 2)), 6: ((3, 2), (5, 3)), 8: ((3, 2), (3, 2), (3, 2))}  # (kernel, stride) each

    def __init__(self, n_mels: int, channels: int, d_model: int, factor: int = 4):
        super().__init__()
        self.factor = factor  # feature frames per encoder frame
        layers: list[nn.Module] = []
        for i, (kernel, stride) in enumerate(self.LAYERS[factor]):
            layers += [nn.Conv2d(1 if i == 0 else channels, channels, kernel, stride), nn.GELU()]
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(channels * self._reduce(n_mels), d_model)
        self.min_frames = next(n for n in range(1, 64) if self._reduce(n) >= 1)

    def _reduce(self, lengths: Tensor | int) -> Tensor | int:
        for kernel, stride in self.LAYERS[self.factor]:
            lengths = (lengths - kernel) // stride + 1
        return lengths

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self._reduce(lengths).clamp(min=0)

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if feats.shape[1] < self.min_frames:  # the convolutions need at least this many frames
            feats = F.pad(feats, (0, 0, 0, self.min_frames - feats.shape[1]))
        x = self.conv(feats[:, None])  # (B, C, S, n_mels')
        x = self.proj(x.transpose(1, 2).flatten(2))
        return x, self.output_lengths(lengths)


class StackSubsampling(nn.Module):
    """Frame stacking: each `factor` consecutive feature frames, concatenated, through one linear layer
    (a fraction of the conv2d stem's cost). `(B, F, n_mels)` -> `(B, S, D)`, S = F // factor; the
    incomplete last group is dropped, so a valid output frame never sees padded input frames."""

    def __init__(self, n_mels: int, d_model: int, factor: int = 4):
        super().__init__()
        self.factor = factor
        self.proj = nn.Linear(n_mels * factor, d_model)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return lengths // self.factor

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        B, T, M = feats.shape
        S = max(1, T // self.factor)
        if T < self.factor:
            feats = F.pad(feats, (0, 0, 0, self.factor - T))
        x = feats[:, : S * self.factor].reshape(B, S, self.factor * M)
        return self.proj(x), self.output_lengths(lengths)


class Conv1dSubsampling(nn.Module):
    """Whisper's stem: conv1d (kernel 3) and a stride-2 conv1d, each with GELU: `(B, F, n_mels)` -> `(B, S, D)`,
    S = (F+1)//2."""

    factor = 2

    def __init__(self, n_mels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, d_model, 3, padding=1)
        self.conv2 = nn.Conv1d(d_model, d_model, 3, stride=2, padding=1)

    @staticmethod
    def output_lengths(lengths: Tensor) -> Tensor:
        return (lengths - 1) // 2 + 1

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = F.gelu(self.conv2(F.gelu(self.conv1(feats.transpose(1, 2)))))
        return x.transpose(1, 2), self.output_lengths(lengths)
