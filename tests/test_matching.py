"""Grammar matching on real clips with the shipped default model (it was trained on FSDD and AN4 train)."""

from __future__ import annotations

import copy
import itertools
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from speech_transformer.commands import matching as commands
from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
from speech_transformer.commands.matching import (
    DEFAULT_REJECT_THRESHOLD,
    MatchOptions,
    ctc_log_likelihoods,
    match,
    match_all,
)
from speech_transformer.training.data import read_manifest
from speech_transformer.commands.grammar import Grammar


@pytest.fixture(scope="module")
def recognizer():
    from speech_transformer.recognition.recognizer import Recognizer

    torch.set_num_threads(1)
    return Recognizer.from_dir(None)


@pytest.fixture(scope="module")
def an4_train(data_dir):
    return read_manifest(data_dir / "an4" / "train.tsv")


def test_ctc_log_likelihood_sums_every_alignment():
    torch.manual_seed(0)
    lp = torch.randn(5, 3).log_softmax(-1)  # 5 frames, blank 0 and tokens 1, 2
    target = [1, 2]
    total = -math.inf
    for path in itertools.product(range(3), repeat=5):
        collapsed = [k for k, _ in itertools.groupby(path) if k != 0]
        if collapsed == target:
            total = np.logaddexp(total, float(sum(lp[t, k] for t, k in enumerate(path))))
    got = ctc_log_likelihoods(lp, [target, [1, 1, 1, 1]])
    assert got[0].item() == pytest.approx(total, abs=1e-4)
    assert got[1].item() == -math.inf  # 1 1 1 1 needs 7 frames


def test_digit_grammar_matches_fsdd_clips_with_slot_values(recognizer, fsdd):
    digits = Grammar.load("digits")
    found = match(recognizer, [load_audio(u.audio) for u in fsdd], digits)
    values = {w: str(d) for d, w in enumerate("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split())}
    assert [m.text for m in found] == [u.text for u in fsdd]
    for m, u in zip(found, fsdd):
        assert m.action == "digit" and m.slots == {"digit": values[u.text]}
        assert 0.0 <= m.confidence <= 1.0 and m.llr >= DEFAULT_REJECT_THRESHOLD


def test_search_finds_what_enumeration_finds(fsdd, an4_train):
    """The constrained beam search (forced by max_expansions=0) and exact scoring of every phrase agree (in
    float32: int8 compute quantizes each batch's inputs with one scale, and the two batch differently)."""
    from speech_transformer.recognition.recognizer import Recognizer

    recognizer = Recognizer.from_dir(None, compute="float32")
    desktop = Grammar.load("desktop")
    clips = [u for u in an4_train if desktop.parse(u.text.split())][:6]
    waves = [load_audio(u.audio) for u in clips]
    exact = match_all(recognizer, waves, desktop)
    searched = match_all(recognizer, waves, desktop, MatchOptions(max_expansions=0))
    assert [m.text for m in searched] == [m.text for m in exact] == [u.text for u in clips]
    assert [m.action for m in exact] == [desktop.commands[desktop.parse(u.text.split()).command].action
                                         for u in clips]
    for a, b in zip(exact, searched):
        assert b.llr == pytest.approx(a.llr, abs=1e-3)


def test_loop_grammar_spells_an4_letters(recognizer, an4_train):
    """({letter} | {digit})+ has ~10^24 phrases: only the search can match it."""
    g = Grammar.parse_text("({letter} | {digit})+ -> spell\n")
    assert g.count() > 10 ** 20
    clip = next(u for u in an4_train if u.text == "P I T T S B U R G H")
    (m,) = match(recognizer, [load_audio(clip.audio)], g)
    assert m.text == clip.text and m.action == "spell"
    assert [m.slots[k] for k in ["letter"] + [f"letter_{i}" for i in range(2, 11)]] == clip.text.split()


def test_number_slots_from_an4(recognizer, an4_train):
    g = Grammar.parse_text("enter {number} -> enter\n(yes | no) -> answer\n")
    clips = [u for u in an4_train if u.text in ("ENTER FIVE", "ENTER FIFTY FOUR", "YES", "NO")][:6]
    found = match(recognizer, [load_audio(u.audio) for u in clips], g)
    for m, u in zip(found, clips):
        assert m is not None and m.text == u.text
        if u.text.startswith("ENTER"):
            assert m.action == "enter" and m.slots == {"number": {"ENTER FIVE": "5", "ENTER FIFTY FOUR": "54"}[u.text]}
        else:
            assert m.action == "answer" and m.slots == {}


def test_open_speech_is_rejected(recognizer, data_dir):
    """LibriSpeech test-clean sentences are nothing the desktop grammar can say."""
    clips = read_manifest(data_dir / "librispeech" / "samples" / "samples.tsv")
    waves = [load_audio(u.audio) for u in clips]
    desktop = Grammar.load("desktop")
    assert match(recognizer, waves, desktop) == [None] * len(clips)
    best = match(recognizer, waves, desktop, MatchOptions(reject_threshold=None))
    threshold = MatchOptions.for_model(recognizer.info).reject_threshold
    assert all(m is not None and m.llr < threshold for m in best)


def test_options_come_from_the_models_config(recognizer, fsdd):
    config = {"commands": {"ctc_weight": 0.6, "reject_threshold": -3.5}}
    assert MatchOptions.for_model(config) == MatchOptions(ctc_weight=0.6, reject_threshold=-3.5)
    assert MatchOptions.for_model({}) == MatchOptions()
    assert MatchOptions.for_model(config, reject_threshold=None, ctc_weight=1.0).ctc_weight == 1.0
    with pytest.raises(ValueError, match="unknown fields \\['threshold'\\]"):
        MatchOptions.for_model({"commands": {"threshold": 1.0}})
    wave = [load_audio(fsdd[6].audio)]  # THREE
    (m,) = match(recognizer, wave, Grammar.load("digits"))
    assert m is not None and m.text == "THREE"
    picky = copy.copy(recognizer)
    picky.info = {**recognizer.info, "commands": {"reject_threshold": m.llr + 1.0}}
    assert match(picky, wave, Grammar.load("digits")) == [None]  # the model's own threshold rejects it
