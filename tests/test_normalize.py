import pytest

from speech_transformer.text.normalize import normalize_transcript, number_to_words, ordinal_to_words, year_to_words


@pytest.mark.parametrize("n, words", [
    (0, "ZERO"), (13, "THIRTEEN"), (40, "FORTY"), (99, "NINETY NINE"), (100, "ONE HUNDRED"),
    (1905, "ONE THOUSAND NINE HUNDRED FIVE"), (2_000_001, "TWO MILLION ONE"),
])
def test_number_to_words(n, words):
    assert number_to_words(n) == words


def test_years_and_ordinals():
    assert year_to_words(1984) == "NINETEEN EIGHTY FOUR"
    assert year_to_words(1900) == "NINETEEN HUNDRED"
    assert year_to_words(1805) == "EIGHTEEN OH FIVE"
    assert year_to_words(2005) == "TWO THOUSAND FIVE"
    assert ordinal_to_words(1) == "FIRST" and ordinal_to_words(22) == "TWENTY SECOND"
    assert ordinal_to_words(40) == "FORTIETH" and ordinal_to_words(12) == "TWELFTH"


@pytest.mark.parametrize("raw, target", [
    ("Mr. Smith's 2nd car!", "MR SMITH'S SECOND CAR"),
    ("It cost $3.50, in 1861.", "IT COST THREE DOLLARS AND FIFTY CENTS IN EIGHTEEN SIXTY ONE"),
    ('"Quoted," she said -- \u2018twas late', "QUOTED SHE SAID TWAS LATE"),
    ("Caf\u00e9 & co: 50% off", "CAFE AND CO FIFTY PERCENT OFF"),
    ("pi is 3.14", "PI IS THREE POINT ONE FOUR"),
    ("ALREADY NORMAL TEXT", "ALREADY NORMAL TEXT"),
    ("   ", ""),
])
def test_normalize_transcript(raw, target):
    assert normalize_transcript(raw) == target


def test_normalized_text_uses_target_alphabet(data_dir):
    import re

    from speech_transformer.training.data import read_manifest

    for utt in read_manifest(data_dir / "ljspeech" / "clips.tsv")[:100]:
        assert re.fullmatch(r"[A-Z' ]*", normalize_transcript(utt.text)), utt.text


def test_whisper_style():
    from speech_transformer.text.normalize import whisper_style

    assert whisper_style("TURN ON  THE LIGHT") == " Turn on the light."
    assert whisper_style("IS IT ON?") == " Is it on?"
    assert whisper_style("Hello, World") == " Hello, World"  # mixed case: as written
