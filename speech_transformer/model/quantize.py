"""Low-precision compute on CPU: int8 matrices for the decoder's tokens, bfloat16 for products over frames.

`quantize_model` swaps every `nn.Linear` of a model, fused per attention (`MultiHeadAttention.fused_qkv`,
`fused_kv`: one product instead of three or two), for one of two kernels (`low_precision`):
- `Int8Linear`, for the decoder's token rows: the weight int8, symmetric per output row (`quantize_rows`, the
  rule of the model files' int8 storage, so a model stored as int8 computes with exactly its stored
  integers); each input quantized with one scale per call (PyTorch's dynamic quantisation,
  `quantized::linear_dynamic`), or within `row_scales()` with one scale per row; int32 accumulation,
  float32 out.
- `Bf16Linear`, for products over encoder frames (the encoder, the CTC head, the cross-attention keys and
  values), on CPUs with native bfloat16 (AMX / AVX512-BF16); the encoder's self-attention products then run
  in bfloat16 too. One input scale over thousands of frames loses too much where activations have outliers
  (Whisper's reach 140x their rms): int8 there changed the default model's encoder output by 22 %, bfloat16
  by 1 %, and was slower. Without native bfloat16 these products run in int8 as well.
The decoder's token embedding becomes an int8 table (`Int8Embedding`, the same integers as the tied output
layer's), a quarter of float32. Convolutions, norms and position tables stay float32.

The int8 kernels come from the first engine this PyTorch offers of oneDNN (fastest on x86 here: VNNI /
AMX int8), x86, fbgemm, QNNPACK (ARM). Products of up to `FEW_ROWS` rows (one utterance's greedy decoder
step: a streaming final, a single file) take x86's kernels from a second packed copy: on this machine they
made such a decode 1.45x faster (0.90 -> 0.62 CPU s for a 14 s utterance with v4, one thread).
A quantized model is for inference on the CPU only: its `state_dict` no longer holds the swapped matrices.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech_transformer.model.transformer import MultiHeadAttention

INT8_MAX = 127
ENGINES = ("onednn", "x86", "fbgemm", "qnnpack")  # by measured speed on x86, for products of many rows
FEW_ROWS_ENGINE, FEW_ROWS = "x86", 4  # up to 4 rows (one utterance's greedy step): x86's kernels, 1.5x onednn's
TINY = torch.finfo(torch.float32).tiny
_ROW_SCALES = contextvars.ContextVar("row_scales", default=False)


@contextlib.contextmanager
def row_scales():
    """Within it, `Int8Linear` quantizes each input row on a scale of its own (as when it is computed alone)
    instead of one scale for all rows: for many rows whose results must be those of rows computed one at a
    time, a draft read in one pass (`DecoderScorer.read`). The first draft rows' outliers would otherwise
    coarsen the others, and the read would disagree with the steps. It costs ~90 us a product."""
    token = _ROW_SCALES.set(True)
    try:
        yield
    finally:
        _ROW_SCALES.reset(token)


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """`(R, ...)` float -> int8 `(R, ...)` and float32 scales `(R,)`: symmetric per row (first dimension),
    because rows of one matrix differ in range, and symmetric so that zero stays exact."""
    rows = weight.detach().float().reshape(weight.shape[0], -1)
    scale = rows.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / INT8_MAX
    q = (rows / scale[:, None]).round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q.reshape(weight.shape), scale


INT4_LEVELS = 15
INT4_SHRINK = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)  # range factors tried per group (`quantize_groups`)


def quantize_groups(weight: Tensor, group: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """`(R, C)` float -> 4-bit codes packed two per byte, uint8 `(R, C // 2)`, and per group of `group`
    columns float16 scales and offsets `(R, C // group)`: w ~ code x scale + offset, codes 0..15.

    For storage only (`checkpoint.quantize_int4`): an eighth of float32. Each group's range [min, max] is
    shrunk by the factor of `INT4_SHRINK` with the least squared error (clipping a few outliers buys a finer
    grid for the rest): on Whisper base it took group-64 rounding from +1.0 to -0.2 WER points (dev[:40])."""
    if weight.dim() != 2 or weight.shape[1] % group or group % 2:
        raise ValueError(f"4-bit groups need a (R, C) matrix with C a multiple of {group}, not {tuple(weight.shape)}")
    x = weight.detach().float().reshape(weight.shape[0], -1, group)  # (R, G, group)
    low, high = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    best = None
    for factor in INT4_SHRINK:
        scale = ((high - low) * factor / INT4_LEVELS).clamp_min(1e-8).half()
        offset = (low * factor).half()
        codes = ((x - offset.float()) / scale.float()).round().clamp(0, INT4_LEVELS)
        error = ((codes * scale.float() + offset.float() - x) ** 2).sum(-1, keepdim=True)
        if best is None:
            best = [error, codes, scale, offset]
        else:
            better = error < best[0]
            best = [torch.where(better, new, old) for new, old in zip((error, codes, scale, offset), best)]
    codes = best[1].to(torch.uint8).reshape(weight.shape[0], -1)
    return codes[:, 0::2] | (codes[:, 1::2] << 4), best[2][..., 0], best[3][..., 0]


def dequantize_groups(packed: Tensor, scale: Tensor, offset: Tensor) -> Tensor:
    """The inverse of `quantize_groups`: float32 `(R, C)`."""
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(packed.shape[0], -1)  # (R, C)
    groups = codes.reshape(scale.shape[0], scale.shape[1], -1).float()
    return (groups * scale.float()[..., None] + offset.float()[..., None]).reshape(codes.shape)


def engine() -> str:
    """The quantized engine used for packing: the first of `ENGINES` that this build supports."""
    supported = torch.backends.quantized.supported_engines
    for name in ENGINES:
        if name in supported:
            return name
    raise RuntimeError(f"this PyTorch has no quantized CPU engine (supported: {supported})")


def prepack(weight: Tensor, bias: Tensor | None, name: str):
    """`weight` (a per-row quantized tensor) packed for engine `name`'s kernels, which it keeps whatever the
    global engine setting is later."""
    previous, torch.backends.quantized.engine = torch.backends.quantized.engine, name
    try:
        return torch.ops.quantized.linear_prepack(weight, bias)
    finally:
        torch.backends.quantized.engine = previous


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 / AMX): then the self-attention products,
    which stay in floating point, run in bfloat16 at twice float32's speed (relative error ~0.4 %)."""
    check = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    return bool(check and check())


