"""The Whisper student (training/student.py): built from a random-weight openai-whisper model, then fine-tuned."""

from __future__ import annotations

import dataclasses
import json

from pathlib import Path

import pytest
import torch

pytest.importorskip("whisper", reason="openai-whisper is in the test extra: pip install -e '.[test]'")
from whisper.model import ModelDimensions, Whisper  # noqa: E402

from speech_transformer.model.checkpoint import load_model  # noqa: E402
from speech_transformer.training.data import read_manifest  # noqa: E402

ENGLISH_VOCAB = 51864


def test_student_keeps_whispers_lower_encoder_and_trains_with_frozen_blocks(tmp_path, data_dir):
    """`student`: Whisper's stem and first blocks, new CTC head and decoder over our tokenizer;
    fine-tuned with `freeze`, the frozen weights stay Whisper's and the rest learns."""
    from speech_transformer.training.data import write_manifest
    from speech_transformer.pretrained import default_model_dir
    from speech_transformer.training.trainer import main as train_main
    from speech_transformer.model.checkpoint import model_ctc_tokenizer
    from speech_transformer.apps.whisper_cli import main as whisper_main

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=ENGLISH_VOCAB, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=1)
    torch.manual_seed(0)
    teacher = Whisper(dims)
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": teacher.state_dict()}, tmp_path / "t.pt")
    assert whisper_main([str(tmp_path / "t.pt"), "--student", "3", "-o", str(tmp_path / "x"),
                        "--tokenizer-from", str(default_model_dir())]) == 2  # 2 layers only
    assert whisper_main([str(tmp_path / "t.pt"), "--student", "1", "-o", str(tmp_path / "student"),
                        "--tokenizer-from", str(default_model_dir())]) == 0
    student, tokenizer, _ = load_model(tmp_path / "student")
    c = student.config
    assert (c.encoder_layers, c.decoder_layers, c.ctc, c.frontend) == (1, 1, True, "whisper_log_mel")
    assert not c.scale_embeddings and c.decoder_scale_embeddings  # Whisper's encoder as it was, our decoder scaled
    assert tokenizer.vocab_size == c.vocab_size == model_ctc_tokenizer(default_model_dir()).vocab_size
    ours = student.state_dict()
    theirs = teacher.state_dict()
    assert torch.equal(ours["encoder.blocks.0.attn.query.weight"], theirs["encoder.blocks.0.attn.query.weight"])
    assert torch.equal(ours["encoder.subsampling.conv2.weight"], theirs["encoder.conv2.weight"])
    assert torch.equal(ours["encoder.positions.table.weight"], theirs["encoder.positional_embedding"])

    write_manifest(read_manifest(data_dir / "fsdd" / "train.tsv")[:4], tmp_path / "train.jsonl")
    frozen = ["encoder.subsampling.", "encoder.positions.", "encoder.blocks.0."]
    settings = {"out_dir": tmp_path / "run", "train": f"[{tmp_path / 'train.jsonl'}]",
                "init_from": tmp_path / "student", "freeze": json.dumps(frozen), "ctc_weight": 0.5,
                "batch_seconds": 30, "max_steps": 12, "warmup_steps": 1, "lr": 0.003, "schedule": "constant",
                "log_every": 1, "save_every": 6, "average_last": 1, "num_workers": 0, "progress": "false",
                "speed_perturb": "[1.0]", "spec_augment": "null", "label_smoothing": 0}
    assert train_main([f"--set={k}={v}" for k, v in settings.items()]) == 0
    losses = [m["loss"] for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
              if "loss" in m]
    assert losses[-1] < 0.5 * losses[0], losses
    trained = load_model(tmp_path / "run" / "model")[0].state_dict()
    for name, value in ours.items():
        assert torch.equal(trained[name], value) == name.startswith(tuple(frozen)), name


