"""The encoder's stems: output lengths as documented, and padded frames never change a valid output frame."""

import pytest
import torch

from speech_transformer.model.subsampling import Conv1dSubsampling, ConvSubsampling, StackSubsampling

STEMS = {"conv2d x4": lambda: ConvSubsampling(80, 8, 32, 4), "conv2d x6": lambda: ConvSubsampling(80, 8, 32, 6),
         "stack x4": lambda: StackSubsampling(80, 32, 4), "conv1d x2": lambda: Conv1dSubsampling(80, 32)}


@pytest.mark.parametrize("name", STEMS)
def test_lengths_and_padding(name):
    torch.manual_seed(0)
    stem = STEMS[name]().eval()
    feats, lengths = torch.randn(2, 101, 80), torch.tensor([101, 60])
    out, out_lengths = stem(feats, lengths)
    assert out.shape[0] == 2 and out.shape[2] == 32
    assert out_lengths.tolist() == stem.output_lengths(lengths).tolist() and out.shape[1] >= int(out_lengths[0])
    alone, alone_lengths = stem(feats[1:, :60], lengths[1:])
    n = int(alone_lengths[0])
    assert n == int(out_lengths[1])
    if name != "conv1d x2":  # Whisper's stem pads in time, as Whisper does: only the others promise this
        assert torch.allclose(out[1, :n], alone[0, :n], atol=1e-5)
