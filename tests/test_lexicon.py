"""Word-level CTC decoding: lexicon spellings, the search on hand-built posteriors, user words, rescoring."""


import pytest
import torch

from speech_transformer.decoding import lexicon as lx
from speech_transformer.decoding.arpa import write_arpa
from speech_transformer.decoding.word_lm import build_kneser_ney
from speech_transformer.model.checkpoint import model_ctc_tokenizer
from speech_transformer.pretrained import default_model_dir

pytest.importorskip("flashlight.lib.text")


@pytest.fixture(scope="module")
def tok():
    return model_ctc_tokenizer(default_model_dir())  # the shipped model's CTC head's 256 upper-case pieces


def posterior(tok, tokens: list[int], peak: float = 0.9, mix: dict[int, dict[int, float]] | None = None):
    """One frame per token then one blank frame, each `peak` on its token and the rest spread evenly;
    `mix[i]` replaces frame 2i's distribution over some tokens. -> log-probs `(1, 2 len, V)`."""
    V = tok.vocab_size
    rows = []
    for i, t in enumerate(tokens):
        for target in (t, 0):
            row = torch.full((V,), (1 - peak) / (V - 1))
            row[target] = peak
            if target == t and mix and i in mix:
                row = torch.full((V,), 0.01 / (V - len(mix[i])))
                for k, v in mix[i].items():
                    row[k] = v
            rows.append(row / row.sum())
    return torch.stack(rows).log()[None]


def spelled(lexicon, words):
    return [t for w in words for t in lexicon.spellings[w][0]]


def test_lexicon_spells_with_the_tokenizers_segmentation(tok):
    lexicon = lx.build_lexicon(["the", "cat", "a.", "<s>", "don't", "café"], tok, n_spellings=1)
    assert lexicon.spellings["cat"] == [tuple(tok.encode("CAT"))]
    assert tok.decode(lexicon.spellings["don't"][0]) == "DON'T"
    assert "a." not in lexicon.spellings and "<s>" not in lexicon.spellings  # not words
    several = lx.build_lexicon(["hello"], tok, n_spellings=3).spellings["hello"]
    assert len(several) == 3 and several[0] == tuple(tok.encode("HELLO"))
    assert all(tok.decode(s) == "HELLO" for s in several) and len(set(several)) == 3


def test_known_word_sequence_wins_and_out_of_lexicon_spelling_does_not(tok):
    lexicon = lx.build_lexicon(["the", "cat", "sat", "cap", "at", "as"], tok)
    decoder = lx.LexiconDecoder(lexicon, tok, None)
    x = posterior(tok, spelled(lexicon, ["the", "cat", "sat"]))
    best = decoder.decode(x, torch.tensor([x.shape[1]]), lx.LexiconConfig(beam_size=20))[0]
    assert best[0].words == ["the", "cat", "sat"]
    assert best[0].tokens == spelled(lexicon, ["the", "cat", "sat"])
    assert best[0].score == pytest.approx(float(x[0].max(-1).values.sum()), abs=1e-4)  # the argmax path itself
    assert len({tuple(h.words) for h in best}) == len(best) > 1  # distinct word sequences, best first
    assert [h.score for h in best] == sorted((h.score for h in best), reverse=True)
    # without "sat" the same posteriors can only give lexicon words
    small = lx.LexiconDecoder(lx.build_lexicon(["the", "cat", "cap", "at", "as"], tok), tok, None)
    words = small.decode(x, torch.tensor([x.shape[1]]), lx.LexiconConfig(beam_size=20))[0][0].words
    assert "sat" not in words and set(words) <= {"the", "cat", "cap", "at", "as"}


def test_unknown_words_only_with_a_finite_unk_score(tok):
    lexicon = lx.build_lexicon(["the", "satin", "at"], tok)  # SATIN = ▁S A T IN: "sat" ends inside the trie
    decoder = lx.LexiconDecoder(lexicon, tok, None)
    x = posterior(tok, spelled(lexicon, ["the"]) + list(tok.encode("SAT")))
    n = torch.tensor([x.shape[1]])
    closed = decoder.decode(x, n, lx.LexiconConfig(beam_size=20))[0][0].words
    assert "sat" not in closed and set(closed) <= {"the", "satin", "at"}
    assert decoder.decode(x, n, lx.LexiconConfig(beam_size=20, unk_score=0.0))[0][0].words == ["the", "sat"]


