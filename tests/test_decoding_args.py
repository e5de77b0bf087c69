"""Decoding flags come from the option table, and help shows the embedded model's own values."""

import argparse

import pytest

from speech_transformer.apps.decoding_args import add_decoding_arguments, decoding_changes, describe_preferred, \
    embedded_decoding
from speech_transformer.decoding.options import DecodingOptions


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_decoding_arguments(p)
    return p


def test_flags_set_only_what_is_given():
    args = parser().parse_args(["--beam", "8", "--temperatures", "0,0.5", "--words", "w.txt"])
    assert decoding_changes(args) == {"beam_size": 8, "temperatures": (0.0, 0.5), "words_file": "w.txt"}
    assert decoding_changes(parser().parse_args([])) == {}
    with pytest.raises(SystemExit):
        parser().parse_args(["--beam", "x"])


def test_help_reads_the_embedded_models_values():
    preferred = embedded_decoding()
    assert preferred is not None
    text = " ".join(parser().format_help().split())
    assert preferred.describe() in text and describe_preferred(preferred) in text  # with its other tuned searches
    tuned = DecodingOptions(beam_size=4).override(method="lexicon", lm_weight=1.6).override(method="attention")
    assert describe_preferred(tuned) == "beam 4 (also tuned: lexicon beam 50, LM weight 1.6, word score 0)"
