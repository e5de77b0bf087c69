"""Tests of speech_transformer/model/kv_cache.py: the decoder's self-attention cache."""

import torch

from conftest import tiny_model


def test_kv_cache_equals_full_recomputation():
    model = tiny_model()
    feats = torch.randn(2, 200, 80)
    memory, lengths = model.encode(feats, torch.tensor([200, 150]))
    memory_kv = model.decoder.memory_kv(memory)
    tokens = torch.randint(2, 64, (2, 12))
    with torch.no_grad():
        full, _ = model.decoder(tokens, memory_kv, lengths)
        cache, steps = None, []
        for t in range(tokens.shape[1]):
            logits, cache = model.decoder(tokens[:, t: t + 1], memory_kv, lengths, cache)
            steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_kv_cache_grows_in_place_and_reorders_rows_as_beam_search_does():
    """Step by step with reorders (and past the buffer's first capacity) equals the reordered sequences in full."""
    model = tiny_model()
    with torch.no_grad():
        memory, lengths = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
        memory_kv = model.decoder.memory_kv(memory)
        g = torch.Generator().manual_seed(0)
        tokens = torch.randint(2, 64, (4, 3), generator=g)  # a 3-token prompt on 4 rows
        logits, cache = model.decoder(tokens, memory_kv, lengths)
        for step in range(70):
            rows = torch.randint(0, 4, (4,), generator=g) if step % 3 else torch.arange(4)
            new = torch.randint(2, 64, (4, 1), generator=g)
            cache.reorder(rows)
            tokens = torch.cat([tokens[rows], new], dim=1)
            logits, cache = model.decoder(new, memory_kv, lengths, cache)
        full, _ = model.decoder(tokens, memory_kv, lengths)
    assert cache.length == tokens.shape[1] == 73
    torch.testing.assert_close(logits[:, -1], full[:, -1], atol=1e-4, rtol=1e-4)


def test_several_new_positions_after_a_cache_attend_causally_and_truncate_forgets_positions():
    """A draft read after the prompt (several positions with a cache) equals the whole sequence at once; after
    `truncate`, the positions fed again give the same logits as before."""
    model = tiny_model()
    with torch.no_grad():
        memory, lengths = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
        memory_kv = model.decoder.memory_kv(memory)
        tokens = torch.randint(2, 64, (1, 12), generator=torch.Generator().manual_seed(0))
        full, _ = model.decoder(tokens, memory_kv, lengths)
        first, cache = model.decoder(tokens[:, :3], memory_kv, lengths)
        rest, cache = model.decoder(tokens[:, 3:], memory_kv, lengths, cache)
        torch.testing.assert_close(torch.cat([first, rest], dim=1), full, atol=1e-4, rtol=1e-4)
        cache.truncate(7)
        again, cache = model.decoder(tokens[:, 7:9], memory_kv, lengths, cache)
    assert cache.length == 9
    torch.testing.assert_close(again, full[:, 7:9], atol=1e-4, rtol=1e-4)