class Int8Linear(nn.Module):
    """`y = x W^T + b` with W int8 `(out, in)` and per-row scales `(out,)`; x `(*, in)` float -> y `(*, out)`."""

    def __init__(self, weight: Tensor, scale: Tensor, bias: Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        zero = torch.zeros(weight.shape[0], dtype=torch.long)
        w = torch._make_per_channel_quantized_tensor(weight.cpu(), scale.double().cpu(), zero, 0)
        self.bias = None if bias is None else bias.detach().float().clone().cpu()
        self._packed = prepack(w, self.bias, engine())
        # a second copy for a few rows: the decoder's steps for one utterance (streaming finals, single files)
        few = FEW_ROWS_ENGINE in torch.backends.quantized.supported_engines and engine() == "onednn"
        self._few = prepack(w, self.bias, FEW_ROWS_ENGINE) if few else None
        self.range_row = torch.zeros(1, self.in_features)  # -1 and 1 (`row_scales`)
        self.range_row[0, :2] = torch.tensor([-1.0, 1.0])

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        return cls(*quantize_rows(linear.weight), linear.bias)

    def forward(self, x: Tensor) -> Tensor:
        few = self._few is not None and x.numel() <= FEW_ROWS * self.in_features
        packed = self._few if few else self._packed
        if not _ROW_SCALES.get():
            return torch.ops.quantized.linear_dynamic(x.contiguous(), packed, False)
        # each row scaled to largest magnitude 1, and a last row of -1 and 1: every row then has the range
        # [-1, 1] that the one input scale is made for; the bias is added once, after the scaling back
        rows = x.reshape(-1, self.in_features)
        size = rows.abs().amax(-1, keepdim=True).clamp_min(TINY)
        y = torch.ops.quantized.linear_dynamic(torch.cat([rows / size, self.range_row]), packed, False)[:-1]
        y = (y * size) if self.bias is None else (y - self.bias) * size + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Int8Embedding(nn.Module):
    """Rows of an int8 table `(V, D)` with per-row scales `(V,)` (`quantize_rows`): ids `(*)` -> `(*, D)` float32."""

    def __init__(self, weight: Tensor):
        super().__init__()
        q, scale = quantize_rows(weight)
        self.register_buffer("table", q, persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, ids: Tensor) -> Tensor:
        return self.table[ids].float() * self.scale[ids].unsqueeze(-1)


class Bf16Linear(nn.Module):
    """`y = x W^T + b` in bfloat16, float32 in and out: for products over many frames on CPUs with native
    bfloat16 (AMX / AVX512-BF16), where it is faster than int8 and, with no per-input scale, more exact."""

    def __init__(self, weight: Tensor, bias: Tensor | None, keep: bool = False):
        super().__init__()
        self.keep = keep  # output bfloat16 (keys and values that attention reads many times), not float32
        self.register_buffer("weight", weight.detach().to(torch.bfloat16), persistent=False)
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(x.to(torch.bfloat16), self.weight, self.bias)
        return y if self.keep else y.to(x.dtype)


def low_precision(weight: Tensor, bias: Tensor | None, frames: bool, keep: bool = False) -> nn.Module:
    """The fastest close-enough kernel for `weight`: bfloat16 for products over encoder frames where the CPU
    has it natively (`keep`: bfloat16 out), else int8 (few rows share the one input scale: the decoder's tokens)."""
    if frames and native_bfloat16():
        return Bf16Linear(weight, bias, keep)
    return Int8Linear(*quantize_rows(weight), bias)


def fused(linears: list[nn.Linear], frames: bool, keep: bool = False) -> nn.Module:
    """One linear for several of the same input, outputs concatenated: per-row weight scales make it compute
    what they compute one by one, in one product."""
    bias = [x.bias if x.bias is not None else x.weight.new_zeros(x.out_features) for x in linears]
    return low_precision(torch.cat([x.weight for x in linears]), torch.cat(bias), frames, keep)


def quantize_model(model: nn.Module) -> nn.Module:
    """Swap every `nn.Linear` of `model` (a SpeechTransformer or any module) for a low-precision one, in place,
    and give each attention its fused projections (`MultiHeadAttention.fused_qkv`, `fused_kv`).

    Products over frames (the encoder, the CTC head, the cross-attention keys and values) run in bfloat16
    where the CPU has it natively, everything else (the decoder's tokens) in int8: `low_precision`. The
    cross-attention keys and values (`Decoder.memory_kv`) are then kept in bfloat16.
    The model must be on the CPU. Returns the model, in eval mode.
    """
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise ValueError("int8 compute runs on the CPU only: move the model there first")
    decoder = getattr(model, "decoder", None)
    token_side = set() if decoder is None else set(decoder.modules())
    for attention in model.modules():
        if isinstance(attention, MultiHeadAttention) and isinstance(attention.query, nn.Linear):
            if attention not in token_side:  # the encoder's self-attention: query, key and value in one product
                attention.fused_qkv = fused([attention.query, attention.key, attention.value], frames=True)
                attention.attention_dtype = torch.bfloat16 if native_bfloat16() else None
                attention.query = None
            else:  # the decoder's: new tokens' queries alone, keys and values together (for its cache or memory)
                cross = any(attention is b.cross_attn for b in decoder.blocks)
                # the cross-attention keys/values stay bfloat16: half the memory and time of reading them every step
                attention.fused_kv = fused([attention.key, attention.value], frames=cross, keep=cross)
            attention.key = attention.value = None  # the fused products replace them
    if decoder is not None and isinstance(decoder.embed, nn.Embedding):
        decoder.embed = Int8Embedding(decoder.embed.weight)
    for parent in list(model.modules()):
        frames = parent not in token_side
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                setattr(parent, name, low_precision(child.weight, child.bias, frames))
    return model.eval()
