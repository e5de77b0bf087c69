"""The model: log-mel frames -> transformer encoder (+ CTC head) -> autoregressive transformer decoder.

Reads top to bottom: config and presets, attention, the two kinds of block, encoder (its stems in
`model.subsampling`), decoder,
and the `SpeechTransformer` that ties them together with the joint CTC/attention loss.
Shapes: B batch, F feature frames, S encoder frames (F/4 by default, F/2 with the conv1d stem), L tokens,
D model width, V vocabulary. The same classes, configured, also hold OpenAI Whisper's weights
(see `speech_transformer.importers.whisper`): conv1d stem, learned position tables, unscaled embeddings,
no key bias, no CTC head, Whisper's front end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speech_transformer.audio.loading import HOP_LENGTH, N_FFT, N_MELS, SAMPLE_RATE
from speech_transformer.audio.features import FrontEnd, WhisperFrontEnd
from speech_transformer.model.kv_cache import KVCache
from speech_transformer.model.subsampling import Conv1dSubsampling, ConvSubsampling, StackSubsampling
from speech_transformer.text.tokenizer import BLANK_ID, SOS_EOS_ID


@dataclass
class ModelConfig:
    vocab_size: int = 256
    n_mels: int = N_MELS
    d_model: int = 256
    n_heads: int = 4
    d_ff: int = 1024
    encoder_layers: int = 12
    decoder_layers: int = 6
    dropout: float = 0.1
    subsampling_channels: int = 0  # 0: same as d_model
    normalization: str = "global"  # feature normalisation, see FrontEnd
    tie_embeddings: bool = True
    frontend: str = "log_mel"  # "log_mel" (FrontEnd), "whisper" (WhisperFrontEnd, 30 s windows) or
    # "whisper_log_mel" (Whisper's features over the audio as given: models fine-tuned from Whisper's encoder)
    trailing_silence: float = 0.0  # seconds of silence "whisper_log_mel" appends to each input (a Whisper
    # decoder without its 30 s window needs to see the speech end: WhisperFrontEnd)
    subsampling: str = "conv2d"  # "conv2d" (x4 in time) or "conv1d" (Whisper's stem, x2)
    encoder_positions: str = "sinusoidal"  # "sinusoidal" (computed) or "learned" (a stored table)
    decoder_positions: str = "sinusoidal"
    max_source_positions: int = 1500  # rows of a learned table (encoder frames)
    max_target_positions: int = 448  # (decoder tokens)
    scale_embeddings: bool = True  # inputs x sqrt(D) before positions are added (Whisper: no)
    decoder_scale_embeddings: bool | None = None  # the decoder's own choice (None: as scale_embeddings); a new
    # decoder on Whisper's unscaled encoder needs it, or its small initial embeddings drown under the positions
    key_bias: bool = True  # (Whisper: no bias on the attention keys)
    ctc: bool = True  # a CTC head on the encoder (Whisper has none)
    ctc_vocab_size: int = 0  # its own vocabulary (0: the decoder's); a distilled student spells CTC in our pieces
    # cheaper or stronger encoders (the defaults are the original model)
    subsampling_factor: int = 4  # feature frames per encoder frame: conv2d 4, 6 or 8; stack any (conv1d: 2)
    conformer_conv: bool = False  # a Conformer convolution module between self-attention and feed-forward
    conv_kernel: int = 15  # its depthwise kernel (odd)
    intermediate_ctc_layer: int = 0  # >0: the CTC head also reads this encoder layer's output (training loss only)
    ctc_branch_layers: int = 0  # >0: the CTC head reads its own copy of the encoder's top N blocks and final norm
    # (a distilled student: the teacher's top blocks feed its decoder, those fine-tuned for CTC its CTC head)

    def __post_init__(self):
        for name, value, allowed in (("frontend", self.frontend, ("log_mel", "whisper", "whisper_log_mel")),
                                     ("subsampling", self.subsampling, ("conv2d", "conv1d", "stack")),
                                     ("encoder_positions", self.encoder_positions, ("sinusoidal", "learned")),
                                     ("decoder_positions", self.decoder_positions, ("sinusoidal", "learned"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, not {value!r}")
        if self.trailing_silence and self.frontend != "whisper_log_mel":
            raise ValueError(f"trailing_silence is for the whisper_log_mel front end, not {self.frontend!r}")
        if self.subsampling == "conv2d" and self.subsampling_factor not in (4, 6, 8):
            raise ValueError(f"the conv2d stem subsamples by 4, 6 or 8, not {self.subsampling_factor}")
        if self.conformer_conv and self.conv_kernel % 2 == 0:
            raise ValueError(f"conv_kernel must be odd, not {self.conv_kernel}")
        if not 0 <= self.intermediate_ctc_layer < max(1, self.encoder_layers):
            raise ValueError(f"intermediate_ctc_layer must be in 0..{self.encoder_layers - 1}")
        if not 0 <= self.ctc_branch_layers < max(1, self.encoder_layers) or (
                self.ctc_branch_layers and (not self.ctc or self.intermediate_ctc_layer)):
            raise ValueError("ctc_branch_layers must be below encoder_layers, with a CTC head and no "
                             "intermediate_ctc_layer")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(d_model=160, n_heads=4, d_ff=640, encoder_layers=8, decoder_layers=4, subsampling_channels=64),
    "small": ModelConfig(d_model=256, n_heads=4, d_ff=1536, encoder_layers=12, decoder_layers=6,
                         subsampling_channels=128),
    "base": ModelConfig(d_model=512, n_heads=8, d_ff=2048, encoder_layers=12, decoder_layers=6),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)


def sinusoids(length: int, dim: int, offset: int = 0) -> Tensor:
    """Sinusoidal position encodings `(length, dim)` for positions offset .. offset+length-1."""
    position = torch.arange(offset, offset + length, dtype=torch.float32)[:, None]
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * inv_freq)
    pe[:, 1::2] = torch.cos(position * inv_freq)
    return pe


def padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """`(B, max_len)` bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class MultiHeadAttention(nn.Module):
    """Self- or cross-attention through `scaled_dot_product_attention`, with an optional KV cache.

    `fused_qkv` and `fused_kv` (set for inference by `quantize.quantize_model`) compute the query, key and
    value projections as one matrix product (self-attention without given keys/values) and the keys and
    values as one (`project_kv`): fewer, larger products. `attention_dtype` (e.g. bfloat16 on CPUs that
    multiply it natively) is the dtype of that fused self-attention's products, the encoder's main cost."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, key_bias: bool = True):
        super().__init__()
        self.n_heads = n_heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model, bias=key_bias)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.fused_qkv: nn.Module | None = None  # (B, T, D) -> (B, T, 3D): [query | key | value]
        self.fused_kv: nn.Module | None = None  # (B, S, D) -> (B, S, 2D): [key | value]
        self.attention_dtype: torch.dtype | None = None

    def heads(self, x: Tensor) -> Tensor:  # (B, T, D) -> (B, H, T, D/H)
        return x.view(x.shape[0], x.shape[1], self.n_heads, -1).transpose(1, 2)

    def project_kv(self, source: Tensor) -> tuple[Tensor, Tensor]:
        if self.fused_kv is not None:
            k, v = self.fused_kv(source).chunk(2, dim=-1)
            return self.heads(k), self.heads(v)
        return self.heads(self.key(source)), self.heads(self.value(source))

    def forward(self, x: Tensor, source: Tensor | None = None, mask: Tensor | None = None,
                kv: tuple[Tensor, Tensor] | None = None, causal: bool = False) -> Tensor:
        """x `(B, T, D)`; keys/values from `source` (default x) or precomputed `kv`; mask broadcasts to `(B, H, T, S)`."""
        if kv is None and source is None and self.fused_qkv is not None:
            qkv = self.fused_qkv(x)
            qkv = qkv if self.attention_dtype is None else qkv.to(self.attention_dtype)
            q, k, v = (self.heads(t) for t in qkv.chunk(3, dim=-1))
        else:
            q = self.heads(self.query(x))
            k, v = kv if kv is not None else self.project_kv(x if source is None else source)
            q = q.to(k.dtype)  # bfloat16 keys/values (quantize_model's cross-attention memory) take bfloat16 queries
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(x.shape).to(x.dtype))


def feed_forward(d_model: int, d_ff: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class ConformerConvolution(nn.Module):
    """Conformer's convolution module (Gulati et al., 2020): LN, pointwise conv + GLU, depthwise conv,
    norm, Swish, pointwise conv. LayerNorm stands in for BatchNorm (small, variable-length CPU batches);
    padded frames are zeroed before the depthwise conv so they never leak into valid ones."""

    def __init__(self, d_model: int, kernel: int):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=d_model)
        self.depthwise_norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, valid: Tensor | None) -> Tensor:
        """x `(B, S, D)`, valid `(B, S, 1)` bool (None: no frame is padded)."""
        h = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        h = h if valid is None else h.masked_fill(~valid, 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        return self.pointwise_out(F.silu(self.depthwise_norm(h)))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm: x + SelfAttn(LN(x)), [x + ConformerConv(x)], then x + FFN(LN(x))."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.attn_norm = nn.LayerNorm(c.d_model)
        self.attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.key_bias)
        self.conv = ConformerConvolution(c.d_model, c.conv_kernel) if c.conformer_conv else None
        self.ff_norm = nn.LayerNorm(c.d_model)
        self.ff = feed_forward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """x `(B, S, D)`, mask `(B, 1, 1, S)` True on valid frames (None: none padded)."""
        x = x + self.drop(self.attn(self.attn_norm(x), mask=mask))
        if self.conv is not None:
            x = x + self.drop(self.conv(x, None if mask is None else mask[:, 0, 0, :, None]))
        return x + self.drop(self.ff(self.ff_norm(x)))


class DecoderBlock(nn.Module):
    """Pre-LayerNorm: causal self-attention, cross-attention over the encoder, feed-forward."""

    def __init__(self, c: ModelConfig):
        super().__init__()
        self.self_norm = nn.LayerNorm(c.d_model)
        self.self_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.key_bias)
        self.cross_norm = nn.LayerNorm(c.d_model)
        self.cross_attn = MultiHeadAttention(c.d_model, c.n_heads, c.dropout, c.key_bias)
        self.ff_norm = nn.LayerNorm(c.d_model)
        self.ff = feed_forward(c.d_model, c.d_ff, c.dropout)
        self.drop = nn.Dropout(c.dropout)

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], memory_mask: Tensor | None, cache: KVCache,
                layer: int) -> Tensor:
        """x `(N, T, D)`: N = B utterances x W hypotheses over the B utterances' `memory_kv` `(B, H, S, D/H)`."""
        h = self.self_norm(x)
        T, past = x.shape[1], cache.length
        k, v = cache.update(layer, *self.self_attn.project_kv(h))  # new positions attend to all cached ones
        after = None if past == 0 or T == 1 else torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)
        x = x + self.drop(self.self_attn(h, kv=(k, v), mask=after, causal=past == 0))
        h = self.cross_norm(x)
        # an utterance's W hypotheses are W x T queries of its keys/values (no copy of them per hypothesis)
        h = h.reshape(memory_kv[0].shape[0], -1, h.shape[-1])
        x = x + self.drop(self.cross_attn(h, kv=memory_kv, mask=memory_mask).reshape(x.shape))
        return x + self.drop(self.ff(self.ff_norm(x)))


