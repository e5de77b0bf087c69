"""Training runs in real processes: DDP (torchrun, gloo) against one process; validation scores."""

import json

import pytest
import torch

from conftest import final_weights, finish, run, settings
from speech_transformer.training.data import read_manifest
from speech_transformer.text.normalize import normalize_transcript


def test_ddp_two_processes_match_one_process_with_the_same_global_batch(setup):
    same = {"model": "{encoder_layers: 1, decoder_layers: 1, d_model: 64, d_ff: 128, subsampling_channels: 16, "
                     "dropout: 0.0}", "spec_augment": "null", "max_steps": 6}
    finish(run(settings(setup, "ddp", **same), torchrun=2))
    finish(run(settings(setup, "single", accumulation=2, **same)))
    summary = json.loads((setup / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["rank_param_checksums"][0] == summary["rank_param_checksums"][1]
    a, b = final_weights(setup / "ddp"), final_weights(setup / "single")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    losses = lambda d: [json.loads(x)["loss"] for x in (setup / d / "metrics.jsonl").read_text().splitlines()]  # noqa
    assert len(losses("ddp")) == 6
    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-4)


def test_validate_scores_what_the_recognizer_decodes(data_dir, setup):
    """validate() decodes through Recognizer.encode + decoding.decode: its scores are those of recognize()."""
    import jiwer

    from speech_transformer.audio.loading import load_audio
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.model.transformer import SpeechTransformer, preset
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.text.tokenizer import Tokenizer
    from speech_transformer.training.trainer import validate

    torch.manual_seed(0)
    tokenizer = Tokenizer(setup / "tok.model")
    model = SpeechTransformer(preset("tiny", vocab_size=tokenizer.vocab_size, encoder_layers=1, decoder_layers=1))
    utts = read_manifest(data_dir / "fsdd" / "test.tsv")[:5]
    waves, texts = [load_audio(u.audio) for u in utts], [normalize_transcript(u.text) for u in utts]
    result = validate(model.train(), tokenizer, waves, texts, batch_size=2)
    assert model.training  # validate hands the model back in training mode
    recognizer = Recognizer(model, tokenizer)
    attention = [r.text for r in recognizer.recognize(waves, DecodingOptions(beam_size=1, ctc_weight=0.0))]
    ctc = [r.text for r in recognizer.recognize(waves, DecodingOptions(method="ctc"))]
    assert result["valid_wer"] == jiwer.wer(texts, attention) and result["valid_cer"] == jiwer.cer(texts, attention)
    assert result["valid_ctc_cer"] == jiwer.cer(texts, ctc) and result["valid_example"] == attention[0]
    assert result["valid_loss"] > 0