def test_padding_frames_are_ignored(tok):
    lexicon = lx.build_lexicon(["the", "cat", "sat"], tok)
    decoder = lx.LexiconDecoder(lexicon, tok, None)
    a = posterior(tok, spelled(lexicon, ["cat"]))
    b = posterior(tok, spelled(lexicon, ["the", "cat", "sat"]))
    x = torch.cat([torch.cat([a, torch.zeros(1, b.shape[1] - a.shape[1], a.shape[2])], 1), b])
    out = decoder.decode(x, torch.tensor([a.shape[1], b.shape[1]]))
    assert [h[0].words for h in out] == [["cat"], ["the", "cat", "sat"]]


@pytest.fixture(scope="module")
def cap_lm(tmp_path_factory):
    """An LM that has seen 'the cap' nine times as often as 'the cat'."""
    text = [["the", "cap"]] * 9 + [["the", "cat"], ["a", "hat"]]
    return write_arpa(build_kneser_ney(text, order=2), tmp_path_factory.mktemp("lm") / "cap.arpa")


def ambiguous(tok, lexicon):
    """'the ca?' where the last piece is T with 0.5 and P with 0.45: CTC prefers 'cat' a little."""
    tokens = spelled(lexicon, ["the", "cat"])
    t, p = tokens[-1], lexicon.spellings["cap"][0][-1]
    return posterior(tok, tokens, mix={len(tokens) - 1: {t: 0.5, p: 0.45, 0: 0.04}})


def test_lm_decides_and_a_boosted_user_word_wins(tok, cap_lm, tmp_path):
    words = ["the", "cat", "cap", "a", "hat"]
    x = ambiguous(tok, lx.build_lexicon(words, tok))
    n = torch.tensor([x.shape[1]])
    config = lx.LexiconConfig(lm_weight=1.0)
    assert lx.LexiconDecoder(lx.build_lexicon(words, tok), tok, None).decode(x, n)[0][0].words == ["the", "cat"]
    plain = lx.LexiconDecoder(lx.build_lexicon(words, tok), tok, cap_lm)
    best = plain.decode(x, n, config)[0][0]
    assert best.words == ["the", "cap"]
    assert best.score == pytest.approx(best.ctc_score + config.lm_weight * best.lm_score, abs=1e-4)
    user = tmp_path / "words.txt"
    user.write_text("# names and terms\nCat 1.5\n")
    assert lx.read_user_words(user) == {"cat": 1.5}
    boosts = lx.read_user_words(user)
    boosted = lx.LexiconDecoder(lx.build_lexicon(words, tok, boosts=boosts), tok, cap_lm)
    top = boosted.decode(x, n, config)[0][0]
    assert top.words == ["the", "cat"]
    # a user word the LM has never seen is spelled and scored too
    (tmp_path / "new.txt").write_text("cab\n")
    boosts = lx.read_user_words(tmp_path / "new.txt", default_boost=3.0)
    new = lx.LexiconDecoder(lx.build_lexicon(words + list(boosts), tok, boosts=boosts), tok, cap_lm)
    y = posterior(tok, spelled(new.lexicon, ["the", "cab"]))
    assert new.decode(y, torch.tensor([y.shape[1]]), config)[0][0].words == ["the", "cab"]


