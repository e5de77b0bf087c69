import numpy as np
import torch
import pytest

from speech_transformer.audio.loading import HOP_LENGTH, N_FFT, N_MELS, load_audio
from speech_transformer.audio.features import FrontEnd, SpecAugment, SpecAugmentConfig, num_frames, pad_waveforms
from speech_transformer.model.transformer import ModelConfig


def test_shapes_and_lengths():
    waves = [np.random.default_rng(i).standard_normal(n).astype(np.float32) * 0.1 for i, n in enumerate([16000, 8000, 400])]
    audio, lengths = pad_waveforms(waves)
    assert audio.shape == (3, 16000) and lengths.tolist() == [16000, 8000, 400]
    feats, frames = FrontEnd()(audio, lengths)
    assert feats.shape == (3, num_frames(16000), N_MELS)
    assert frames.tolist() == [(n - N_FFT) // HOP_LENGTH + 1 for n in (16000, 8000, 400)]
    assert (feats[1, frames[1]:] == 0).all() and (feats[2, 1:] == 0).all()


def test_padding_does_not_change_valid_frames(librispeech_train):
    waves = [load_audio(u.audio) for u in librispeech_train[:3]]
    for normalization in ("global", "utterance", "none"):
        frontend = FrontEnd(normalization=normalization)
        frontend.fit_global_stats(waves)
        batch, lengths = frontend(*pad_waveforms(waves))
        for i, w in enumerate(waves):
            alone, n = frontend(*pad_waveforms([w]))
            torch.testing.assert_close(batch[i, : int(n[0])], alone[0], atol=1e-4, rtol=1e-4)
            assert int(lengths[i]) == int(n[0])


def test_global_stats_normalise_training_features(librispeech_train):
    waves = [load_audio(u.audio) for u in librispeech_train[:4]]
    frontend = FrontEnd(N_MELS, "global")
    frontend.fit_global_stats(waves)
    feats, n = frontend(*pad_waveforms(waves))
    valid = torch.cat([feats[i, : int(n[i])] for i in range(len(waves))])
    torch.testing.assert_close(valid.mean(0), torch.zeros(N_MELS), atol=1e-3, rtol=0)
    torch.testing.assert_close(valid.std(0), torch.ones(N_MELS), atol=1e-2, rtol=0)


def test_spec_augment_masks_only_in_training():
    torch.manual_seed(0)
    feats = torch.randn(4, 300, N_MELS) + 5.0
    lengths = torch.tensor([300, 250, 200, 100])
    augment = SpecAugment(SpecAugmentConfig(time_warp=5))
    augment.eval()
    assert torch.equal(augment(feats, lengths), feats)
    augment.train()
    out = augment(feats, lengths)
    assert out.shape == feats.shape
    zeroed = (out == 0).float().mean().item()
    assert 0.02 < zeroed < 0.6  # some, not all, of the features are masked


def test_whisper_features_without_the_window_equal_the_windowed_ones(librispeech_train):
    """`window=False` (models fine-tuned from Whisper) gives Whisper's features for the audio's own frames."""
    from speech_transformer.audio.features import WHISPER_WINDOW_FRAMES, WhisperFrontEnd

    waves = [load_audio(u.audio) for u in librispeech_train[:2]]
    audio, lengths = pad_waveforms(waves)
    windowed, all_frames = WhisperFrontEnd()(audio, lengths)
    unpadded, frames = WhisperFrontEnd(window=False)(audio, lengths)
    assert windowed.shape[1] == WHISPER_WINDOW_FRAMES and (all_frames == WHISPER_WINDOW_FRAMES).all()
    assert frames.tolist() == [len(w) // HOP_LENGTH for w in waves] and unpadded.shape[1] == max(frames)
    for i, n in enumerate(frames.tolist()):  # the last frames see the end of the audio: reflection vs zeros
        torch.testing.assert_close(unpadded[i, : n - 2], windowed[i, : n - 2], atol=1e-5, rtol=1e-5)


def test_whisper_features_with_trailing_silence_are_those_of_the_audio_followed_by_zeros(librispeech_train):
    """Each row gets its silence right after its own end, whatever the longer rows of its batch."""
    from speech_transformer.audio.features import WhisperFrontEnd

    waves = [load_audio(u.audio) for u in librispeech_train[:2]]
    with_silence, frames = WhisperFrontEnd(window=False, silence_seconds=1.0)(*pad_waveforms(waves))
    assert frames.tolist() == [(len(w) + 16000) // HOP_LENGTH for w in waves]
    for i, w in enumerate(waves):
        padded = np.concatenate([w, np.zeros(16000, np.float32)])
        alone, n = WhisperFrontEnd(window=False)(*pad_waveforms([padded]))
        assert n.item() == frames[i]
        torch.testing.assert_close(with_silence[i, : n.item()], alone[0, : n.item()], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="trailing_silence"):
        ModelConfig(frontend="whisper", trailing_silence=1.0)


def test_length_sorted_batches():
    from speech_transformer.audio.features import length_sorted_batches

    lengths = [16000 * s for s in (3, 1, 2, 10, 1)]
    # shortest first; each group padded to its longest item holds at most 4 s; 10 s alone
    assert length_sorted_batches(lengths, 4.0) == [[1, 4], [2], [0], [3]]
    assert length_sorted_batches(lengths, float("inf")) == [[1, 4, 2, 0, 3]]
    assert length_sorted_batches(lengths, 0) == [[1], [4], [2], [0], [3]]
    assert length_sorted_batches([], 4.0) == []
