"""Options per search: one table of settings, the model's tuned settings kept per search."""

import json

import pytest

from speech_transformer.decoding.options import (
    OPTIONS,
    SPEC_KEYS,
    AttentionOptions,
    DecodingOptions,
    LexiconOptions,
)


def tuned() -> DecodingOptions:
    return DecodingOptions.from_dict({"method": "attention", "attention": {"beam_size": 4, "ctc_weight": 0.3},
                                      "lexicon": {"beam_size": 200, "lm_weight": 1.6, "word_score": 1.0}})


def test_flat_names_go_to_the_chosen_search():
    o = DecodingOptions(beam_size=4, ctc_weight=0.3)
    assert o.attention == AttentionOptions(beam_size=4, ctc_weight=0.3) and o.lexicon == LexiconOptions()
    lexicon = DecodingOptions(method="lexicon", beam_size=200, lm_weight=1.0)
    assert lexicon.lexicon.beam_size == 200 and lexicon.attention.beam_size == 1
    assert lexicon.beam_size == 200 and lexicon.temperatures == (0.0,)  # read through the chosen search
    with pytest.raises(ValueError, match="unknown decoding option 'beam'"):
        DecodingOptions(beam=3)


def test_method_alone_gives_that_search_with_its_tuned_settings():
    o = tuned()
    lexicon = o.override(method="lexicon")
    assert lexicon.describe() == "lexicon beam 200, LM weight 1.6, word score 1"
    assert lexicon.override(method="attention") == o  # nothing lost on the way
    assert o.override(method="ctc").describe() == "CTC greedy"


def test_a_setting_of_one_search_chooses_it():
    lexicon = tuned().override(method="lexicon")
    assert lexicon.override(ctc_weight=0.5).describe() == "beam 4, CTC weight 0.5"  # ctc belongs to attention
    assert tuned().override(word_score=2.0).method == "lexicon"
    assert lexicon.override(beam_size=50).lexicon.beam_size == 50  # both have a beam: the chosen one changes
    assert tuned().override(beam_size=None, ctc_weight=None) == tuned()  # None keeps the setting


def test_dict_round_trip_and_the_flat_form_of_older_models():
    o = tuned()
    assert DecodingOptions.from_dict(json.loads(json.dumps(o.to_dict()))) == o
    assert DecodingOptions.from_dict({"beam_size": 4, "ctc_weight": 0.3}) == DecodingOptions(beam_size=4, ctc_weight=0.3)
    assert DecodingOptions().to_dict() == {"method": "attention"}
    with pytest.raises(ValueError, match="lexicon.beam"):
        DecodingOptions.from_dict({"lexicon": {"beam": 3}})


def test_one_table_names_every_setting_of_every_search():
    from dataclasses import fields

    from speech_transformer.decoding.options import SEARCHES

    names = {f.name for cls in SEARCHES.values() for f in fields(cls)}
    assert names | {"method"} == set(OPTIONS)
    assert SPEC_KEYS["beam"] == "beam_size" and SPEC_KEYS["ws"] == "word_score" and SPEC_KEYS["ctc"] == "ctc_weight"
    assert OPTIONS["beam_size"].flag == "--beam" and OPTIONS["length_penalty"].flag is None
    assert OPTIONS["temperatures"].parse("0,0.2") == (0.0, 0.2)
