"""What the model looks at: the decoder's cross-attention and the CTC alignment of a decoded hypothesis.

`scaled_dot_product_attention` never exposes its weights, so `cross_attention` re-runs the decoder with
teacher forcing on the hypothesis (`<sos>` + tokens), captures each block's normalised cross-attention
input with a forward hook on `cross_norm`, and computes softmax(Q K^T / sqrt(d)) from the block's own
query and key projections: the same weights the model used, without touching model.py.
`ctc_alignment` is the Viterbi path of the hypothesis through the CTC head's frame posteriors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from speech_transformer.model import SpeechTransformer, padding_mask
from speech_transformer.tokenizer import BLANK_ID, SOS_EOS_ID


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
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
        weights.append(scores.masked_fill(~frames, float("-inf")).softmax(-1).nan_to_num(0.0))
    rows = padding_mask(torch.tensor([len(t) + 1 for t in tokens], device=memory.device), L)
    return torch.stack(weights, 1) * rows[:, None, None, :, None]


def ctc_alignment(log_probs: Tensor | np.ndarray, tokens: Sequence[int]) -> np.ndarray | None:
    """Viterbi (forced) alignment of `tokens` to the CTC head's frames.

    log_probs `(S, V)`: log-posteriors of the valid frames (blank = 0). Returns the best path `(S,)`:
    for each frame the index into `tokens` it emits, or -1 for blank; None when the tokens cannot fit
    (fewer frames than tokens plus repeated neighbours).
    """
    lp = np.asarray(log_probs, dtype=np.float64)
    labels = np.full(2 * len(tokens) + 1, BLANK_ID)  # blank, t1, blank, t2, ..., blank
    labels[1::2] = tokens
    n, S = len(labels), lp.shape[0]
    skip = np.zeros(n, dtype=bool)  # a token may follow the previous token directly unless they are equal
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    score = np.full(n, -np.inf)
    score[:2] = lp[0, labels[:2]] if S else -np.inf
    back = np.zeros((S, n), dtype=np.int64)
    for t in range(1, S):
        moves = np.full((3, n), -np.inf)  # from the same state, the one before, or two before
        moves[0], moves[1, 1:] = score, score[:-1]
        moves[2, 2:] = np.where(skip[2:], score[:-2], -np.inf)
        back[t] = moves.argmax(0)
        score = moves.max(0) + lp[t, labels]
    ends = [n - 1] if not tokens else [n - 1, n - 2]
    state = max(ends, key=lambda s: score[s])
    if S == 0 or not np.isfinite(score[state]):
        return None
    path = np.empty(S, dtype=np.int64)
    for t in range(S - 1, -1, -1):
        path[t] = state
        state -= back[t, state]
    return np.where(path % 2 == 1, path // 2, -1)


def token_spans(path: np.ndarray, num_tokens: int) -> list[tuple[int, int]]:
    """A CTC path -> for each token its (first frame, end frame), the end running up to the next token."""
    starts = [int(np.flatnonzero(path == i)[0]) for i in range(num_tokens)]
    return [(s, e) for s, e in zip(starts, starts[1:] + [len(path)])]
