"""End to end: a tiny model learns five real utterances (conftest.train_overfit_model), is saved,
and the loaded directory transcribes them with every search."""

import pytest

from speech_transformer.audio import load_audio
from speech_transformer.decoding import DecodingOptions
from speech_transformer.recognizer import Recognizer


@pytest.mark.parametrize("options", [DecodingOptions(beam_size=3, ctc_weight=0.3),
                                     DecodingOptions(beam_size=1, ctc_weight=0.0),
                                     DecodingOptions(method="ctc")], ids=["beam3+ctc", "greedy", "ctc"])
def test_saved_model_transcribes_what_it_learned(overfit_model_dir, overfit_clips, options):
    recognizer = Recognizer.from_dir(overfit_model_dir)
    waves = [load_audio(u.audio) for u in overfit_clips]
    results = recognizer.recognize(waves, options, batch_seconds=4.0)  # several batches, padded
    assert [r.text for r in results] == [u.text for u in overfit_clips]
    assert all(r.avg_logprob <= 0 and r.tokens for r in results)
