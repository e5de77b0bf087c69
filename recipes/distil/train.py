#!/usr/bin/env python3
"""Distillation, step 2: train the student on the teacher's labels (issue #22).

The student: Whisper base's encoder over the audio as given (no 30 s window), its blocks 0-4 frozen and their
output cached once per utterance; block 5, the final LayerNorm and the CTC head over our 256 pieces start
from the shipped v3 model; a 2-block decoder starts from the teacher's decoder blocks 0 and 5, over the
teacher's vocabulary pruned to what English needs (`text.tokenizer.prune_vocabulary`).

Losses, per utterance (`distillation_loss`):
- decoder, where the teacher's transcript is usable (ended with <|endoftext|>, WER against the human text at
  most `--max-wer`): `--kl-weight` x cross-entropy to the teacher's top-32 distributions (renormalised over
  the pruned vocabulary; the KL divergence up to a constant) + the rest x cross-entropy on its tokens;
- decoder, elsewhere: cross-entropy on the human transcript written in the teacher's style (sentence case and
  a full stop, when the source is all upper case) -- the teacher's early ends and AN4's run-together letters
  and digit strings ("OTHFI50.") are not learnt;
- CTC on the human transcript (english-v1 normalised, our pieces), weight `--ctc-weight`.

    python recipes/distil/train.py --run /var/tmp/st-distil --minutes 60     # again: resumes exactly

Everything lives in RUN/student/: init/ (the student before training, its pruned vocabulary), cache/ (frozen
states, float16), checkpoints/ (model + optimiser + RNG: exact resume), log.jsonl (one line per evaluation:
steps, CPU-seconds of training, dev WER of greedy decoding and of CTC greedy).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from speech_transformer.audio.features import mask_time, pad_waveforms
from speech_transformer.audio.loading import load_audio
from speech_transformer.audio.manifests import read_manifest
from speech_transformer.decoding.options import DecodingOptions
from speech_transformer.decoding.search import attention_search, ctc_greedy_search
from speech_transformer.model import checkpoint
from speech_transformer.model.transformer import ModelConfig, SpeechTransformer, padding_mask
from speech_transformer.text.normalize import normalize_transcript, whisper_style
from speech_transformer.text.scoring import score_utterances
from speech_transformer.text.tokenizer import PRUNED_SPECIALS, Tokenizer, WhisperTokenizer, load_tokenizer, \
    prune_vocabulary
from speech_transformer.training.augment import Augmenter, AugmentOptions
from speech_transformer.training.checkpoints import latest_checkpoint, load_training_checkpoint, \
    save_training_checkpoint
from speech_transformer.training.config import TrainState
from speech_transformer.training.data import frame_batches
from speech_transformer.training.student import distilled_student

FROZEN = 5  # blocks 0-4: Whisper base's, identical in the teacher and in v3
TEACHER_LAYERS = (0, 5)  # the teacher's decoder blocks the student's start from (default of --teacher-layers)
SHARD = 256
MAX_SECONDS = 30.0  # the learned position table: 1,500 encoder frames
SETS = {"librispeech-train": "librispeech", "an4-train": "an4", "ljspeech": "ljspeech", "arctic-cathy": "arctic-cathy",
        "fsdd-train": "fsdd", "wake-words": "wake-words", "speech-commands-train": "speech-commands"}  # label folder: data
MANIFESTS = {"librispeech-train": "librispeech/train.tsv", "an4-train": "an4/train.tsv", "ljspeech": "ljspeech/clips.tsv",
             "arctic-cathy": "arctic-cathy/clips.tsv", "fsdd-train": "fsdd/train.tsv",
             "wake-words": "wake-words/clips.tsv", "speech-commands-train": "speech-commands/train.tsv"}
TRAINABLE = {"all": ("encoder.blocks.5.", "encoder.norm.", "ctc_head.", "decoder."),
             "heads": ("ctc_head.", "decoder."),
             "decoder": ("decoder.",),
             "ctc": ("ctc_head.",)}  # --train: what learns (heads: not the encoder; ctc: the CTC head alone)


def labelled_sets(run: Path) -> list[str]:
    return [s for s in SETS if (run / "labels" / s / "DONE").exists()]


def augment_copy(name: str) -> int | None:
    """The number of an augmented copy's set name ("...+aug2" -> 2), None for a set itself."""
    _, sep, k = name.rpartition("+aug")
    return int(k) if sep and k.isdigit() and int(k) > 0 else None


