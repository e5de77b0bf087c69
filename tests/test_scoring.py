"""The scoring normaliser and WER/CER/alignment statistics, against hand-computed examples."""

import pytest

from speech_transformer.text.scoring import cer, get_normalizer, normalize_english, normalize_raw, score_utterances, wer


@pytest.mark.parametrize("text, expected", [
    ("Hello, World!", "hello world"),
    ("HE HOPED THERE WOULD BE STEW", "he hoped there would be stew"),
    ("He paid $3.50 for 2 apples.", "he paid three dollars and fifty cents for two apples"),
    ("the 21st century, in 1984", "the twenty first century in nineteen eighty four"),
    ("twenty-one -- forty\u2014two", "twenty one forty two"),
    ("100% & more", "one hundred percent and more"),
    ("It's 5 o'clock", "it's five o'clock"),
    ("\u2018Quoted\u2019 students' books", "quoted students books"),
    ("I don't, you can't, we won't", "i do not you can not we will not"),
    ("I'm sure you're right, we'll see, they've gone", "i am sure you are right we will see they have gone"),
    ("He'd say John's", "he'd say john's"),
    ("The colour of the Theatre", "the color of the theater"),
    ("HIS BELLY COUNSELLED HIM", "his belly counseled him"),
    ("She realised; they apologised", "she realized they apologized"),
    ("Mr. and Mrs. Grey, OK?", "mister and missus gray okay"),
    ("Caf\u00e9 na\u00efve", "cafe naive"),
    ("  spaced \t out \n", "spaced out"),
    ("", ""),
])
def test_english_normaliser(text, expected):
    assert normalize_english(text) == expected


def test_contractions_match_their_expansion():
    assert normalize_english("I DON'T know, it isn't") == normalize_english("i do not know it is not")
    assert normalize_english("you cannot") == normalize_english("You can't")


def test_raw_normaliser_only_splits_on_whitespace():
    assert normalize_raw("  Hello,   World! ") == "Hello, World!"
    assert get_normalizer("raw") is normalize_raw
    with pytest.raises(ValueError, match="unknown normaliser"):
        get_normalizer("nope")


def test_wer_hand_computed():
    # the cat SAT on THE mat -> the cat SIT on mat: 1 substitution + 1 deletion over 6 words
    assert wer("the cat sat on the mat", "the cat sit on mat") == pytest.approx(2 / 6)
    # one insertion over 6 words
    assert wer("the cat sat on the mat", "the big cat sat on the mat") == pytest.approx(1 / 6)
    assert wer("the cat", "the cat") == 0.0
    assert wer("a b", "") == 1.0
    assert wer("", "a") == 1.0  # empty reference: N is taken as 1


def test_normalisation_decides_what_counts_as_an_error():
    assert wer("Hello, World!", "hello world") == 0.0
    assert wer("Hello, World!", "hello world", normalizer="raw") == 1.0
    assert wer("I'll pay 5 dollars", "i will pay five dollars") == 0.0


def test_cer_hand_computed():
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert cer("the cat", "the bat") == pytest.approx(1 / 7)  # the space counts as a character
    assert cer("hello world", "hello word") == pytest.approx(1 / 11)
    assert cer("ab", "abcd") == pytest.approx(2 / 2)


def test_corpus_counts_alignment_speakers_and_frequent_errors():
    s = score_utterances(["a b c d", "x y", "p q"], ["a x c", "x y z", "p q"], speakers=["A", "B", None])
    assert (s.substitutions, s.deletions, s.insertions, s.hits) == (1, 1, 1, 6)
    assert s.n_words == 8 and s.n_utts == 3
    assert s.wer == pytest.approx(3 / 8)
    assert s.ser == pytest.approx(2 / 3)
    assert s.utterances[0].alignment == [("=", "a", "a"), ("S", "b", "x"), ("=", "c", "c"), ("D", "d", "")]
    assert s.utterances[1].alignment == [("=", "x", "x"), ("=", "y", "y"), ("I", "", "z")]
    assert s.utterances[0].wer == pytest.approx(2 / 4)
    assert s.per_speaker == {
        "A": {"wer": 0.5, "cer": pytest.approx(3 / 7), "n_utts": 1, "n_words": 4, "errors": 2},
        "B": {"wer": 0.5, "cer": pytest.approx(2 / 3), "n_utts": 1, "n_words": 2, "errors": 1},
    }
    assert s.top_substitutions == [("b", "x", 1)]
    assert s.top_insertions == [("z", 1)]
    assert s.top_deletions == [("d", 1)]
    # CER over normalised characters: "a b c d" (7) vs "a x c" -> 1 sub + 2 del; "x y" (3) vs "x y z" -> 2 ins
    assert (s.char_errors, s.n_chars) == (5, 7 + 3 + 3)


def test_frequent_errors_are_sorted_by_count():
    s = score_utterances(["one two", "one two", "one"], ["won two", "won too", "won"])
    assert s.top_substitutions[:2] == [("one", "won", 3), ("two", "too", 1)]


def test_mismatched_lengths_are_refused():
    with pytest.raises(ValueError):
        score_utterances(["a"], [])