class Positions(nn.Module):
    """Position encodings `(L, D)` for positions offset .. offset+L-1: computed sinusoids or a learned table."""

    def __init__(self, kind: str, max_positions: int, d_model: int):
        super().__init__()
        self.d_model = d_model
        self.table = nn.Embedding(max_positions, d_model) if kind == "learned" else None

    def forward(self, length: int, offset: int = 0) -> Tensor:
        if self.table is None:
            return sinusoids(length, self.d_model, offset)
        if offset + length > self.table.num_embeddings:
            raise ValueError(f"{offset + length} positions, but the model has only {self.table.num_embeddings}")
        return self.table.weight[offset: offset + length]


class Encoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.subsampling = (Conv1dSubsampling(c.n_mels, c.d_model) if c.subsampling == "conv1d" else
                            StackSubsampling(c.n_mels, c.d_model, c.subsampling_factor) if c.subsampling == "stack"
                            else ConvSubsampling(c.n_mels, c.subsampling_channels or c.d_model, c.d_model,
                                                 c.subsampling_factor))
        self.intermediate_layer = c.intermediate_ctc_layer
        self.positions = Positions(c.encoder_positions, c.max_source_positions, c.d_model)
        self.scale = math.sqrt(c.d_model) if c.scale_embeddings else 1.0
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.encoder_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.ctc_blocks = nn.ModuleList(EncoderBlock(c) for _ in range(c.ctc_branch_layers))  # ModelConfig
        self.ctc_norm = nn.LayerNorm(c.d_model) if c.ctc_branch_layers else None

    def forward(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """feats `(B, F, n_mels)`, lengths `(B,)` -> encoder states `(B, S, D)`, lengths `(B,)`."""
        x, lengths, _ = self.forward_with_intermediate(feats, lengths)
        return x, lengths

    def forward_with_intermediate(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """As `forward`, plus the (final-normed) output of block `intermediate_ctc_layer` (None when 0)."""
        x, lengths = self.embed(feats, lengths)
        return self.blocks_from(x, lengths)

    def forward_with_ctc(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """As `forward`, plus what the CTC head reads `(B, S, D)`: the encoder states themselves, or with
        `ctc_branch_layers` its own top blocks' normed output, from the same lower blocks."""
        if not self.ctc_blocks:
            x, lengths = self.forward(feats, lengths)
            return x, lengths, x
        x, lengths = self.embed(feats, lengths)
        x, lengths, _ = self.blocks_from(x, lengths, 0, len(self.blocks) - len(self.ctc_blocks))
        mask = None if bool((lengths == x.shape[1]).all()) else padding_mask(lengths, x.shape[1])[:, None, None, :]
        branch = x
        for block in self.ctc_blocks:
            branch = block(branch, mask)
        memory, lengths, _ = self.blocks_from(x, lengths, len(self.blocks) - len(self.ctc_blocks))
        return memory, lengths, self.ctc_norm(branch)

    def embed(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The stem and positions: feats `(B, F, n_mels)` -> the first block's input `(B, S, D)`, lengths `(B,)`."""
        x, lengths = self.subsampling(feats, lengths)
        return self.drop(x * self.scale + self.positions(x.shape[1]).to(x)), lengths

    def blocks_from(self, x: Tensor, lengths: Tensor, start: int = 0, stop: int | None = None
                    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Blocks start..stop-1 over `(B, S, D)` states; normed output (raw when `stop` ends early), lengths,
        and the intermediate CTC layer's normed output (None when 0 or not reached)."""
        # no mask when nothing is padded (Whisper's 30 s windows, one utterance): SDPA's plain kernel
        mask = None if bool((lengths == x.shape[1]).all()) else padding_mask(lengths, x.shape[1])[:, None, None, :]
        intermediate = None
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            x = self.blocks[i](x, mask)
            if i + 1 == self.intermediate_layer:
                intermediate = self.norm(x)
        return (self.norm(x) if stop == len(self.blocks) else x), lengths, intermediate


class Decoder(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        nn.init.normal_(self.embed.weight, std=c.d_model**-0.5)  # unit variance after scaling by sqrt(D)
        self.positions = Positions(c.decoder_positions, c.max_target_positions, c.d_model)
        scaled = c.scale_embeddings if c.decoder_scale_embeddings is None else c.decoder_scale_embeddings
        self.scale = math.sqrt(c.d_model) if scaled else 1.0
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.decoder_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.output = nn.Linear(c.d_model, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.output.weight = self.embed.weight

    def memory_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys/values of each block, computed once per utterance."""
        return [block.cross_attn.project_kv(memory) for block in self.blocks]

    def forward(self, tokens: Tensor, memory_kv: list[tuple[Tensor, Tensor]], memory_lengths: Tensor,
                cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        """tokens `(N, L)` -> logits `(N, L, V)` and the self-attention cache.

        `memory_kv` (`memory_kv`) and `memory_lengths` `(B,)` are B utterances'; N = B x W rows, W hypotheses
        of each utterance (rows b*W .. b*W + W-1), which share its keys and values. With `cache` (from the
        previous call), `tokens` holds only the new positions.
        """
        cache = KVCache() if cache is None else cache
        x = self.embed(tokens) * self.scale
        x = self.drop(x + self.positions(tokens.shape[1], cache.length).to(x))
        S = memory_kv[0][0].shape[2]
        # no mask when nothing is padded (e.g. Whisper's 30 s windows): SDPA's faster kernels need none
        memory_mask = None if bool((memory_lengths == S).all()) else padding_mask(memory_lengths, S)[:, None, None, :]
        for i, block in enumerate(self.blocks):
            x = block(x, memory_kv[i], memory_mask, cache, i)
        cache.advance(tokens.shape[1])
        return self.output(self.norm(x)), cache


@dataclass
class Loss:
    total: Tensor
    ctc: Tensor
    attention: Tensor
    tokens: int  # target tokens in the batch (for per-token reporting)


class SpeechTransformer(nn.Module):
    """Front end, encoder with CTC head, and decoder: the whole recogniser as one module."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.frontend = (FrontEnd(config.n_mels, config.normalization) if config.frontend == "log_mel" else
                         WhisperFrontEnd(config.n_mels, config.frontend == "whisper", config.trailing_silence))
        self.encoder = Encoder(config)
        self.ctc_head = nn.Linear(config.d_model, config.ctc_vocab_size or config.vocab_size) if config.ctc else None
        self.decoder = Decoder(config)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def encoder_frame_seconds(self) -> float:
        return self.encoder.subsampling.factor * HOP_LENGTH / SAMPLE_RATE

    @property
    def encoder_frame_offset(self) -> float:
        """Start of encoder frame 0, in seconds: frame s spans [offset + s x frame, offset + (s + 1) x frame),
        centred on the feature frames it sees, so word times follow the stem and the front end."""
        sub = self.encoder.subsampling
        if isinstance(sub, ConvSubsampling):  # unpadded convolutions: the receptive field's middle
            field, stride = 1, 1
            for kernel, s in sub.LAYERS[sub.factor]:
                field, stride = field + (kernel - 1) * stride, stride * s
            centre = (field - 1) / 2
        elif isinstance(sub, StackSubsampling):
            centre = (sub.factor - 1) / 2
        else:  # Whisper's padded conv1d stem keeps frame centres
            centre = 0.0
        first = N_FFT / 2 / SAMPLE_RATE if self.config.frontend == "log_mel" else 0.0  # a non-centred STFT frame
        return first + centre * HOP_LENGTH / SAMPLE_RATE - self.encoder_frame_seconds / 2

    def encode(self, feats: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(feats, lengths)

    def encode_with_ctc(self, feats: Tensor, lengths: Tensor, ctc: bool = True
                        ) -> tuple[Tensor, Tensor, Tensor | None]:
        """feats `(B, F, n_mels)` -> encoder states `(B, S, D)`, lengths `(B,)` and the CTC head's
        log-probabilities `(B, S, V)` (None without a head, or not asked for: `ctc=False`): what every
        inference path starts from."""
        if not ctc or self.ctc_head is None:
            memory, lengths = self.encoder(feats, lengths)
            return memory, lengths, None
        memory, lengths, ctc_input = self.encoder.forward_with_ctc(feats, lengths)
        return memory, lengths, self._ctc(ctc_input)

    def ctc_log_probs(self, memory: Tensor) -> Tensor:
        """Encoder states `(B, S, D)` -> `(B, S, V)` log-probabilities, blank = 0."""
        if self.ctc_head is None:
            raise ValueError("this model has no CTC head (decode with ctc_weight=0 and method='attention')")
        if self.encoder.ctc_blocks:
            raise ValueError("this model's CTC head reads its own top encoder blocks, not the encoder states: "
                             "use encode_with_ctc")
        return self._ctc(memory)

    def _ctc(self, states: Tensor) -> Tensor:
        return self.ctc_head(states).float().log_softmax(-1)

    def forward(self, feats: Tensor, feat_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
                ctc_weight: float = 0.3, label_smoothing: float = 0.1,
                prompt: tuple[int, ...] = (SOS_EOS_ID,), eos: int = SOS_EOS_ID,
                intermediate_ctc_weight: float = 0.0) -> Loss:
        """Joint loss. targets `(B, L)` token ids (no prompt/eos), padded with anything past target_lengths.

        The decoder reads `prompt` + targets and must predict targets + eos. With `intermediate_ctc_layer`
        set, the CTC term is (1 - w) x CTC(last layer) + w x CTC(that layer), w = `intermediate_ctc_weight`.
        """
        memory, memory_lengths, intermediate = self.encoder.forward_with_intermediate(feats, feat_lengths)
        return self.loss(memory, memory_lengths, targets, target_lengths, ctc_weight, label_smoothing, prompt, eos,
                         intermediate, intermediate_ctc_weight)

    def loss(self, memory: Tensor, memory_lengths: Tensor, targets: Tensor, target_lengths: Tensor,
             ctc_weight: float = 0.3, label_smoothing: float = 0.1, prompt: tuple[int, ...] = (SOS_EOS_ID,),
             eos: int = SOS_EOS_ID, intermediate: Tensor | None = None, intermediate_ctc_weight: float = 0.0) -> Loss:
        """The joint loss of `forward` from encoder states `(B, S, D)` (e.g. computed from cached lower blocks)."""
        B, L = targets.shape
        valid = padding_mask(target_lengths, L)
        if ctc_weight > 0:
            ctc = self._ctc_loss(memory, memory_lengths, targets.masked_fill(~valid, 0), target_lengths)
            if intermediate is not None and intermediate_ctc_weight > 0:
                inter = self._ctc_loss(intermediate, memory_lengths, targets.masked_fill(~valid, 0), target_lengths)
                ctc = (1 - intermediate_ctc_weight) * ctc + intermediate_ctc_weight * inter
        else:
            ctc = memory.new_zeros(())
        start = torch.tensor(prompt, dtype=targets.dtype, device=targets.device).expand(B, len(prompt))
        decoder_in = torch.cat([start, targets.masked_fill(~valid, eos)], dim=1)  # (B, P+L)
        decoder_out = torch.cat([targets, targets[:, :1]], dim=1).masked_fill(~padding_mask(target_lengths + 1, L + 1),
                                                                               -100)
        decoder_out[torch.arange(B), target_lengths] = eos  # right after the last token
        logits, _ = self.decoder(decoder_in, self.decoder.memory_kv(memory), memory_lengths)
        logits = logits[:, len(prompt) - 1:]  # (B, L+1, V): the predictions after the prompt's last token
        attention = F.cross_entropy(logits.float().flatten(0, 1), decoder_out.flatten(), ignore_index=-100,
                                    label_smoothing=label_smoothing, reduction="sum") / B
        return Loss(ctc_weight * ctc + (1 - ctc_weight) * attention, ctc.detach(), attention.detach(),
                    int(target_lengths.sum()) + B)

    def _ctc_loss(self, memory: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
        """Summed CTC loss over the batch, divided by the batch size."""
        return F.ctc_loss(self.ctc_log_probs(memory).transpose(0, 1), targets, lengths, target_lengths,
                          blank=BLANK_ID, reduction="sum", zero_infinity=True) / targets.shape[0]
