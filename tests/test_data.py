import pytest
import torch

from speech_transformer.training.data import DurationBatchSampler, SpeechDataset, Utterance, collate, filter_by_duration


def durations(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=g) * 15 + 0.5).tolist()


@pytest.mark.parametrize("world, accumulation", [(1, 1), (2, 1), (1, 2), (2, 3)])
def test_sampler_respects_budget_and_covers_every_utterance_once(world, accumulation):
    d = durations()
    seen = []
    for epoch in range(2):
        per_rank = []
        for rank in range(world):
            s = DurationBatchSampler(d, 120.0, world, rank, accumulation, seed=3)
            s.set_epoch(epoch)
            batches = list(s)
            per_rank.append(batches)
            for b in batches:
                assert len(b) * max(d[i] for i in b) <= 120.0 / (world * accumulation) + 1e-9
        assert len({len(b) for b in per_rank}) == 1  # every rank takes the same number of steps
        used = sorted(i for batches in per_rank for b in batches for i in b)
        assert used == list(range(len(d)))
        seen.append([b for batches in per_rank for b in batches])
    assert seen[0] != seen[1]  # the order changes with the epoch


def test_sampler_plan_is_independent_of_how_steps_are_split():
    d = durations(200, seed=1)
    ddp = [list(DurationBatchSampler(d, 100.0, 2, r, 1, seed=5)) for r in range(2)]
    accumulated = list(DurationBatchSampler(d, 100.0, 1, 0, 2, seed=5))
    assert accumulated[0::2] == ddp[0] and accumulated[1::2] == ddp[1]


def test_sampler_resumes_mid_epoch_and_refuses_overlong_utterances():
    d = durations(100)
    s = DurationBatchSampler(d, 60.0, seed=2)
    full = list(s)
    s.set_epoch(0, start_step=7)
    assert list(s) == full[7:] and len(s.step_sizes()) == len(full) - 7
    with pytest.raises(ValueError, match="longer than the micro-batch budget"):
        DurationBatchSampler([1.0, 50.0], 40.0)


def test_dataset_and_collate(tmp_path, tokenizer, librispeech_train):
    utts = filter_by_duration(librispeech_train[:6], max_duration=20.0)
    ds = SpeechDataset(utts, tokenizer, speed_factors=(0.9, 1.1), cache_dir=tmp_path / "cache", seed=1)
    a1, t1 = ds[0]
    assert (tmp_path / "cache" / f"{utts[0].id}.npy").exists()
    a2, _ = ds[0]  # from the cache, same speed factor: same audio up to int16 rounding
    assert torch.allclose(a1, a2, atol=1e-3)
    assert abs(len(a1) / 16000 - utts[0].duration / 0.9) < 0.1 or abs(len(a1) / 16000 - utts[0].duration / 1.1) < 0.1
    assert tokenizer.decode(t1) == utts[0].text
    batch = collate([ds[i] for i in range(3)])
    assert batch["audio"].shape[0] == 3 and batch["targets"].shape[0] == 3
    assert batch["audio_lengths"].max() == batch["audio"].shape[1]


def test_frame_batches_bound_padded_frames_and_subsample():
    import random

    from speech_transformer.training.data import frame_batches

    lengths = [50] * 10 + [500] * 10
    batches = frame_batches(lengths, 2000, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(20))  # every row once
    assert all(len(b) * max(lengths[i] for i in b) <= 2000 for b in batches)
    shared = frame_batches(lengths, 2000, random.Random(0), share=[0.2] * 10 + [1.0] * 10)
    kept = sorted(i for b in shared for i in b)
    assert kept[-10:] == list(range(10, 20)) and len(kept) < 20  # the long rows always, a share of the short