def base_set(name: str) -> str:
    """"librispeech-train+aug2" (an augmented copy, `training.augment`, with the labels of the clean audio)
    -> "librispeech-train"; a set's own name otherwise."""
    return name.rpartition("+aug")[0] if augment_copy(name) else name


def set_source(name: str) -> str:
    """Where a set's audio comes from, as a model card says it: "librispeech/train.tsv", or a `--manifest`'s path."""
    return MANIFESTS.get(name, name) if not SETS.get(name) else f"{SETS[name]}/{MANIFESTS[name].split('/')[1]}"


def add_manifests(specs: list[str]) -> None:
    """`--manifest NAME=PATH`: sets outside the shared data (synthetic speech), learnt from their transcripts."""
    for spec in specs:
        name, _, path = spec.partition("=")
        if not name or not Path(path).is_file():
            raise SystemExit(f"--manifest {spec!r}: expected NAME=PATH of a manifest file")
        SETS[name], MANIFESTS[name] = "", str(Path(path).resolve())  # run/data/"" / an absolute path: the path


def labelled(run: Path, name: str) -> bool:
    return (run / "labels" / base_set(name) / "DONE").exists()


def read_labels(run: Path, name: str) -> list[dict]:
    """A set's utterances up to 30 s with the teacher's labels; where the teacher has not labelled the whole set
    (`--human`), its manifest rows (absolute audio paths), learnt from the human transcripts alone. An augmented
    copy ("SET+augK") has the rows of SET."""
    base = base_set(name)
    if not labelled(run, name):
        rows = [{"index": i, "audio": u.audio, "duration_s": u.duration, "text": u.text, "tokens": [], "stop": None,
                 "wer": 1.0} for i, u in enumerate(read_manifest(run / "data" / MANIFESTS[base]))]
    else:
        rows = [json.loads(line) for line in (run / "labels" / base / "labels.jsonl").open()]
    return [dict(r, set=name, labels=base, root=SETS[base]) for r in rows
            if "error" not in r and r["duration_s"] <= MAX_SECONDS]


def dictionary_tokens(teacher: WhisperTokenizer) -> set[int]:
    """The teacher's tokens of every word of CMUdict (pocketsphinx's English dictionary, 117,493 words), as
    " word" and " Word": with them the pruned vocabulary spells English as the whole one does (`vocabulary.py`)."""
    import pocketsphinx

    path = Path(pocketsphinx.__file__).parent / "model" / "en-us" / "cmudict-en-us.dict"
    words = {re.sub(r"\(\d+\)$", "", line.split()[0]).lower() for line in path.open() if line.strip()}
    return {t for w in words if w.isalpha() for form in (" " + w, " " + w.capitalize()) for t in teacher.encode(form)}


def vocabulary_keep(run: Path, sets: list[str], teacher: WhisperTokenizer, dictionary: bool = False) -> set[int]:
    """The teacher's tokens that the student keeps: those of its transcripts, and of every training set's human
    transcripts as Whisper would write them (`whisper_style`), labelled yet or not; `dictionary`: and those of
    CMUdict's words (`dictionary_tokens`)."""
    keep: set[int] = dictionary_tokens(teacher) if dictionary else set()
    for name in sets:
        for r in read_labels(run, name):
            keep.update(r["tokens"])
    for manifest in MANIFESTS.values():
        for u in read_manifest(run / "data" / manifest):
            keep.update(teacher.encode(whisper_style(u.text)))
    return keep


