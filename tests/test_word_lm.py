"""Building word LMs: Kneser-Ney by hand and on real text, and interpolation of two models."""

import math
from collections import Counter

import pytest

from speech_transformer.decoding.arpa import LOG10_ZERO, ArpaLM, read_corpus
from speech_transformer.decoding.word_lm import _discounts, build_kneser_ney, interpolate

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
    assert lm.ngrams[0][("<s>",)][0] == LOG10_ZERO  # never predicted
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
    d1, d2, d3 = _discounts(Counter({1: 10, 2: 4, 3: 2, 4: 1}))
    y = 10 / 18
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 0.4, 2 - 3 * y * 0.5, 3 - 4 * y * 0.5))


@pytest.fixture(scope="module")
def real_lm(data_dir):
    sentences = read_corpus(data_dir / "librispeech" / "train.tsv")[:300]
    return build_kneser_ney(sentences, order=3), sentences


def test_every_context_sums_to_one(real_lm):
    lm, sentences = real_lm
    vocab = [w for w in lm.vocab if w != "<s>"]
    for context in [(), ("<s>",), ("<s>", sentences[0][0]), tuple(sentences[1][:2]), ("the",), ("zzz", "qqq")]:
        assert sum(p(lm, w, *context) for w in vocab) == pytest.approx(1.0, abs=1e-9), context


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
