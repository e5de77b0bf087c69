"""A student to fine-tune: Whisper's stem and first encoder blocks under a new CTC head and a small decoder
over our own tokenizer (`speech-transformer whisper SRC --student N`, recipes/default/run.sh student)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch

from speech_transformer.importers.whisper import resolve_source
from speech_transformer.importers.whisper_convert import read_any
from speech_transformer.model.checkpoint import (WEIGHTS_FILE, CheckpointError, ModelDirectory,
                                                 load_state_dict, load_weights, model_tokenizer, save_model)
from speech_transformer.model.transformer import SpeechTransformer
from speech_transformer.text.tokenizer import TextTokenizer, WhisperTokenizer, prune_vocabulary

STUDENT_KEPT = ("encoder.subsampling.", "encoder.positions.", "encoder.norm.")  # besides the kept blocks


def student(source, tokenizer: TextTokenizer, output: str | os.PathLike, encoder_layers: int = 4,
            decoder_layers: int = 1, dropout: float = 0.1, seed: int = 0) -> Path:
    """A smaller model of ours that starts from Whisper's encoder, to fine-tune on our data. `source`: what
    `read_any` reads, or a name or path as a string (`resolve_source`: "base" finds the installed copy).

    It keeps Whisper's stem, position table, first `encoder_layers` encoder blocks and final LayerNorm; its
    CTC head and `decoder_layers`-block decoder are new, over `tokenizer` (ours: a few hundred pieces, not
    Whisper's 51,864 tokens, whose embedding alone is 26.5 M parameters in base). It reads Whisper's
    features without the 30 s window (frontend "whisper_log_mel"): it is trained on variable-length
    batches. `speech-transformer train --set init_from=OUTPUT` fine-tunes it.
    """
    config, state, _, path = read_any(resolve_source(source) if isinstance(source, str) else source)
    if not 1 <= encoder_layers <= config.encoder_layers:
        raise ValueError(f"{path}: the model has {config.encoder_layers} encoder layers, not {encoder_layers}")
    config = replace(config, vocab_size=tokenizer.vocab_size, encoder_layers=encoder_layers,
                     decoder_layers=decoder_layers, frontend="whisper_log_mel", decoder_positions="sinusoidal",
                     decoder_scale_embeddings=True, ctc=True, dropout=dropout)
    with torch.random.fork_rng():  # the new heads' initial weights: the same for every build
        torch.manual_seed(seed)
        model = SpeechTransformer(config)
    blocks = tuple(f"encoder.blocks.{i}." for i in range(encoder_layers))
    kept = {k: v for k, v in state.items() if k.startswith(STUDENT_KEPT + blocks)}
    missing = [k for k in kept if k not in model.state_dict()]
    if missing:
        raise CheckpointError(f"{path}: unexpected weights {missing[:3]}")
    model.load_state_dict(kept, strict=False)
    info = {"source": str(path), "initialised_from": "whisper",
            "whisper_layers_kept": f"stem and encoder blocks 0-{encoder_layers - 1}"}
    return save_model(model, tokenizer, output, info)


def ctc_view(state: dict, branch_layers: int) -> dict:
    """A model's weights as the model its CTC head reads: a CTC branch's blocks and norm (a distilled student's,
    `ModelConfig.ctc_branch_layers`) in place of the encoder's top blocks and norm."""
    if not branch_layers:
        return state
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks."))
    view = {k: v for k, v in state.items() if not k.startswith(("encoder.ctc_blocks.", "encoder.ctc_norm."))}
    for k, v in state.items():
        if k.startswith("encoder.ctc_blocks."):
            i, rest = k.split(".", 3)[2:]
            view[f"encoder.blocks.{blocks - branch_layers + int(i)}.{rest}"] = v
        elif k.startswith("encoder.ctc_norm."):
            view["encoder.norm." + k[len("encoder.ctc_norm."):]] = v
    return view


def distilled_student(teacher: str | os.PathLike, top: str | os.PathLike, keep, vocab_file: str | os.PathLike,
                      lower: int = 5, teacher_layers: tuple[int, ...] = (0, 5), upper_from_teacher: bool = False,
                      trailing_silence: float = 0.0, ctc_branch: bool = False
                      ) -> tuple[SpeechTransformer, WhisperTokenizer, list[int]]:
    """The student that `recipes/distil` trains: the encoder of `teacher` (an imported Whisper model directory) with
    the upper blocks, final LayerNorm and CTC head of `top` (a model directory fine-tuned on the same Whisper's
    frozen blocks 0..`lower`-1, the shipped v3: the teacher's float weights of those are taken), and a decoder of the
    teacher's `teacher_layers` blocks over its vocabulary pruned to `keep` (written to `vocab_file`).
    `upper_from_teacher`: the upper blocks and final LayerNorm are the teacher's too (what its decoder blocks
    read), only the CTC head is `top`'s. `trailing_silence`: seconds of silence its front end appends to each
    input (`ModelConfig.trailing_silence`: the teacher's decoder blocks stop where they see the speech end).
    `ctc_branch` (with `upper_from_teacher`): the CTC head keeps reading `top`'s upper blocks and final
    LayerNorm, as its own branch beside the teacher's (`ModelConfig.ctc_branch_layers`): no head to retrain.
    Returns (model, pruned tokenizer, old_ids: the teacher's id of each student token)."""
    path = Path(teacher)
    teacher_config, teacher_tokenizer = ModelDirectory.read(path).model, model_tokenizer(path)
    if not isinstance(teacher_tokenizer, WhisperTokenizer) or not teacher_tokenizer.multilingual:
        raise ValueError(f"{path}: the teacher must be a multilingual Whisper model")
    state = load_state_dict(path / WEIGHTS_FILE)
    top_config = ModelDirectory.read(top).model
    top_state = ctc_view(load_state_dict(Path(top) / WEIGHTS_FILE), top_config.ctc_branch_layers)
    vocab, old_ids = prune_vocabulary(teacher_tokenizer, keep, vocab_file)
    config = replace(top_config, vocab_size=vocab.vocab_size, ctc_vocab_size=top_config.ctc_vocab_size or
                     top_config.vocab_size, decoder_layers=len(teacher_layers), decoder_positions="learned",
                     decoder_scale_embeddings=False, max_target_positions=teacher_config.max_target_positions,
                     trailing_silence=trailing_silence,
                     ctc_branch_layers=top_config.encoder_layers - lower if ctc_branch else 0)
    if ctc_branch and not upper_from_teacher:
        raise ValueError("a CTC branch is for a student whose upper blocks are the teacher's (upper_from_teacher)")
    ours = config.encoder_layers if upper_from_teacher else lower  # encoder blocks taken from the teacher
    from_teacher = STUDENT_KEPT[:2] + (("encoder.norm.",) if upper_from_teacher else ()) + tuple(
        f"encoder.blocks.{i}." for i in range(ours))
    from_top = ("ctc_head.",) + (() if upper_from_teacher else ("encoder.norm.",) + tuple(
        f"encoder.blocks.{i}." for i in range(lower, config.encoder_layers)))
    student = {k: v for k, v in state.items() if k.startswith(from_teacher)}
    student.update({k: v.float() for k, v in top_state.items() if k.startswith(from_top)})
    if ctc_branch:
        student.update({"encoder.ctc_norm." + k[len("encoder.norm."):]: v.float() for k, v in top_state.items()
                        if k.startswith("encoder.norm.")})
        student.update({f"encoder.ctc_blocks.{int(k.split('.')[2]) - lower}." + k.split(".", 3)[3]: v.float()
                        for k, v in top_state.items() if k.startswith("encoder.blocks.")
                        and int(k.split(".")[2]) >= lower})
    student["decoder.embed.weight"] = student["decoder.output.weight"] = state["decoder.embed.weight"][old_ids].clone()
    for key in ("decoder.positions.table.weight", "decoder.norm.weight", "decoder.norm.bias"):
        student[key] = state[key]
    for new, old in enumerate(teacher_layers):
        prefix = f"decoder.blocks.{old}."
        student.update({f"decoder.blocks.{new}.{k[len(prefix):]}": v for k, v in state.items() if k.startswith(prefix)})
    model = SpeechTransformer(config)
    load_weights(model, student, path)
    return model, vocab, old_ids
