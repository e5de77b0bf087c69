"""What the model looks at: the decoder's cross-attention over the encoder frames for a decoded hypothesis.

`scaled_dot_product_attention` never exposes its weights, so `cross_attention` re-runs the decoder with
teacher forcing on the hypothesis (`<sos>` + tokens), captures each block's normalised cross-attention
input with a forward hook on `cross_norm`, and computes softmax(Q K^T / sqrt(d)) from the block's own
query and key projections: the same weights the model used, without touching model.py.
(Token times come from the one aligner, `speech_transformer.model.align`.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from speech_transformer.model.transformer import SpeechTransformer, padding_mask
from speech_transformer.text.tokenizer import SOS_EOS_ID


@torch.no_grad()
def cross_attention(model: SpeechTransformer, memory: Tensor, memory_lengths: Tensor,
                    tokens: Sequence[Sequence[int]], prompt: Sequence[int] = (SOS_EOS_ID,)) -> Tensor:
    """Cross-attention weights of every decoder block and head.

    memory `(B, S, D)` encoder states, memory_lengths `(B,)`, tokens: B hypotheses without `<sos>`/`<eos>`.
    Returns `(B, layers, heads, L + 1, S)` with L the longest hypothesis: row i is the query that
    predicts token i (row L_b predicts `<eos>`). Each valid row sums to 1 over the valid frames;
    padded rows and padded frames are 0. The model should be in eval mode (no dropout).
    The decoder reads `prompt` first (the tokenizer's; `<sos>` for our models); its rows before the last are dropped.
    """
    B, S, _ = memory.shape
    L, P = max((len(t) for t in tokens), default=0) + 1, len(prompt)
    inputs = torch.full((B, P - 1 + L), prompt[-1], dtype=torch.long, device=memory.device)
    inputs[:, :P] = torch.as_tensor(list(prompt), dtype=torch.long)
    for b, t in enumerate(tokens):
        inputs[b, P:len(t) + P] = torch.as_tensor(list(t), dtype=torch.long)
    blocks = model.decoder.blocks
    queries: dict[int, Tensor] = {}
    hooks = [block.cross_norm.register_forward_hook(lambda _m, _i, out, i=i: queries.__setitem__(i, out))
             for i, block in enumerate(blocks)]
    try:
        memory_kv = model.decoder.memory_kv(memory)
        model.decoder(inputs, memory_kv, memory_lengths)  # causal: padding after a row never changes it
    finally:
        for hook in hooks:
            hook.remove()
    frames = padding_mask(memory_lengths.to(memory.device), S)[:, None, None, :]  # (B, 1, 1, S)
    weights = []
    for i, block in enumerate(blocks):
        attn = block.cross_attn
        q = attn.heads(attn.query(queries[i][:, P - 1:]))  # (B, H, L, D/H)
        k = memory_kv[i][0]  # (B, H, S, D/H)
        scores = (q @ k.transpose(-1, -2).to(q.dtype)).float() / math.sqrt(q.shape[-1])
        weights.append(scores.masked_fill(~frames, float("-inf")).softmax(-1).nan_to_num(0.0))
    rows = padding_mask(torch.tensor([len(t) + 1 for t in tokens], device=memory.device), L)
    return torch.stack(weights, 1) * rows[:, None, None, :, None]
