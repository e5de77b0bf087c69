"""The decoder's self-attention cache for incremental decoding (greedy, sampling and beam search)."""

from __future__ import annotations

import torch
from torch import Tensor


class KVCache:
    """The decoder's self-attention keys and values `(N, H, L, D/H)` per block, in buffers with room to grow:
    a new position is written in place (no copy of the ones before it), and beam search's reordering of the N
    rows copies only the filled positions of the rows that change."""

    GROW = 64  # positions added when a buffer is full

    def __init__(self):
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.length = 0  # positions filled (in every block)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v `(N, H, T, D/H)` of block `layer` -> all its positions so far `(N, H, L + T, D/H)`."""
        if layer == len(self.keys):  # the first call: keep the tensors as they are
            self.keys.append(k)
            self.values.append(v)
            return k, v
        end = self.length + k.shape[2]
        if end > self.keys[layer].shape[2]:
            self.keys[layer], self.values[layer] = (self._grown(buf, end + self.GROW)
                                                    for buf in (self.keys[layer], self.values[layer]))
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def _grown(self, buf: Tensor, capacity: int) -> Tensor:
        new = buf.new_empty(buf.shape[0], buf.shape[1], capacity, buf.shape[3])
        new[:, :, :self.length] = buf[:, :, :self.length]
        return new

    def advance(self, positions: int) -> None:
        self.length += positions

    def truncate(self, length: int) -> None:
        """Forget the positions from `length` on (a draft's tokens that the decoder did not confirm)."""
        self.length = min(self.length, length)

    def keep(self, rows: Tensor) -> None:
        """Only these rows `(N',)` stay (utterances that are done leave the batch)."""
        for buffers in (self.keys, self.values):
            for i, buf in enumerate(buffers):
                buffers[i] = buf.index_select(0, rows)

    def reorder(self, rows: Tensor) -> None:
        """Row i becomes a copy of old row rows[i] `(N,)` (beam search: the hypothesis it extends)."""
        moved = (rows != torch.arange(len(rows), device=rows.device)).nonzero()[:, 0]
        if len(moved) == 0:
            return
        source = rows[moved]
        for buffers in (self.keys, self.values):
            for buf in buffers:
                filled = buf[:, :, :self.length]
                filled.index_copy_(0, moved, filled.index_select(0, source))
