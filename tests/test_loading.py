import io

import numpy as np
import pytest
import soundfile as sf

from speech_transformer.audio.loading import SAMPLE_RATE, AudioError, info, load_audio, reason, sniff


def tone(rate: int, seconds: float = 1.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.mark.parametrize("relpath", [
    "an4/test/fcaw/an406-fcaw-b.flac",  # FLAC 16 kHz
    "fsdd/recordings/0_george_0.flac",  # FLAC 8 kHz
    "librispeech/LibriSpeech/train-clean-5/1088/134315/1088-134315-0000.opus",  # Opus 16 kHz
    "ljspeech/clips/LJ001-0001.opus",  # Opus decoded at 24 kHz
    "samples/jfk.flac",  # FLAC 44.1 kHz stereo
])
def test_real_files_decode_to_16k_mono(data_dir, relpath):
    path = data_dir / relpath
    header = info(path)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) - header.duration * SAMPLE_RATE) <= SAMPLE_RATE * 0.01
    assert 0.001 < np.abs(audio).max() <= 1.0


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
def test_formats_and_rates_are_resampled(tmp_path, rate, fmt):
    if fmt == "MP3" and rate == 22050:
        rate = 24000
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, tone(rate, channels=2), rate, format=fmt)
    audio = load_audio(path)
    assert abs(len(audio) - SAMPLE_RATE) < SAMPLE_RATE * 0.08  # mp3 adds encoder delay
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(audio) - 440) < 5  # the tone survives resampling


def test_bytes_and_arrays(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(48000, channels=2), 48000, format="WAV")
    from_bytes = load_audio(buf.getvalue())
    assert len(from_bytes) == SAMPLE_RATE
    mic = (tone(48000, channels=2) * 32767).astype(np.int16)  # what a browser microphone gives Gradio
    from_tuple = load_audio((48000, mic))
    np.testing.assert_allclose(from_tuple, from_bytes, atol=1e-3)
    channels_first = load_audio(tone(16000, channels=2).T.copy())
    assert channels_first.shape == (SAMPLE_RATE,)


def test_bad_inputs_raise_audio_error_naming_the_file(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, tone(16000, 2.0), 16000)
    cases = {
        "empty.wav": b"",
        "random.wav": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
        "text.flac": b"this is a text file, not audio\n" * 20,
        "truncated.wav": good.read_bytes()[:30000],
    }
    zero = tmp_path / "zero.wav"
    sf.write(zero, np.zeros(0, dtype=np.float32), 16000)
    flac = tmp_path / "full.flac"
    sf.write(flac, tone(16000, 2.0), 16000)
    cases["truncated.flac"] = flac.read_bytes()[: flac.stat().st_size // 2]
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    for name in list(cases) + ["zero.wav", "missing.wav"]:
        with pytest.raises(AudioError) as e:
            load_audio(tmp_path / name)
        assert name in str(e.value) and e.value.reason, name
    with pytest.raises(AudioError, match="truncated"):
        load_audio(tmp_path / "truncated.wav")
    with pytest.raises(AudioError, match="empty"):
        load_audio(b"")
    with pytest.raises(AudioError, match="too low"):
        load_audio((100, np.zeros(100, dtype=np.float32)))


@pytest.mark.parametrize("content, kind", [
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n" * 20, "a PDF document"),
    (b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(256)) * 4, "a ZIP archive"),
    (b"Meeting notes: the quarterly numbers are due on Friday.\n" * 40, "text"),
])
def test_a_file_that_is_not_audio_says_what_it_is(tmp_path, content, kind):
    """A non-audio file named .mp3 names the real reason, not libsndfile's "not a regular file (possibly a pipe?)"."""
    path = tmp_path / "song.mp3"
    path.write_bytes(content)
    for read in (load_audio, info):
        with pytest.raises(AudioError) as e:
            read(path)
        assert e.value.reason == f"not an audio format we can decode (looks like {kind})"
        assert "pipe" not in str(e.value) and str(path) in str(e.value)
    random_bytes = tmp_path / "noise.mp3"
    random_bytes.write_bytes(np.random.default_rng(1).integers(0, 128, 5000, dtype=np.uint8).tobytes() + b"\x00" * 9)
    with pytest.raises(AudioError, match="not an audio format we can decode .no known audio header"):
        load_audio(random_bytes)


def test_damaged_audio_names_its_format(tmp_path):
    path = tmp_path / "cut.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match=r"not a readable audio file \(WAV that libsndfile cannot decode"):
        load_audio(path)
    assert sniff(b"fLaC\x00\x00\x00\x22") == ("FLAC", True)
    assert sniff(b"\x00\x00\x00\x20ftypM4A ") == ("an MP4/M4A file (AAC)", False)


def test_reason_is_one_line_for_a_report():
    assert reason(AudioError("a.wav", "file not found")) == "file not found"
    assert reason(RuntimeError("traceback line\nout of memory")) == "RuntimeError: out of memory"
    assert reason(KeyError()) == "KeyError"