def build_student(run: Path, v3: Path, out: Path, sets: list[str], upper_from_teacher: bool = False,
                  teacher_layers: tuple[int, ...] = TEACHER_LAYERS, silence: float = 0.0, dictionary: bool = False,
                  ctc_from: Path | None = None, ctc_branch: bool = False) -> None:
    """out/init: the student before training (model.safetensors, config.json, vocab.tiktoken, old_ids.json).
    `ctc_from`: a checkpoint folder whose CTC head it starts with (a `--train ctc` run's) instead of v3's."""
    teacher = run / "teacher" / "whisper-base"
    out.mkdir(parents=True, exist_ok=True)
    keep = vocabulary_keep(run, sets, checkpoint.model_tokenizer(teacher), dictionary)
    model, vocab, old_ids = distilled_student(teacher, v3, keep, out / "vocab.tiktoken", FROZEN, teacher_layers,
                                               upper_from_teacher, silence, ctc_branch)
    if ctc_from is not None:
        state = checkpoint.load_state_dict(ctc_from / checkpoint.WEIGHTS_FILE)
        model.load_state_dict({k: v for k, v in state.items() if k.startswith("ctc_head.")}, strict=False)
    checkpoint.save_state_dict(model.state_dict(), out / "model.safetensors")
    (out / "old_ids.json").write_text(json.dumps(old_ids))
    (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "tokenizer": vocab.to_config(),
                                                 "sets": sets, "teacher_layers": teacher_layers,
                                                 "upper_from_teacher": upper_from_teacher,
                                                 "ctc_from": None if ctc_from is None else str(ctc_from)}, indent=1))
    print(f"student: {vocab.vocab_size} tokens (of {len(keep)} kept), {model.num_parameters() / 1e6:.1f} M "
          "parameters", flush=True)


def exported_teacher_layers(info: dict) -> list[int]:
    """The teacher's decoder blocks an exported model started from, read back from the info `export` writes
    ("whisper base decoder blocks [0, 5]")."""
    return [int(x) for x in re.findall(r"\d+", info.get("initialised_from", {}).get("decoder", "").rpartition("[")[2])]


def init_from_model(model_dir: Path, run: Path, out: Path) -> None:
    """out/init from a distilled model directory (the shipped default v4, an export): its weights as float32, its
    pruned vocabulary, and old_ids found again by each token's bytes in the teacher's vocabulary. For a run
    whose folder is gone: training goes on from the model, not from the teacher."""
    model, vocab, config = checkpoint.load_model(model_dir)
    teacher = checkpoint.model_tokenizer(run / "teacher" / "whisper-base")
    if not isinstance(vocab, WhisperTokenizer) or not vocab.pruned:
        raise SystemExit(f"{model_dir}: not a distilled model (its decoder vocabulary is not a pruned Whisper one)")
    ranks = [vocab.encoding.decode_single_token_bytes(i) for i in range(vocab.eot)]
    old_ids = [teacher.encoding.encode_single_token(b) for b in ranks] + [
        teacher.special_ids[name] for name in PRUNED_SPECIALS]
    info = config.get("info", {})
    sets = [s for s, m in MANIFESTS.items() if any(t.endswith(m) for t in info.get("train", []))]
    layers = exported_teacher_layers(info)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_state_dict(model.state_dict(), out / "model.safetensors")
    (out / "vocab.tiktoken").write_bytes((model_dir / checkpoint.tokenizer_file(config)).read_bytes())
    (out / "old_ids.json").write_text(json.dumps(old_ids))
    (out / "config.json").write_text(json.dumps({"model": model.config.to_dict(), "tokenizer": vocab.to_config(),
                                                 "sets": sets, "teacher_layers": layers, "upper_from_teacher": True,
                                                 "ctc_from": None, "init_from": str(model_dir)}, indent=1))
    print(f"student from {model_dir}: {vocab.vocab_size} tokens, {model.num_parameters() / 1e6:.1f} M parameters")


@torch.no_grad()
def cache_states(model: SpeechTransformer, rows: list[dict], run: Path, out: Path,
                 augmenter: Augmenter | None = None, copy: int = 0) -> list[torch.Tensor]:
    """The output of the frozen blocks `(S_i, D)` float16 for every row, computed once (eval mode); with an
    `augmenter`, of augmented copy number `copy` of each row's audio (seeded by copy and row: reproducible)."""
    model.eval()
    states: list[torch.Tensor] = []
    for first in range(0, len(rows), SHARD):
        path = out / f"{first // SHARD:04d}.safetensors"
        part = rows[first:first + SHARD]
        if not path.exists():
            shard, t = {}, time.process_time()
            order = sorted(range(len(part)), key=lambda i: part[i]["duration_s"])
            for k in range(0, len(order), 16):
                batch = order[k:k + 16]
                audio, lengths = pad_waveforms([torch.from_numpy(row_audio(run, part[i], augmenter, copy))
                                                for i in batch])
                x, n = model.encoder.embed(*model.frontend(audio, lengths))
                x, n, _ = model.encoder.blocks_from(x, n, 0, FROZEN)
                for j, i in enumerate(batch):
                    shard[str(i)] = x[j, :int(n[j])].to(torch.float16).contiguous()
            out.mkdir(parents=True, exist_ok=True)
            save_file(shard, str(path), metadata={"cpu_s": str(time.process_time() - t)})
            print(f"cached {out.name}/{path.name}: {len(shard)} utterances", flush=True)
        shard = load_file(str(path))
        states += [shard[str(i)] for i in range(len(part))]
    return states


