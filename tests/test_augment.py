import numpy as np
import pytest

from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.training.augment import (AugmentOptions, Augmenter, add_noise, change_speed,
                                                 coloured_noise, reverberate, rms, room_impulse, speaker_of)


@pytest.fixture(scope="module")
def speech(librispeech_train, data_dir):
    """Two utterances each of six speakers."""
    by_speaker: dict[str, list[str]] = {}
    for u in librispeech_train:
        by_speaker.setdefault(speaker_of(u.audio), []).append(str(data_dir / "librispeech" / u.audio))
    return [p for paths in list(by_speaker.values())[:6] for p in paths[:2]]


def test_speed_changes_the_length_by_the_factor(speech):
    x = load_audio(speech[0])
    for factor in (0.9, 1.1):
        y = change_speed(x, factor)
        assert abs(len(y) - len(x) / factor) <= 2
    assert change_speed(x, 1.0) is x


def test_coloured_noise_has_the_slope_asked_for():
    rng = np.random.default_rng(0)
    for exponent in (0.0, 1.0, 2.0):
        n = coloured_noise(2 ** 16, exponent, rng)
        assert rms(n) == pytest.approx(1.0, rel=1e-3)
        power = np.abs(np.fft.rfft(n)) ** 2
        f = np.arange(len(power))
        low, high = power[(f > 100) & (f < 200)].mean(), power[(f > 10000) & (f < 20000)].mean()
        # two decades of frequency: 10 dB per decade and unit of exponent
        assert 10 * np.log10(low / high) == pytest.approx(20 * exponent, abs=3)


def test_noise_is_added_at_the_snr(speech):
    x = load_audio(speech[0])
    noise = coloured_noise(len(x) // 3, 1.0, np.random.default_rng(1))  # shorter: tiled to the speech's length
    y = add_noise(x, noise, 10.0)
    assert len(y) == len(x)
    assert 20 * np.log10(rms(x) / rms(y - x)) == pytest.approx(10.0, abs=0.01)


def test_a_simulated_room_decays_by_60_db_in_rt60():
    h = room_impulse(0.5, np.random.default_rng(0))
    assert len(h) == SAMPLE_RATE // 2 and h[0] == 1.0
    energy = np.cumsum(h[::-1] ** 2)[::-1]  # Schroeder's backward integral
    db = 10 * np.log10(energy / energy[0])
    t20 = np.argmax(db < -20) / SAMPLE_RATE  # 20 dB of decay take a third of RT60 (the end is cut off)
    assert 0.12 < t20 < 0.2


def test_reverberation_keeps_length_and_level_and_smears_the_speech(speech):
    x = load_audio(speech[0])
    y = reverberate(x, room_impulse(0.6, np.random.default_rng(0)))
    assert len(y) == len(x) and rms(y) == pytest.approx(rms(x), rel=1e-3)
    assert np.corrcoef(x, y)[0, 1] < 0.9


def test_speakers_from_file_names():
    assert speaker_of("LibriSpeech/train-clean-5/1088/134315/1088-134315-0000.opus") == "1088"
    assert speaker_of("recordings/7_jackson_32.wav") == "jackson"
    assert speaker_of("/data/an4/wav/fash/an251-fash-b.wav") == "/data/an4/wav/fash"


def test_augmenter_is_reproducible_and_babble_leaves_the_speaker_out(speech):
    loaded = []

    def load(path):
        loaded.append(path)
        return load_audio(path)

    options = AugmentOptions(room_probability=0.0, noise_probability=1.0, babble_share=1.0, speeds=(1.0,))
    augment = Augmenter(options, speech, load)
    x = load_audio(speech[0])
    y = augment(x, 7, speech[0])
    assert np.array_equal(y, augment(x, 7, speech[0]))
    assert not np.array_equal(y, augment(x, 8, speech[0]))
    assert loaded and speaker_of(speech[0]) not in {speaker_of(p) for p in loaded}
    alone = Augmenter(options, speech[:2], load)  # no other speaker: coloured noise instead
    assert 20 * np.log10(rms(x) / rms(alone(x, 7, speech[0]) - x)) <= options.snr_range[1] + 0.01
    snr = 20 * np.log10(rms(x) / rms(y - x))
    assert options.snr_range[0] - 0.01 <= snr <= options.snr_range[1] + 0.01


def test_augmented_copies_differ_and_keep_the_speech(speech):
    augment = Augmenter(AugmentOptions(), speech, load_audio)
    x = load_audio(speech[1])
    copies = [augment(x, seed, speech[1]) for seed in range(6)]
    assert {len(c) for c in copies} - {len(x)}  # some copies were sped up or slowed down
    for c in copies:
        assert np.isfinite(c).all() and 0.3 < rms(c) / rms(x) < 3.0


def test_options_are_checked():
    with pytest.raises(ValueError, match="speeds"):
        AugmentOptions(speeds=(0.0,))
    with pytest.raises(ValueError, match="probabilities"):
        AugmentOptions(room_probability=1.5)
