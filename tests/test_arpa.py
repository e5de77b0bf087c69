"""ARPA files: as KenLM reads them, and errors that name the file and line."""

import pytest

from speech_transformer.decoding.arpa import read_arpa, read_corpus, write_arpa
from speech_transformer.decoding.word_lm import build_kneser_ney


@pytest.fixture(scope="module")
def real_lm(data_dir):
    sentences = read_corpus(data_dir / "librispeech" / "train.tsv")[:300]
    return build_kneser_ney(sentences, order=3), sentences


def test_arpa_round_trip_is_what_kenlm_reads(tmp_path, real_lm):
    lm, sentences = real_lm
    path = write_arpa(lm, tmp_path / "lm.arpa")
    again = read_arpa(path)
    assert again.counts() == lm.counts()
    from flashlight.lib.text.decoder import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    words = lm.vocab
    kenlm = KenLM(str(path), Dictionary(words))
    for s in sentences[:20] + [["the", "unseenword", "of"]]:
        state, total = kenlm.start(False), 0.0
        for w in s:
            state, score = kenlm.score(state, words.index(w) if w in words else words.index("<unk>"))
            total += score
        _, score = kenlm.finish(state)
        assert total + score == pytest.approx(again.sentence_log10_prob(s), abs=1e-4)


def test_bad_arpa_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=2\n\n\\1-grams:\n-1.0 a\nnot-a-number b\n\\end\\\n")
    with pytest.raises(ValueError, match=r"bad\.arpa:6: bad number"):
        read_arpa(bad)
    (tmp_path / "empty.arpa").write_text("hello\n")
    with pytest.raises(ValueError, match="empty.arpa: no .1-grams"):
        read_arpa(tmp_path / "empty.arpa")