def row_audio(run: Path, row: dict, augmenter: Augmenter | None = None, copy: int = 0):
    path = str(run / "data" / row["root"] / row["audio"])
    audio = load_audio(path)
    return audio if augmenter is None else augmenter(audio, copy * 1_000_003 + row["index"], path)


def set_augmenter(run: Path, name: str, options: AugmentOptions = AugmentOptions()) -> Augmenter:
    """The augmenter of a set's copies: babble from the set's own audio (other speakers)."""
    rows = read_labels(run, base_set(name))
    return Augmenter(options, [str(run / "data" / r["root"] / r["audio"]) for r in rows], load_audio)


class Targets:
    """What each row teaches: CTC pieces; decoder tokens (pruned ids, no prompt, no eot); the teacher's top-k
    distributions `(L + 1, K)` (ids, probabilities) or None where only the human transcript is learnt."""

    def __init__(self, run: Path, rows: list[dict], ctc_tokenizer: Tokenizer, vocab: WhisperTokenizer,
                 old_ids: list[int], max_wer: float):
        new_id = torch.full((max(old_ids) + 1,), -1, dtype=torch.long)
        new_id[torch.tensor(old_ids)] = torch.arange(len(old_ids))
        self.ctc = [ctc_tokenizer.encode(normalize_transcript(r["text"])) for r in rows]
        self.tokens: list[list[int]] = []
        self.soft: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        shards: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
        for r in rows:
            usable = r.get("stop") == "eot" and r["wer"] <= max_wer and bool(r["tokens"])
            mapped = new_id[torch.tensor(r["tokens"], dtype=torch.long)] if r["tokens"] else torch.zeros(0)
            if usable and bool((mapped >= 0).all()):
                key = (r["labels"], r["shard"])
                if key not in shards:
                    shards = {key: load_file(str(run / "labels" / r["labels"] / f"topk-{r['shard']:05d}.safetensors"))}
                ids = new_id[shards[key][f"{r['index']}.ids"].long()]
                probs = shards[key][f"{r['index']}.logprobs"].float().exp().masked_fill(ids < 0, 0.0)
                self.tokens.append(mapped.tolist())
                self.soft.append((ids.clamp(min=0), probs / probs.sum(-1, keepdim=True)))
            else:
                self.tokens.append(vocab.encode(whisper_style(r["text"])))
                self.soft.append(None)


def ctc_loss(model: SpeechTransformer, memory: torch.Tensor, lengths: torch.Tensor, targets: Targets,
             batch: list[int]) -> torch.Tensor:
    """CTC on the human transcripts, summed over the batch's utterances, divided by its size."""
    ctc_targets = [targets.ctc[i] for i in batch]
    flat = torch.tensor([t for seq in ctc_targets for t in seq], dtype=torch.long)
    return F.ctc_loss(model.ctc_log_probs(memory).transpose(0, 1), flat, lengths,
                      torch.tensor([len(t) for t in ctc_targets]), reduction="sum", zero_infinity=True) / len(batch)


