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


@pytest.fixture(scope="module")
def whisper_vocab():
    whisper = pytest.importorskip("whisper", reason="openai-whisper is in the test extra")
    from pathlib import Path
    from speech_transformer.text.tokenizer import WhisperTokenizer

    return WhisperTokenizer(Path(whisper.__file__).parent / "assets" / "multilingual.tiktoken", multilingual=True)


def test_pruned_whisper_vocabulary(whisper_vocab, tmp_path):
    """`prune_vocabulary`: the kept tokens (and all 256 single bytes) in their order, English transcription's
    specials only; kept words encode as before, others fall back to smaller kept pieces; reloads from its config."""
    from speech_transformer.text.tokenizer import load_tokenizer, prune_vocabulary

    text = " Ask not what your country can do for you."
    pruned, old_ids = prune_vocabulary(whisper_vocab, whisper_vocab.encode(text), tmp_path / "v.tiktoken")
    assert old_ids[:256] == sorted(old_ids[:256]) and old_ids[-6:] == [whisper_vocab.special_ids[n] for n in (
        "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|transcribe|>", "<|nospeech|>", "<|notimestamps|>")]
    assert [old_ids[i] for i in pruned.encode(text)] == whisper_vocab.encode(text)
    other = " Zebras, 42 of them!"
    assert pruned.decode(pruned.encode(other)) == other and len(pruned.encode(other)) > len(whisper_vocab.encode(other))
    assert [pruned.decode([i]) for i in pruned.special.prompt] == [""] * 4
    first_special = pruned.vocab_size - 6  # <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>
    assert pruned.special.prompt == tuple(first_special + k for k in (1, 2, 3, 5))
    assert pruned.encode(" ")[0] not in pruned.special.suppress  # a lone space byte is not a non-speech token
    again = load_tokenizer(tmp_path / "v.tiktoken", pruned.to_config())
    assert again.vocab_size == pruned.vocab_size and again.encode(other) == pruned.encode(other)


def test_respell_between_vocabularies(whisper_vocab, tokenizer):
    from speech_transformer.text.tokenizer import respell

    ours = tokenizer.encode("TURN ON THE LIGHT")
    theirs = respell(ours, tokenizer, whisper_vocab)
    assert whisper_vocab.decode(theirs) == " Turn on the light."
    assert tokenizer.decode(respell(whisper_vocab.encode(" Turn on the 2 lights!"), whisper_vocab, tokenizer)) == \
        "TURN ON THE TWO LIGHTS"
    assert respell(ours, tokenizer, tokenizer) == ours
