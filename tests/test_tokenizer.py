import pytest

from speech_transformer.text.tokenizer import BLANK_ID, SOS_EOS_ID, Tokenizer, train_tokenizer


def test_round_trip_and_special_ids(tokenizer, librispeech_train):
    assert tokenizer.vocab_size == 256
    for utt in librispeech_train[:20]:
        ids = tokenizer.encode(utt.text)
        assert min(ids) >= 2 and max(ids) < tokenizer.vocab_size
        assert tokenizer.decode(ids) == utt.text
    assert tokenizer.id_to_piece(BLANK_ID) == "<blank>" and tokenizer.id_to_piece(SOS_EOS_ID) == "<sos/eos>"
    assert tokenizer.decode([BLANK_ID, SOS_EOS_ID] + tokenizer.encode("HELLO")) == "HELLO"


def test_bpe_and_reload(tmp_path):
    texts = ["THE CAT SAT ON THE MAT", "A DOG RAN IN THE PARK", "THE END"] * 20
    tok = train_tokenizer(texts, tmp_path / "bpe.model", vocab_size=40, model_type="bpe")
    again = Tokenizer(tmp_path / "bpe.model")
    assert again.encode("THE CAT") == tok.encode("THE CAT")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        (tmp_path / "bad.model").write_bytes(b"junk")
        Tokenizer(tmp_path / "bad.model")
