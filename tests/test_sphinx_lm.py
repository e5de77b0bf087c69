"""pocketsphinx's packaged LM read from its binary trie, scored as pocketsphinx scores it."""

import math

import pytest

from speech_transformer.decoding.sphinx_lm import SPHINX_LOG_BASE, packaged_lm_path, read_sphinx_lm


def test_not_a_sphinx_lm(tmp_path):
    bad = tmp_path / "bad.arpa"
    bad.write_text("\\data\\\nngram 1=1\n\n\\1-grams:\n-1.0 a\n\\end\\\n")
    with pytest.raises(ValueError, match="not a Sphinx trie LM"):
        read_sphinx_lm(bad)


@pytest.fixture(scope="module")
def packaged():
    pytest.importorskip("pocketsphinx")
    return read_sphinx_lm(packaged_lm_path())


def test_packaged_lm_scores_as_pocketsphinx(packaged):
    import pocketsphinx

    assert packaged.counts() == [72547, 2051541, 1669625]  # 6 unreachable bigram slots of the file dropped
    ps = pocketsphinx.NGramModel(pocketsphinx.Config(), pocketsphinx.LogMath(SPHINX_LOG_BASE),
                                 str(packaged_lm_path()))

    def theirs(word, *context):  # NGramModel.prob: [word, newest history word, ...] -> int, logmath base 1.0001
        return ps.prob([word, *reversed(context)]) * math.log10(SPHINX_LOG_BASE)

    listed_trigram = ("one", "of", "the")
    assert listed_trigram in packaged.ngrams[2]
    backoff_trigram = next(("of", "the", w) for (h, w) in packaged.ngrams[1]
                           if h == "the" and ("of", "the", w) not in packaged.ngrams[2])
    unlisted_bigram = ("zucchini", "aardvark")
    assert unlisted_bigram not in packaged.ngrams[1]
    cases = [("the",), ("aardvark",), ("of", "the"), listed_trigram, backoff_trigram, unlisted_bigram,
             ("the", "zucchini", "aardvark"), ("<s>", "the"), ("the", "</s>")]
    for *context, word in cases:
        # pocketsphinx truncates to whole logmath units (4.3e-5 in log10)
        assert packaged.log10_prob(word, context) == pytest.approx(theirs(word, *context), abs=5e-5), (context, word)
    assert packaged.log10_prob("the") == pytest.approx(-1.3, abs=0.2)  # 'the' is about 5 % of English words
