"""The token n-gram LM: proper distributions, a lossless file, and shallow fusion that steers beam search."""

import math

import pytest
import torch

from speech_transformer.apps.cli import main as cli
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import decode
from speech_transformer.decoding.token_lm import LM_FILE, NgramLM
from speech_transformer.model.transformer import SpeechTransformer, preset

SENTENCES = [[5, 6, 7], [5, 6, 8, 9], [9, 9, 5], [6, 7, 7, 7, 5]]


def test_probabilities_sum_to_one_for_seen_and_unseen_histories():
    lm = NgramLM.train(SENTENCES, order=3, vocab_size=12, bos=1, eos=1)
    for history in ([1, 1], [1, 5], [5, 6], [11, 10], [6, 7, 7]):
        total = sum(lm.prob(history, w) for w in range(12))
        assert math.isclose(total, 1.0, rel_tol=1e-9), (history, total)
    assert lm.prob([5, 6], 7) > lm.prob([5, 6], 9) > lm.prob([5, 6], 3) > 0  # seen > seen less > unseen


def test_file_round_trip_and_refusal(tmp_path):
    lm = NgramLM.train(SENTENCES, order=4, vocab_size=12, bos=1, eos=1)
    again = NgramLM.load(lm.save(tmp_path / LM_FILE))
    candidates = torch.tensor([[5, 6, 7], [1, 9, 3]])
    assert torch.equal(lm.log_probs([[5, 6], []], candidates), again.log_probs([[5, 6], []], candidates))
    (tmp_path / "bad.json").write_text('{"format": "pickle"}')
    with pytest.raises(ValueError, match="not an n-gram LM file"):
        NgramLM.load(tmp_path / "bad.json")


def test_a_strong_lm_spells_its_sentence_through_beam_search():
    torch.manual_seed(0)
    model = SpeechTransformer(preset("tiny", vocab_size=12, encoder_layers=1, decoder_layers=1)).eval()
    memory, lengths = model.encode(torch.randn(1, 200, 80), torch.tensor([200]))
    lm = NgramLM.train([[5, 6, 7]] * 20, order=3, vocab_size=12, bos=1, eos=1)
    options = DecodingOptions(beam_size=3, ctc_weight=1.0, max_length=10)
    plain = decode(model, memory, lengths, options)[0].tokens
    assert decode(model, memory, lengths, options, lm=lm)[0].tokens == plain  # lm_weight 0: no effect
    fused = decode(model, memory, lengths, DecodingOptions(beam_size=3, ctc_weight=1.0, max_length=10, lm_weight=20.0),
                   lm=lm)[0].tokens
    assert fused == [5, 6, 7] != plain


def test_cli_trains_an_lm_into_a_model_directory(overfit_model_dir, tmp_path, data_dir):
    out = tmp_path / LM_FILE
    assert cli(["lm", "--model", str(overfit_model_dir), "--manifest", str(data_dir / "an4" / "train.tsv"),
                "--order", "3", "--output", str(out)]) == 0
    lm = NgramLM.load(out)
    assert lm.order == 3 and lm.eos == 1 and len(lm.counts) > 100
