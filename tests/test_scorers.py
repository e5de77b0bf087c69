"""Tests of speech_transformer/decoding/scorers.py: the CTC prefix scorer."""

import pytest
import torch
import torch.nn.functional as F

from speech_transformer.decoding.scorers import CTCPrefixScorer, log_recursion
from speech_transformer.text.tokenizer import SOS_EOS_ID


@pytest.fixture(scope="module")
def default_recognizer():
    from speech_transformer.recognition.recognizer import Recognizer

    return Recognizer.from_dir(None)


def test_ctc_prefix_scorer_full_sequence_matches_ctc_loss():
    torch.manual_seed(0)
    S, V = 30, 7
    log_probs = torch.randn(2, S, V).log_softmax(-1)
    lengths = torch.tensor([S, 22])
    target = [3, 4, 4, 2]
    scorer = CTCPrefixScorer(log_probs, lengths)
    for token in target:  # extend both hypotheses token by token, then ask for <eos>
        psi = scorer.extend(torch.tensor([[token], [token]]))
        scorer.select(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([[token], [token]]), psi)
    final = scorer.extend(torch.tensor([[SOS_EOS_ID], [SOS_EOS_ID]]))
    expected = -F.ctc_loss(log_probs.transpose(0, 1), torch.tensor([target, target]), lengths,
                           torch.tensor([4, 4]), reduction="none")
    torch.testing.assert_close(final[:, 0], expected, atol=1e-4, rtol=1e-4)


def assert_same_scores(fast: CTCPrefixScorer, full: CTCPrefixScorer, steps: int, K: int, from_frame_1: bool,
                       seed: int = 0) -> None:
    """Both scorers take the same random candidates and choices and must give the same scores and forward
    variables: bit for bit when they run the same frames; with `from_frame_1`, `full` (its `length` held at 0)
    runs each recursion from frame 1, as before the recursion started at the prefix length, and the cumulative
    sums of `log_recursion` then start elsewhere: the same to float32 rounding."""
    g = torch.Generator().manual_seed(seed)
    N, V = fast.r.shape[2], fast.x.shape[2]
    for _ in range(steps):
        candidates = torch.randint(2, V, (N, K), generator=g)
        candidates[:, 0] = torch.where(fast.last > 1, fast.last, candidates[:, 0])  # a repeat: the r^b path
        candidates[:, 1] = SOS_EOS_ID
        psi, psi_full = fast.extend(candidates), full.extend(candidates)
        rows, columns = torch.randint(0, N, (N,), generator=g), torch.randint(2, K, (N,), generator=g)
        full.length = 0 if from_frame_1 else full.length
        fast.select(rows, columns, candidates, psi)
        full.select(rows, columns, candidates, psi_full)
        if from_frame_1:
            torch.testing.assert_close(psi, psi_full, rtol=2e-6, atol=1e-5)
            torch.testing.assert_close(fast.r, full.r, rtol=2e-6, atol=1e-5)
        else:
            assert torch.equal(psi, psi_full) and torch.equal(fast.r, full.r)
    assert torch.isfinite(fast.score).all()


def assert_prefix_start_changes_nothing(log_probs, lengths, steps: int, K: int) -> None:
    fast, full = CTCPrefixScorer(log_probs, lengths), CTCPrefixScorer(log_probs, lengths)
    assert_same_scores(fast, full, steps, K, from_frame_1=True)
    assert fast.length == steps


def test_ctc_prefix_scorer_shares_each_utterances_frames_among_its_hypotheses():
    torch.manual_seed(0)
    log_probs, lengths, W = (3 * torch.randn(2, 30, 9)).log_softmax(-1), torch.tensor([30, 21]), 3
    shared = CTCPrefixScorer(log_probs, lengths, hypotheses=W)
    copied = CTCPrefixScorer(log_probs.repeat_interleave(W, 0), lengths.repeat_interleave(W))
    assert_same_scores(shared, copied, steps=8, K=4, from_frame_1=False)


def test_ctc_prefix_recursion_starting_at_the_prefix_length_changes_nothing_on_random_inputs():
    torch.manual_seed(0)
    log_probs = (3 * torch.randn(3, 40, 12)).log_softmax(-1)
    assert_prefix_start_changes_nothing(log_probs, torch.tensor([40, 31, 25]), steps=12, K=5)


def test_ctc_prefix_recursion_starting_at_the_prefix_length_changes_nothing_on_real_speech(default_recognizer,
                                                                                            data_dir):
    from speech_transformer.audio.loading import load_audio

    enc = default_recognizer.encode([load_audio(data_dir / "samples" / "jfk.flac"),
                                     load_audio(data_dir / "librispeech" / "samples" / "1089-134686-0001.flac")])
    assert_prefix_start_changes_nothing(enc.ctc_log_probs, enc.lengths, steps=25, K=6)


def test_log_recursion_is_the_frame_by_frame_loop():
    """The cumulative form gives what the loop over frames gives, with -inf inputs (prefixes that cannot
    end yet) and -inf factors (frames past an utterance's end) among them."""
    torch.manual_seed(0)
    T, N = 300, 12
    inputs, factors = 5 * torch.randn(T, N) - 20, (3 * torch.randn(T, N, 9)).log_softmax(-1)[..., 0]
    inputs[:40, :3] = float("-inf")
    factors[250:, 5:] = float("-inf")
    initial = torch.randn(N) - 5
    initial[0] = float("-inf")
    expected, y = [], initial
    for t in range(T):
        y = torch.logaddexp(y, inputs[t]) + factors[t]
        expected.append(y)
    expected = torch.stack(expected)
    got = log_recursion(initial, inputs, factors)
    finite = torch.isfinite(expected)
    assert (got[~finite] < -1e3).all()  # -inf, or a probability of exp(-1000) and less
    torch.testing.assert_close(got[finite], expected[finite], rtol=1e-5, atol=1e-4)