def distillation_loss(model: SpeechTransformer, memory: torch.Tensor, lengths: torch.Tensor, targets: Targets,
                      batch: list[int], prompt: tuple[int, ...], eot: int, ctc_weight: float, kl_weight: float
                      ) -> tuple[torch.Tensor, dict[str, float]]:
    """CTC + decoder losses (see the module's docstring), summed over tokens, divided by the batch size."""
    B = len(batch)
    ctc = ctc_loss(model, memory, lengths, targets, batch) if ctc_weight > 0 else memory.new_zeros(())
    if ctc_weight == 1.0:  # --train ctc: the decoder is not run
        return ctc, {"ctc": round(ctc.item(), 2), "tokens": sum(len(targets.ctc[i]) for i in batch)}
    P, L = len(prompt), max(len(targets.tokens[i]) for i in batch) + 1
    inputs = torch.full((B, P + L - 1), eot, dtype=torch.long)
    hard = torch.full((B, L), -100, dtype=torch.long)
    inputs[:, :P] = torch.tensor(prompt)
    for b, i in enumerate(batch):
        seq = targets.tokens[i]
        inputs[b, P:P + len(seq)] = torch.tensor(seq, dtype=torch.long)
        hard[b, :len(seq) + 1] = torch.tensor(seq + [eot], dtype=torch.long)
    logits, _ = model.decoder(inputs, model.decoder.memory_kv(memory), lengths)
    logp = logits[:, P - 1:].float().log_softmax(-1)  # (B, L, V): row j predicts token j
    ce_rows = -logp.gather(2, hard.clamp(min=0)[..., None])[..., 0].masked_fill(hard < 0, 0.0)  # (B, L)
    soft_sum = logp.new_zeros(())
    weights = torch.ones(B)
    for b, i in enumerate(batch):
        if targets.soft[i] is not None:
            ids, probs = targets.soft[i]
            soft_sum = soft_sum - (probs * logp[b, :len(ids)].gather(1, ids)).sum()
            weights[b] = 1.0 - kl_weight
    soft = kl_weight * soft_sum / B
    ce = (ce_rows.sum(1) * weights).sum() / B
    decoder = soft + ce
    total = ctc_weight * ctc + (1 - ctc_weight) * decoder
    return total, {"ctc": round(ctc.item(), 2), "soft": round(soft.item(), 2), "ce": round(ce.item(), 2),
                   "tokens": int((hard >= 0).sum())}