def test_bad_words_file_names_file_and_line(tmp_path):
    bad = tmp_path / "w.txt"
    bad.write_text("fine\nnew york\n")
    with pytest.raises(ValueError, match=r"w\.txt:2: 'new york' is 2 words"):
        lx.read_user_words(bad)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        lx.read_user_words(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def recognizer():
    from speech_transformer.recognition.recognizer import Recognizer

    torch.set_num_threads(1)
    return Recognizer.from_dir(None)


@pytest.fixture(scope="module")
def sample(recognizer, data_dir):
    from speech_transformer.audio.loading import load_audio
    from speech_transformer.training.data import read_manifest

    utt = read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")[0]
    return utt, recognizer.encode([load_audio(utt.audio)])


def test_rescoring_reorders_when_the_attention_decoder_disagrees(recognizer, sample):
    """The n-best list is in CTC pieces; the decoder scores each one in its own vocabulary (respelt where it has
    its own, a distilled student's)."""
    from speech_transformer.decoding.search import ctc_greedy_search, sequence_log_probs
    from speech_transformer.text.tokenizer import respell

    _, enc = sample
    ctc_vocab, own = recognizer.ctc_tokenizer, recognizer.ctc_tokenizer is recognizer.tokenizer
    spell = (lambda ids: ids) if own else (lambda ids: respell(ids, ctc_vocab, recognizer.tokenizer))
    best = ctc_greedy_search(enc.ctc_log_probs, enc.lengths)[0].tokens
    worse = list(best)  # the CTC head's own output with two pieces replaced
    for i in (len(worse) // 3, 2 * len(worse) // 3):
        worse[i] = 2 + (worse[i] + 50) % (ctc_vocab.vocab_size - 2)
    good, bad = (lx.WordHypothesis(["good"], best, score=-50.0, ctc_score=-50.0, lm_score=0.0),
                 lx.WordHypothesis(["bad"], worse, score=-10.0, ctc_score=-10.0, lm_score=0.0))
    att = sequence_log_probs(recognizer.model, enc.memory.expand(2, -1, -1), enc.lengths.expand(2),
                             [spell(best), spell(worse)], recognizer.tokenizer.special)
    assert att[0] > att[1]
    args = (ctc_vocab.special, None if own else spell, None if own else recognizer.tokenizer.special)
    out = lx.rescore(recognizer.model, enc.memory, enc.lengths, enc.ctc_log_probs, [[bad, good]], 1.0, 0.0, 0.0, *args)
    assert [h.words for h in out[0]] == [["good"], ["bad"]]
    assert out[0][0].total == pytest.approx(float(att[0]), abs=1e-4)
    # with weight 0 the full-sum CTC score decides
    ctc = lx.ctc_sequence_log_probs(enc.ctc_log_probs.expand(2, -1, -1), enc.lengths.expand(2), [best, worse])
    out = lx.rescore(recognizer.model, enc.memory, enc.lengths, enc.ctc_log_probs, [[bad, good]], 0.0, 0.0, 0.0, *args)
    assert [h.ctc_sum_score for h in out[0]] == pytest.approx(sorted(ctc.tolist(), reverse=True), abs=1e-4)


def Options(**fields):  # noqa: N802 - the lexicon method's options
    from speech_transformer.decoding.options import DecodingOptions

    return DecodingOptions(**{"method": "lexicon", "beam_size": 20, "lm_weight": 0.5, "rescore_weight": 0.3,
                              "nbest": 5, "word_lm": None, **fields})


def test_lexicon_search_on_real_speech(recognizer, sample, data_dir, tmp_path):
    from speech_transformer.decoding.arpa import read_corpus
    from speech_transformer.audio.loading import load_audio

    utt, enc = sample
    lm = write_arpa(build_kneser_ney(read_corpus(data_dir / "librispeech" / "train.tsv")[:400], 3), tmp_path / "lm.arpa")
    hyps = lx.lexicon_search(recognizer, enc, Options(word_lm=str(lm)))
    via_recognizer = recognizer.recognize([load_audio(utt.audio)], Options(word_lm=str(lm)))[0]
    assert via_recognizer.tokens == hyps[0].tokens  # method="lexicon" is one more search of the one path
    assert len(hyps) == 1
    decoder = lx.get_decoder(recognizer.ctc_tokenizer, str(lm))  # it spells in the CTC head's pieces
    assert lx.get_decoder(recognizer.ctc_tokenizer, str(lm)) is decoder  # built once per process
    text = recognizer.ctc_tokenizer.decode(hyps[0].tokens).lower().split()
    assert text and set(text) <= set(decoder.lexicon.spellings)
    with pytest.raises(FileNotFoundError, match="nothere.arpa"):
        lx.lexicon_search(recognizer, enc, Options(word_lm=str(tmp_path / "nothere.arpa")))
