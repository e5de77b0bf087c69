"""Word n-gram LMs: Kneser-Ney by hand, ARPA files as KenLM reads them, the packaged LM against pocketsphinx."""

import math
from collections import Counter

import pytest

from speech_transformer.decoding import arpa
from speech_transformer.decoding.arpa import ArpaLM, build_kneser_ney, interpolate, read_arpa, write_arpa

# <s> a b </s> twice and <s> b </s>: bigram counts (<s> a)=2 (a b)=2 (b </s>)=3 (<s> b)=1
CORPUS = [["a", "b"], ["a", "b"], ["b"]]
HALF = [(0.5, 0.5, 0.5)] * 2


def p(lm: ArpaLM, word, *context) -> float:
    return 10 ** lm.log10_prob(word, context)


def test_kneser_ney_bigram_by_hand():
    lm = build_kneser_ney(CORPUS, order=2, discounts=HALF)
    # unigrams use continuation counts N1+(. w): a {<s>}=1, b {<s>, a}=2, </s> {b}=1; total 4.
    # gamma(()) = 0.5 * 3 kinds / 4 = 0.375, spread uniformly over V = {a, b, </s>, <unk>}: 0.09375 each
    assert p(lm, "a") == pytest.approx((1 - 0.5) / 4 + 0.09375)  # 0.21875
    assert p(lm, "b") == pytest.approx((2 - 0.5) / 4 + 0.09375)  # 0.46875
    assert p(lm, "</s>") == pytest.approx(0.21875)
    assert p(lm, "<unk>") == pytest.approx(0.09375)
    assert lm.ngrams[0][("<s>",)][0] == arpa.LOG10_ZERO  # never predicted
    # context <s>: raw counts a=2, b=1 (c=3); gamma = 0.5 * 2 / 3
    assert p(lm, "a", "<s>") == pytest.approx(1.5 / 3 + (1 / 3) * 0.21875)  # 0.5729
    assert p(lm, "b", "<s>") == pytest.approx(0.5 / 3 + (1 / 3) * 0.46875)  # 0.3229
    # context a: b=2 (c=2), gamma = 0.25; context b: </s>=3, gamma = 1/6
    assert p(lm, "b", "a") == pytest.approx(1.5 / 2 + 0.25 * 0.46875)  # 0.8672
    assert p(lm, "</s>", "b") == pytest.approx(2.5 / 3 + 0.21875 / 6)  # 0.8698
    # unseen bigram: backoff weight gamma(b) times p(a)
    assert p(lm, "a", "b") == pytest.approx(0.21875 / 6)
    assert lm.ngrams[0][("b",)][1] == pytest.approx(math.log10(1 / 6))
    assert lm.sentence_log10_prob(["b"]) == pytest.approx(math.log10((0.5 / 3 + 0.15625) * (2.5 / 3 + 0.21875 / 6)))


def test_modified_discounts_from_counts_of_counts():
    # Chen & Goodman: Y = n1 / (n1 + 2 n2) = 10/18; D1 = 1 - 2Y n2/n1, D2 = 2 - 3Y n3/n2, D3+ = 3 - 4Y n4/n3
    d1, d2, d3 = arpa._discounts(Counter({1: 10, 2: 4, 3: 2, 4: 1}))
    y = 10 / 18
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.5, 3 - 4 * y * 0.5))


@pytest.fixture(scope="module")
def real_lm(data_dir):
    sentences = arpa.read_corpus(data_dir / "librispeech" / "train.tsv")[:300]
    return build_kneser_ney(sentences, order=3), sentences


def test_every_context_sums_to_one(real_lm):
    lm, sentences = real_lm
    vocab = [w for w in lm.vocab if w != "<s>"]
    for context in [(), ("<s>",), ("<s>", sentences[0][0]), tuple(sentences[1][:2]), ("the",), ("zzz", "qqq")]:
        assert sum(p(lm, w, *context) for w in vocab) == pytest.approx(1.0, abs=1e-9), context


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
    with pytest.raises(ValueError, match="not a Sphinx trie LM"):
        arpa.read_sphinx_lm(bad)


def test_interpolation_is_the_weighted_mixture_and_normalised(real_lm):
    one, sentences = real_lm
    two = build_kneser_ney(CORPUS + [["a", "the", "b"]], order=2)
    mixed = interpolate([one, two], [0.7, 0.3])
    vocab = [w for w in mixed.vocab if w != "<s>"]
    # a word one model lacks gets from it a share of its <unk> probability, shared with the others it lacks
    union = set(one.vocab) | set(two.vocab)

    def part(lm, word, context):
        share = 1 / (len(union - set(lm.vocab) - {"<unk>"}) + 1)
        return p(lm, word, *context) if word in lm.vocab and word != "<unk>" else p(lm, "<unk>", *context) * share

    # exact for the n-grams it lists; unlisted ones back off (an approximation, as SRILM's static mix)
    listed = [(s[1], ("<s>", s[0])) for s in sentences[:5]] + [("b", ("a",)), ("the", ("a",)), ("a", ())]
    for word, context in listed:
        assert context[-2:] + (word,) in mixed.ngrams[len(context[-2:])]
        expected = 0.7 * part(one, word, context) + 0.3 * part(two, word, context)
        assert p(mixed, word, *context) == pytest.approx(expected, rel=1e-6), (word, context)
    for context in [(), ("the",), ("a",), tuple(sentences[0][:2])]:
        assert sum(p(mixed, w, *context) for w in vocab) == pytest.approx(1.0, abs=1e-6), context


@pytest.fixture(scope="module")
def packaged():
    pytest.importorskip("pocketsphinx")
    return arpa.read_sphinx_lm(arpa.packaged_lm_path())


def test_packaged_lm_scores_as_pocketsphinx(packaged):
    import pocketsphinx

    assert packaged.counts() == [72547, 2051541, 1669625]  # 6 unreachable bigram slots of the file dropped
    ps = pocketsphinx.NGramModel(pocketsphinx.Config(), pocketsphinx.LogMath(arpa.SPHINX_LOG_BASE),
                                 str(arpa.packaged_lm_path()))

    def theirs(word, *context):  # NGramModel.prob: [word, newest history word, ...] -> int, logmath base 1.0001
        return ps.prob([word, *reversed(context)]) * math.log10(arpa.SPHINX_LOG_BASE)

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
