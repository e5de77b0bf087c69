"""`speech-transformer lm-words`: a word LM built from text, written as ARPA."""

import pytest

from speech_transformer.apps.cli import main
from speech_transformer.decoding.arpa import read_arpa


def test_lm_words_builds_an_arpa_file_from_text(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("utt1\tTurn the lights on.\nutt2\tturn the lights off\nTurn on the radio\n")
    out = tmp_path / "words.arpa.gz"
    assert main(["lm-words", str(out), "--text", str(text), "--order", "2"]) == 0
    lm = read_arpa(out)
    assert lm.order == 2 and {"turn", "lights", "radio", "</s>", "<unk>"} <= set(lm.vocab)
    assert lm.log10_prob("the", ["turn"]) > lm.log10_prob("radio", ["turn"])
    assert "n-grams" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lm-words", str(out)])  # neither --text nor --generic