def test_distilled_student_has_two_vocabularies_end_to_end(tmp_path, root, speech):
    """`distilled_student`: the teacher's lower blocks, the top model's upper block and CTC head, the teacher's
    chosen decoder blocks over its pruned vocabulary; saved with its CTC vocabulary, the Recognizer decodes each
    method in the right vocabulary, aligns in the CTC one, and refuses the joint CTC/attention search."""
    from conftest import converted
    from speech_transformer.model.checkpoint import CheckpointError, model_ctc_tokenizer, model_tokenizer, save_model
    from speech_transformer.pretrained import default_model_dir
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.decoding.options import DecodingOptions
    from speech_transformer.training.student import distilled_student, student

    _, checkpoint, teacher = converted("tiny", "multilingual", root)  # 4 blocks each side, d=384
    ours = model_ctc_tokenizer(default_model_dir())
    student(str(checkpoint), ours, tmp_path / "top", encoder_layers=4)  # "v3": Whisper's blocks + our CTC head
    whisper_vocab = model_tokenizer(teacher)
    keep = whisper_vocab.encode(" And so, my fellow Americans, ask not what your country can do for you.")
    model, vocab, old_ids = distilled_student(teacher, tmp_path / "top", keep, tmp_path / "v.tiktoken", 3, (0, 3))
    assert vocab.vocab_size == len(old_ids) == 256 + len(set(keep) - set(range(256))) + 6
    assert [old_ids[i] for i in vocab.encode(" And so, my fellow Americans")] == whisper_vocab.encode(" And so, my fellow Americans")
    t = load_model(teacher)[0].state_dict()
    top = load_model(tmp_path / "top")[0].state_dict()
    s = model.state_dict()
    assert torch.equal(s["encoder.blocks.2.ff.0.weight"], t["encoder.blocks.2.ff.0.weight"])
    assert torch.equal(s["encoder.blocks.3.ff.0.weight"], top["encoder.blocks.3.ff.0.weight"])
    assert torch.equal(s["ctc_head.weight"], top["ctc_head.weight"]) and s["ctc_head.weight"].shape[0] == 256
    assert torch.equal(s["decoder.blocks.1.cross_attn.key.weight"], t["decoder.blocks.3.cross_attn.key.weight"])
    assert torch.equal(s["decoder.embed.weight"], t["decoder.embed.weight"][old_ids])

    save_model(model, vocab, tmp_path / "distilled", ctc_tokenizer=ours)
    r = Recognizer.from_dir(tmp_path / "distilled")
    assert r.tokenizer.to_config()["pruned"] and r.ctc_tokenizer.vocab_size == 256
    greedy = r.recognize(speech[:1], DecodingOptions(method="attention", beam_size=1, max_length=20),
                         align=True)[0]
    assert all(i < vocab.vocab_size for i in greedy.tokens) and greedy.text == vocab.decode(greedy.tokens).strip()
    assert greedy.ctc_tokens is not None and all(i < 256 for i in greedy.ctc_tokens)
    ctc = r.recognize(speech[:1], DecodingOptions(method="ctc"))[0]
    assert ctc.text == ours.decode(ctc.tokens)
    from speech_transformer.decoding.arpa import write_arpa
    from speech_transformer.decoding.word_lm import build_kneser_ney

    said = ["AND SO MY FELLOW AMERICANS".split(), "ASK NOT WHAT YOUR COUNTRY CAN DO".split()]
    lm = write_arpa(build_kneser_ney(said, order=2), tmp_path / "lm.arpa")
    words = r.recognize(speech[:1], DecodingOptions(method="lexicon", word_lm=str(lm), rescore_weight=0.5))[0]
    assert all(i < 256 for i in words.tokens)  # CTC pieces, rescored by the decoder on their respelling
    assert set(words.text.split()) <= set(said[0] + said[1])
    with pytest.raises(ValueError, match="own vocabularies"):
        r.recognize(speech[:1], DecodingOptions(beam_size=2, ctc_weight=0.3))
    # recipes/distil/train.py --init-from: the saved model starts a new run, its teacher ids found again by bytes
    import importlib.util

    spec = importlib.util.spec_from_file_location("distil_train", Path(__file__).resolve().parents[1] / "recipes" /
                                                  "distil" / "train.py")
    distil = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(distil)
    (tmp_path / "run" / "teacher").mkdir(parents=True)
    (tmp_path / "run" / "teacher" / "whisper-base").symlink_to(teacher)
    distil.init_from_model(tmp_path / "distilled", tmp_path / "run", tmp_path / "again" / "init")
    again, again_vocab, again_ids, _ = distil.load_student(tmp_path / "again", "decoder")
    assert again_ids == old_ids and again_vocab.encode(" Americans") == vocab.encode(" Americans")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad == k.startswith("decoder.") for k, p in again.named_parameters())
    (tmp_path / "distilled" / "ctc_tokenizer.model").write_bytes(b"not sentencepiece")
    with pytest.raises(CheckpointError, match="ctc_tokenizer.model"):
        Recognizer.from_dir(tmp_path / "distilled")


def test_a_distilled_student_with_a_ctc_branch_spells_as_the_top_model_does(tmp_path, root, speech):
    """`ctc_branch`: the teacher's whole encoder feeds the decoder, while the CTC head reads the top model's
    upper block: the recogniser's CTC posteriors are the top model's own."""
    from conftest import converted
    from speech_transformer.model.checkpoint import model_ctc_tokenizer, model_tokenizer, save_model
    from speech_transformer.pretrained import default_model_dir
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.training.student import distilled_student, student

    _, checkpoint, teacher = converted("tiny", "multilingual", root)
    ours = model_ctc_tokenizer(default_model_dir())
    student(str(checkpoint), ours, tmp_path / "top", encoder_layers=4)
    top = Recognizer.from_dir(tmp_path / "top")
    with torch.no_grad():
        top.model.encoder.blocks[3].ff[0].weight.mul_(0.9)  # as fine-tuning would: not the teacher's block 3
    save_model(top.model, ours, tmp_path / "top")
    keep = model_tokenizer(teacher).encode(" And so, my fellow Americans")
    model, vocab, _ = distilled_student(teacher, tmp_path / "top", keep, tmp_path / "v.tiktoken", 3, (0, 3),
                                        upper_from_teacher=True, ctc_branch=True)
    t = load_model(teacher)[0].state_dict()
    s = model.state_dict()
    assert model.config.ctc_branch_layers == 1
    assert torch.equal(s["encoder.blocks.3.ff.0.weight"], t["encoder.blocks.3.ff.0.weight"])
    assert torch.equal(s["encoder.ctc_blocks.0.ff.0.weight"], top.model.state_dict()["encoder.blocks.3.ff.0.weight"])
    save_model(model, vocab, tmp_path / "branched", ctc_tokenizer=ours)
    ours_ctc = Recognizer.from_dir(tmp_path / "branched").recognize(speech[:1], posteriors=True)[0].ctc_log_probs
    top_ctc = Recognizer.from_dir(tmp_path / "top").recognize(speech[:1], posteriors=True)[0].ctc_log_probs
    torch.testing.assert_close(ours_ctc, top_ctc, atol=1e-4, rtol=1e-4)
    again, _, _ = distilled_student(teacher, tmp_path / "branched", keep, tmp_path / "v2.tiktoken", 3, (0, 3),
                                    upper_from_teacher=True, ctc_branch=True)  # a branched top: its CTC side
    assert torch.equal(again.state_dict()["encoder.ctc_blocks.0.ff.0.weight"], s["encoder.ctc_blocks.0.ff.0.weight"])