def upper_blocks(model: SpeechTransformer, states: list[torch.Tensor], batch: list[int], augment: bool
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.nn.utils.rnn.pad_sequence([states[i].float() for i in batch], batch_first=True)
    lengths = torch.tensor([len(states[i]) for i in batch])
    if augment:
        x = mask_time(x, lengths, 2, 0.05)
    memory, lengths, _ = model.encoder.blocks_from(x, lengths, FROZEN)
    return memory, lengths


@torch.no_grad()
def evaluate(model: SpeechTransformer, states: list[torch.Tensor], rows: list[dict], vocab: WhisperTokenizer,
             ctc_tokenizer: Tokenizer) -> dict[str, float]:
    """Dev WER (english-v1) of greedy decoding and of CTC greedy, from the cached frozen states (each only
    where training can change it)."""
    model.eval()
    hyps, ctc_hyps = [], []
    decoder = any(p.requires_grad for p in model.decoder.parameters())  # --train ctc: its WER cannot change
    ctc = any(p.requires_grad for p in model.ctc_head.parameters())  # --train decoder: nor can this one
    options = DecodingOptions(method="attention", beam_size=1, ctc_weight=0.0)
    for k in range(0, len(rows), 8):
        batch = list(range(k, min(k + 8, len(rows))))
        memory, lengths = upper_blocks(model, states, batch, augment=False)
        if decoder:
            hyps += [vocab.decode(h.tokens) for h in attention_search(model, memory, lengths, options, vocab.special)]
        if ctc:
            ctc_hyps += [ctc_tokenizer.decode(h.tokens)
                         for h in ctc_greedy_search(model.ctc_log_probs(memory), lengths)]
    refs = [r["text"] for r in rows]
    model.train()
    out = {"wer": 100 * score_utterances(refs, hyps).wer} if decoder else {}
    if ctc:
        out["ctc_wer"] = 100 * score_utterances(refs, ctc_hyps).wer
    return {**out, "example": (hyps or ctc_hyps)[0]}


def load_student(out: Path, train: str = "all", dropout: float | None = None
                 ) -> tuple[SpeechTransformer, WhisperTokenizer, list[int], list[str]]:
    meta = json.loads((out / "init" / "config.json").read_text())
    config = ModelConfig.from_dict(meta["model"])
    model = SpeechTransformer(config if dropout is None else replace(config, dropout=dropout))
    checkpoint.load_weights(model, checkpoint.load_state_dict(out / "init" / "model.safetensors"), out / "init")
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(TRAINABLE[train])
    vocab = load_tokenizer(out / "init" / "vocab.tiktoken", meta["tokenizer"])
    return model, vocab, json.loads((out / "init" / "old_ids.json").read_text()), meta["sets"]


def trained_sets(out: Path) -> list[str]:
    """Every set the run has trained on: the init's, then those each call added (`--sets`)."""
    sets = json.loads((out / "init" / "config.json").read_text())["sets"]
    log = out / "sessions.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        sets += [s for s in json.loads(line).get("sets", []) if s not in sets]
    return sets


def dev_rows(run: Path, manifest: str, n: int) -> list[dict]:
    return [{"index": i, "audio": u.audio, "root": "", "duration_s": u.duration, "text": u.text}
            for i, u in enumerate(read_manifest(run / "data" / manifest)[:n])]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=Path, default=Path("/var/tmp/st-distil"), help="the labelling run's folder")
    p.add_argument("--out", type=Path, help="default: RUN/student")
    p.add_argument("--v3", type=Path, default=Path(__file__).resolve().parents[2] / "speech_transformer" /
                   "pretrained" / "default", help="the model whose block 5, final norm and CTC head start the student")
    p.add_argument("--minutes", type=float, default=60.0, help="CPU-minutes of training in this call")
    p.add_argument("--eval-minutes", type=float, default=10.0, help="CPU-minutes between dev evaluations")
    p.add_argument("--dev", default="librispeech/dev.tsv")
    p.add_argument("--dev-utterances", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--frames", type=int, default=6000, help="padded encoder frames per batch (50 per second)")
    p.add_argument("--max-wer", type=float, default=0.10, help="teacher transcripts above this WER are not learnt")
    p.add_argument("--kl-weight", type=float, default=0.8)
    p.add_argument("--ctc-weight", type=float, default=0.2)
    p.add_argument("--sets", help="comma-separated labelled sets to train on (default: those of the student's init; "
                   "SET+augK: augmented copy K of SET with its labels, training.augment); "
                   "a resume with other sets goes on from the checkpoint with another data order")
    p.add_argument("--manifest", action="append", default=[], metavar="NAME=PATH",
                   help="a set outside the shared data (synthetic speech: training.synthetic's manifest), named "
                   "NAME in --sets, --human (it has no teacher labels) and --human-style; give it to --export too")
    p.add_argument("--human", help="comma-separated sets of --sets that the teacher has not labelled (yet): learnt "
                   "from their human transcripts alone (CTC, and the decoder on them in Whisper's style)")
    p.add_argument("--subsample", default="", help="SET=FRACTION,...: the share of a set's utterances in each "
                   "epoch (a new random subset every epoch), e.g. speech-commands-train=0.2")
    p.add_argument("--upper", choices=["v3", "teacher"], default="v3", help="where encoder block 5 and the final "
                   "LayerNorm start from (a new student only): v3's, or the teacher's (what its decoder blocks read)")
    p.add_argument("--teacher-layers", default=",".join(map(str, TEACHER_LAYERS)),
                   help="the teacher's decoder blocks that the student's decoder starts from (when it is built)")
    p.add_argument("--silence", type=float, default=0.0, help="seconds of silence the student's front end appends "
                   "to each input (when it is built; 1.0 keeps the teacher's whole decoder accurate unwindowed)")
    p.add_argument("--train", choices=sorted(TRAINABLE), default="all", help="what learns: everything above the "
                   "frozen blocks (all), the decoder and CTC head over a frozen encoder (heads), the decoder alone "
                   "(decoder: with --ctc-weight 0), or the CTC head alone (ctc: CTC loss only; the decoder is not run)")
    p.add_argument("--ctc-branch", action="store_true", help="first call, with --upper teacher: the CTC head keeps "
                   "reading v3's block 5 and final norm, as its own branch (ModelConfig.ctc_branch_layers)")
    p.add_argument("--ctc-lr", type=float, help="the CTC head's learning rate (default: --lr)")
    p.add_argument("--vocabulary", choices=["transcripts", "dictionary"], default="transcripts",
                   help="first call: the teacher's tokens kept: the training transcripts', or those and CMUdict's "
                   "words' (31,689 tokens: nothing lost on dev, vocabulary.py)")
    p.add_argument("--ctc-from", type=Path, help="first call: a checkpoint folder whose CTC head the student starts "
                   "with (a --train ctc run's), instead of v3's")
    p.add_argument("--init-from", type=Path, metavar="MODEL_DIR", help="first call: the student is this distilled "
                   "model (the shipped default, an --export), not one built from the teacher (a run whose folder is gone)")
    p.add_argument("--human-style", metavar="SETS", help="comma-separated sets whose human transcripts (in the "
                   "teacher's style) are learnt where the teacher's are not usable; other sets' such rows are left out "
                   "(default: every set's are learnt)")
    p.add_argument("--dropout", type=float, help="the student's dropout in training (default: its config's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", type=int, default=3, help="checkpoints kept")
    p.add_argument("--export", type=Path, metavar="DIR", help="write the model directory of the last checkpoints "
                   "(averaged, --average) to DIR and stop; no training")
    p.add_argument("--average", type=int, default=1, help="with --export: how many of the last checkpoints")
    return p.parse_args(argv)


def export(a: argparse.Namespace, out: Path) -> Path:
    """A model directory (float32) of the mean of the last `--average` checkpoints, with both vocabularies, a
    greedy preferred decoding and what it was trained on."""
    model, vocab, _, _ = load_student(out)
    init = json.loads((out / "init" / "config.json").read_text())
    sets = trained_sets(out)
    paths = sorted((out / "checkpoints").glob("step-*"))[-a.average:]
    if not paths:
        raise SystemExit(f"{out}: no checkpoint yet")
    checkpoint.load_weights(model, checkpoint.average_state_dicts([p / checkpoint.WEIGHTS_FILE for p in paths]),
                            paths[-1])
    meta = [json.loads((p / "trainer.json").read_text())["state"] for p in paths]
    copies = [s for s in sets if augment_copy(s)]
    info = {"train": [set_source(s) for s in sets if not augment_copy(s)], **({"augmented": copies} if copies else {}),
            "steps": meta[-1]["step"],
            "train_cpu_s": json.loads((paths[-1] / "progress.json").read_text())["cpu_s"],
            "frozen_blocks": FROZEN, "recipe": "recipes/distil/train.py", "averaged": [p.name for p in paths],
            "initialised_from": {"encoder": "whisper base (blocks 0-4), " + (
                                     "whisper base (block 5); v3 (block 5, final norm and CTC head, as the CTC "
                                     "branch)" if model.config.ctc_branch_layers else
                                     "whisper base (block 5), v3 (CTC head)" if init.get("upper_from_teacher")
                                     else "v3 (block 5, CTC head)"),
                                 "decoder": f"whisper base decoder blocks {list(init['teacher_layers'])}"},
            "teacher": "whisper base, run in this engine (recipes/distil/label.py)"}
    decoding = {"method": "attention", "attention": {"beam_size": 1}}
    return checkpoint.save_model(model, vocab, a.export, info, decoding,
                                 ctc_tokenizer=checkpoint.model_ctc_tokenizer(a.v3))


def main(argv=None) -> int:
    a = parse_args(argv)
    add_manifests(a.manifest)
    out = a.out or a.run / "student"
    torch.set_num_threads(a.threads)
    if a.export:
        print(f"exported {export(a, out)}")
        return 0
    if not (out / "init" / "config.json").exists() and a.init_from:
        init_from_model(a.init_from, a.run, out / "init")
    elif not (out / "init" / "config.json").exists():
        build_student(a.run, a.v3, out / "init", labelled_sets(a.run), a.upper == "teacher",
                      tuple(int(i) for i in a.teacher_layers.split(",")), a.silence,
                      a.vocabulary == "dictionary", a.ctc_from, a.ctc_branch)
    model, vocab, old_ids, sets = load_student(out, a.train, a.dropout)
    if a.sets:
        sets = a.sets.split(",")
        human = (a.human or "").split(",")
        missing = [s for s in sets if base_set(s) not in SETS or not (labelled(a.run, s) or s in human)]
        if missing:
            raise SystemExit(f"not labelled (yet): {', '.join(missing)} (--human SETS: learn them from the human "
                             "transcripts alone)")
    ctc_tokenizer = checkpoint.model_ctc_tokenizer(a.v3)
    rows = [r for name in sets for r in read_labels(a.run, name)]
    states = [s for name in sets for s in cache_states(
        model, read_labels(a.run, name), a.run, out / "cache" / (name if labelled(a.run, name) else f"{name}-human"),
        set_augmenter(a.run, name) if augment_copy(name) else None, augment_copy(name) or 0)]
    dev = dev_rows(a.run, a.dev, a.dev_utterances)
    dev_states = cache_states(model, dev, a.run, out / "cache" / f"dev-{a.dev_utterances}")
    targets = Targets(a.run, rows, ctc_tokenizer, vocab, old_ids, a.max_wer)
    print(f"{len(rows)} utterances from {', '.join(sets)}; teacher distributions for "
          f"{sum(s is not None for s in targets.soft)}", flush=True)
    fractions = {k: float(v) for k, _, v in (x.partition("=") for x in a.subsample.split(",") if x)}
    share = [fractions.get(r["set"], 1.0) for r in rows]
    if a.human_style is not None:  # other sets' rows learn from the teacher only: none where it is not usable
        keep = set(a.human_style.split(","))
        share = [0.0 if r["set"] not in keep and targets.soft[i] is None else x
                 for i, (r, x) in enumerate(zip(rows, share))]
        print(f"{sum(x > 0 for x in share)} utterances learnt (--human-style)", flush=True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    head = [p for name, p in model.named_parameters() if p.requires_grad and name.startswith("ctc_head.")]
    rest = [p for p in trainable if all(p is not q for q in head)]
    groups = [{"params": rest, "lr": a.lr, "base_lr": a.lr},
              {"params": head, "lr": a.ctc_lr or a.lr, "base_lr": a.ctc_lr or a.lr}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=0.01)
    state, cpu = TrainState(), 0.0
    torch.manual_seed(a.seed)  # the time masks of a first call (a resume restores the checkpoint's RNG)
    last = latest_checkpoint(out)
    if last is not None:
        state = load_training_checkpoint(last, model, optimizer, 0)
        cpu = json.loads((last / "progress.json").read_text())["cpu_s"]
        print(f"resumed from {last.name}: epoch {state.epoch}, step {state.step}, {cpu / 60:.1f} CPU-min", flush=True)
    elif not (out / "log.jsonl").exists():
        log_eval(out, model, dev_states, dev, vocab, ctc_tokenizer, state, cpu)
    with (out / "sessions.jsonl").open("a") as f:  # what each call ran with: the card's training facts
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "step": state.step, "train_cpu_s": cpu,
                            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(a).items()},
                            "sets": sets, "utterances": len(rows), "teacher_distributions": sum(s is not None for s in targets.soft),
                            "audio_h": sum(r["duration_s"] for r in rows) / 3600}) + "\n")
    model.train()
    start, next_eval = time.process_time(), cpu + 60 * a.eval_minutes
    while time.process_time() - start < 60 * a.minutes:
        order = frame_batches([len(s) for s in states], a.frames, random.Random(a.seed * 1000 + state.epoch),
                              share=share)
        for batch in order[state.epoch_step:]:
            t = time.process_time()
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * min(1.0, (state.step + 1) / a.warmup)
            memory, lengths = upper_blocks(model, states, batch, augment=True)
            loss, parts = distillation_loss(model, memory, lengths, targets, batch, vocab.special.prompt,
                                            vocab.special.eos, 1.0 if a.train == "ctc" else a.ctc_weight,
                                            a.kl_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 5.0)
            optimizer.step()
            state.step, state.epoch_step = state.step + 1, state.epoch_step + 1
            state.audio_seconds += float(lengths.sum()) * 0.02
            cpu += time.process_time() - t
            if state.step % 20 == 0:
                print(f"step {state.step} epoch {state.epoch} loss {float(loss):.2f} {parts} "
                      f"{cpu / 60:.1f} CPU-min", flush=True)
            if cpu >= next_eval or time.process_time() - start >= 60 * a.minutes:
                break
        else:
            state.epoch, state.epoch_step = state.epoch + 1, 0
        if cpu >= next_eval or time.process_time() - start >= 60 * a.minutes:
            path = save_training_checkpoint(out, model, optimizer, state, 0, 1, a.keep)
            (path / "progress.json").write_text(json.dumps({"cpu_s": cpu}))
            log_eval(out, model, dev_states, dev, vocab, ctc_tokenizer, state, cpu)
            next_eval = cpu + 60 * a.eval_minutes
    return 0


def log_eval(out: Path, model, dev_states, dev, vocab, ctc_tokenizer, state: TrainState, cpu: float) -> None:
    t = time.process_time()
    result = evaluate(model, dev_states, dev, vocab, ctc_tokenizer)
    line = {"step": state.step, "epoch": state.epoch, "train_cpu_s": round(cpu, 1), **result,
            "eval_cpu_s": round(time.process_time() - t, 1), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print("eval", json.dumps(line), flush=True)
    with (out / "log.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
