#!/usr/bin/env python3
"""Label a manifest's audio with the teacher (Whisper base, run in this project's engine) for distillation.

Issue #22, step 1: the long preparation. For every utterance of a manifest (TSV with the columns
`audio  duration_s  text`, `audio` relative to the TSV's folder) the teacher reads the audio exactly as
Whisper does (zero-padded to its 30 s window), decodes it greedily (temperature 0, no fallback, no
timestamps: `<|startoftranscript|><|en|><|transcribe|><|notimestamps|>`), and is then teacher-forced
along its own transcript to record its token distributions, which the student's KL loss will match.

Written to OUT (one folder per manifest), appending as it goes:

    labels.jsonl               one line per utterance (in manifest order):
        index, audio, duration_s, text    the manifest row (index: 0-based row after the header)
        teacher_text                      cased and punctuated, as Whisper writes it
        tokens                            teacher token ids after the prompt, without <|endoftext|>
        avg_logprob, no_speech_prob       Whisper's two confidence numbers (avg over tokens + eot)
        silence                           Whisper's no-speech rule (no_speech_prob > 0.6 and
                                          avg_logprob < -1) would have blanked the text (it is kept here)
        stop                              "eot", "loop" (repeat guard) or "length" (448-token cap)
        wer, errors, ref_words            teacher vs the human text, both through english-v1
        shard, seconds                    where its distributions are; compute time (its batch's share)
      or, for a file that failed: index, audio, duration_s, text, error (and no distributions)
    topk-00000.safetensors     shard s holds utterances s*200 ... s*200+199 (`--shard-size`), keys
                               "{index}.logprobs" (L + 1, K) float16 and "{index}.ids" (L + 1, K) int32:
                               row j is the teacher's top-K next-token log-probabilities given the
                               prompt and tokens[:j]; row L is the distribution in which it ended
                               (<|endoftext|> on top when stop == "eot"). The log-probabilities are
                               over the whole vocabulary after the decoder's token suppression (special,
                               timestamp and non-speech tokens at -inf, as greedy decoding saw them).
    pending/000123.safetensors the same for one utterance, until its shard is complete and merged
    run.json                   the settings; a resumed run must match them

Crash safety and exact resume: an utterance's distributions are written (atomically) before its JSONL
line, each line is flushed and fsync'ed, and a torn last line is cut off on restart. Re-running the same
command skips every utterance with a line (failures included) and decodes the rest exactly as a fresh
run would (utterances are grouped into batches by index, not by what is left). A crash loses only the
batch in flight (`--batch 1`, the default: one utterance).

    python label.py DATA/librispeech/train.tsv --out labels/librispeech-train     # run or resume
    python label.py DATA/librispeech/dev.tsv --out check/dev40 --limit 40          # a sanity check
    python label.py --summary labels/librispeech-train                             # WER distribution, speed

Runs on ONE CPU thread by default (`--threads`); set OMP_NUM_THREADS=1 as well (run.sh does).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; --threads sets torch's own
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from speech_transformer.audio.features import WHISPER_WINDOW_SECONDS  # noqa: E402
from speech_transformer.audio.loading import SAMPLE_RATE, load_audio  # noqa: E402
from speech_transformer.decoding.fallback import is_silence  # noqa: E402
from speech_transformer.decoding.options import DecodingOptions  # noqa: E402
from speech_transformer.decoding.search import decode, max_lengths, position_cap, repeats_too_often  # noqa: E402
from speech_transformer.recognition.recognizer import Recognizer  # noqa: E402
from speech_transformer.text.scoring import score_utterances  # noqa: E402

NORMALIZER = "english-v1"
GREEDY = DecodingOptions()  # attention, beam 1, temperature 0 only: no fallback
LABELS, RUN, PENDING = "labels.jsonl", "run.json", "pending"
RESUME_KEYS = ("teacher_weights_sha256", "topk", "shard_size", "batch", "manifest_rows", "options")


# --- the manifest ---------------------------------------------------------------------------------------

def read_manifest(path: Path) -> list[dict]:
    """Rows of a manifest TSV as dicts {index, audio, path, duration_s, text} (path: absolute)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:3] != ["audio", "duration_s", "text"]:
            raise SystemExit(f"{path}: expected the header 'audio duration_s text', got {header}")
        return [{"index": i, "audio": row[0], "path": str(path.parent / row[0]), "duration_s": float(row[1]),
                 "text": row[2] if len(row) > 2 else ""} for i, row in enumerate(reader)]


# --- the teacher ----------------------------------------------------------------------------------------

@torch.inference_mode()
def teacher_forced_topk(model, memory: torch.Tensor, lengths: torch.Tensor, sequences: list[list[int]],
                        special, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The decoder's top-k next-token log-probabilities along given token sequences.

    Args:
        memory: `(B, S, D)` encoder states; lengths: `(B,)` valid frames.
        sequences: B token lists (after the prompt, without the end token).
    Returns:
        per row b: log-probabilities `(L_b + 1, k)` float32 and token ids `(L_b + 1, k)` int64; position j
        predicts token j (position L_b the end token). Suppressed tokens are at -inf as in greedy decoding.
    """
    B, P = len(sequences), len(special.prompt)
    L = max(len(s) for s in sequences) + 1
    inputs = torch.full((B, P + L - 1), special.eos, dtype=torch.long, device=memory.device)
    inputs[:, :P] = torch.tensor(special.prompt, device=memory.device)
    for b, seq in enumerate(sequences):
        inputs[b, P:P + len(seq)] = torch.tensor(seq, dtype=torch.long)
    logits, _ = model.decoder(inputs, model.decoder.memory_kv(memory), lengths)  # (B, P + L - 1, V)
    logits = logits[:, P - 1:].float()  # (B, L, V): position j predicts token j
    logits.index_fill_(2, torch.tensor(special.suppress, device=logits.device), float("-inf"))
    if special.suppress_at_start:
        first = logits[:, 0]
        first.index_fill_(1, torch.tensor(special.suppress_at_start, device=logits.device), float("-inf"))
    top, ids = logits.log_softmax(-1).topk(k, dim=-1)  # (B, L, k)
    return [(top[b, :len(s) + 1], ids[b, :len(s) + 1]) for b, s in enumerate(sequences)]


def stop_reason(tokens: list[int], limit: int, options: DecodingOptions) -> str:
    """Why greedy decoding ended: "eot" (the teacher ended it), "loop" (repeat guard) or "length"."""
    if len(tokens) >= limit:
        return "length"
    return "loop" if repeats_too_often(tokens, options.max_repeats) else "eot"


def label_batch(recognizer: Recognizer, waveforms: list, rows: list[dict], k: int) -> list[tuple[dict, dict]]:
    """Teacher labels of B utterances: per row, its JSONL record and its tensors {logprobs, ids}.

    waveforms: B 16 kHz mono float32 arrays `(T_b,)`, each at most 30 s.
    """
    model, tokenizer, special = recognizer.model, recognizer.tokenizer, recognizer.tokenizer.special
    enc = recognizer.encode(waveforms)  # Whisper's front end pads each to the 30 s window: (B, 1500, 512)
    with torch.inference_mode():
        hyps = decode(model, enc.memory, enc.lengths, GREEDY, special)
    limits = max_lengths(enc.lengths, GREEDY, position_cap(model, special))
    forced = teacher_forced_topk(model, enc.memory, enc.lengths, [h.tokens for h in hyps], special, k)
    text = [tokenizer.decode(h.tokens).strip() for h in hyps]
    scores = score_utterances([r["text"] for r in rows], text, NORMALIZER).utterances
    out = []
    for row, h, t, (logprobs, ids), s, limit in zip(rows, hyps, text, forced, scores, limits):
        agree = sum(int(a == b) for a, b in zip(ids[:, 0].tolist(), h.tokens)) / max(1, len(h.tokens))
        record = {**{key: row[key] for key in ("index", "audio", "duration_s", "text")},
                  "teacher_text": t, "tokens": h.tokens,
                  "avg_logprob": round(h.score / (len(h.tokens) + 1), 5),
                  "no_speech_prob": round(float(h.no_speech_prob), 5), "silence": is_silence(h, GREEDY),
                  "stop": stop_reason(h.tokens, limit, GREEDY),
                  "wer": round(s.wer, 5), "errors": s.errors, "ref_words": s.n_words,
                  "forced_top1_agree": round(agree, 4)}
        out.append((record, {"logprobs": logprobs.to(torch.float16).contiguous(),
                             "ids": ids.to(torch.int32).contiguous()}))
    return out


# --- the output folder: JSONL + shards, appended and resumable -----------------------------------------

class LabelStore:
    """OUT/labels.jsonl, OUT/pending/*.safetensors and OUT/topk-*.safetensors (see the module docstring)."""

    def __init__(self, out: Path, n_rows: int, shard_size: int, metadata: dict[str, str]):
        self.out, self.n_rows, self.shard_size, self.metadata = out, n_rows, shard_size, metadata
        (out / PENDING).mkdir(parents=True, exist_ok=True)
        self.jsonl = out / LABELS
        self.done: dict[int, dict] = self._read_done()
        self.file = open(self.jsonl, "a", encoding="utf-8")

    def _read_done(self) -> dict[int, dict]:
        """Records already written, after cutting off a torn last line (a crash in the middle of a write)."""
        if not self.jsonl.exists():
            return {}
        data = self.jsonl.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            print(f"resume: cutting a torn last line ({len(data) - keep} bytes) off {self.jsonl}", flush=True)
            with open(self.jsonl, "r+b") as f:
                f.truncate(keep)
            data = data[:keep]
        done = {}
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                done[r["index"]] = r
        return done

    def shard_of(self, index: int) -> int:
        return index // self.shard_size

    def shard_path(self, shard: int) -> Path:
        return self.out / f"topk-{shard:05d}.safetensors"

    def pending_path(self, index: int) -> Path:
        return self.out / PENDING / f"{index:06d}.safetensors"

    def add(self, record: dict, tensors: dict[str, torch.Tensor] | None) -> None:
        """Write one utterance: its tensors (atomically), then its JSONL line (flushed and fsync'ed)."""
        i = record["index"]
        if tensors is not None:
            record["shard"] = self.shard_of(i)
            _atomic_save({f"{i}.{name}": t for name, t in tensors.items()}, self.pending_path(i), self.metadata)
        self.file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.file.flush()
        os.fsync(self.file.fileno())
        self.done[i] = record

    def merge_complete_shards(self) -> None:
        """Merge the pending files of every shard whose utterances are all done into one shard file."""
        for shard in range(-(-self.n_rows // self.shard_size)):
            first, stop = shard * self.shard_size, min(self.n_rows, (shard + 1) * self.shard_size)
            path = self.shard_path(shard)
            pending = [self.pending_path(i) for i in range(first, stop) if self.pending_path(i).exists()]
            if path.exists():
                for p in pending:  # a crash after the merge, before the clean-up
                    p.unlink()
                continue
            if not all(i in self.done for i in range(first, stop)):
                continue
            tensors = {}
            for i in range(first, stop):
                if "error" not in self.done[i]:
                    tensors.update(load_file(self.pending_path(i)))
            _atomic_save(tensors, path, {**self.metadata, "first_index": str(first), "stop_index": str(stop)})
            for p in pending:
                p.unlink()
            print(f"shard {path.name}: {len(tensors) // 2} utterances (rows {first}-{stop - 1})", flush=True)

    def close(self) -> None:
        self.file.close()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def check_run(out: Path, settings: dict) -> None:
    """Write OUT/run.json on the first run; a resumed run must have the same settings (exact resume)."""
    path = out / RUN
    if path.exists():
        old = json.loads(path.read_text())
        changed = [k for k in RESUME_KEYS if old.get(k) != settings.get(k)]
        if changed:
            raise SystemExit(f"{out}: settings differ from the run being resumed ({', '.join(changed)}); "
                             f"use another --out or the same settings ({path})")
    else:
        out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=2) + "\n")


# --- the run --------------------------------------------------------------------------------------------

def run(args) -> int:
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    manifest = Path(args.manifest).resolve()
    rows = read_manifest(manifest)
    if args.limit:
        rows = rows[:args.limit]
    out = Path(args.out)
    recognizer = Recognizer.from_dir(args.teacher)
    import speech_transformer

    settings = {"manifest": str(manifest), "manifest_rows": len(rows), "teacher": str(args.teacher),
                "teacher_weights_sha256": recognizer.info.get("weights_sha256"), "topk": args.topk,
                "shard_size": args.shard_size, "batch": args.batch, "options": GREEDY.to_dict(),
                "prompt": list(recognizer.tokenizer.special.prompt), "normalizer": NORMALIZER,
                "code": str(Path(speech_transformer.__file__).parent), "threads": args.threads}
    check_run(out, settings)
    metadata = {"teacher": str(args.teacher), "manifest": str(manifest), "topk": str(args.topk),
                "prompt": json.dumps(settings["prompt"]), "eot": str(recognizer.tokenizer.special.eos),
                "rows": "each teacher token, then the end token; log-probs after suppression (float16)"}
    store = LabelStore(out, len(rows), args.shard_size, metadata)
    store.merge_complete_shards()
    # batches are fixed groups of rows (index // batch); a group left half-written by a crash is decoded again
    # whole, so that every utterance is decoded in the same company as in an uninterrupted run
    groups = [rows[i:i + args.batch] for i in range(0, len(rows), args.batch)]
    groups = [g for g in groups if any(r["index"] not in store.done for r in g)]
    todo = [r for g in groups for r in g if r["index"] not in store.done]
    print(f"{manifest} -> {out}: {len(rows)} utterances, {len(store.done)} done, {len(todo)} to go; teacher "
          f"{args.teacher}, batch {args.batch}, {torch.get_num_threads()} thread(s), code {settings['code']}",
          flush=True)
    audio_total = sum(r["duration_s"] for r in todo)
    audio_done = compute = 0.0
    for group in groups:
        start = time.perf_counter()
        good, waves = [], []
        for r in group:
            try:
                wave = load_audio(r["path"])
                if len(wave) > WHISPER_WINDOW_SECONDS * SAMPLE_RATE:
                    raise ValueError(f"{len(wave) / SAMPLE_RATE:.1f} s is longer than Whisper's "
                                     f"{WHISPER_WINDOW_SECONDS} s window")
                good.append(r)
                waves.append(wave)
            except Exception as e:  # noqa: BLE001 - one bad file must not stop the run
                fail(store, r, e)
        results = []
        if good:
            try:
                results = label_batch(recognizer, waves, good, args.topk)
            except Exception as e:  # noqa: BLE001
                if len(good) == 1:
                    fail(store, good[0], e)
                else:  # find the culprit: one at a time
                    for r, w in zip(good, waves):
                        try:
                            results += label_batch(recognizer, [w], [r], args.topk)
                        except Exception as e1:  # noqa: BLE001
                            fail(store, r, e1)
        seconds = time.perf_counter() - start
        compute += seconds
        results = [(record, tensors) for record, tensors in results if record["index"] not in store.done]
        for record, tensors in results:
            record["seconds"] = round(seconds / len(group), 3)
            store.add(record, tensors)
        audio_done += sum(r["duration_s"] for r in group)
        store.merge_complete_shards()
        speed = audio_done / max(compute, 1e-9)
        eta = max(0.0, audio_total - audio_done) / max(speed, 1e-9)
        for record, _ in results:
            print(f"{record['index'] + 1}/{len(rows)} {record['audio']} {record['duration_s']:.2f}s "
                  f"wer {100 * record['wer']:.1f}% | {record['teacher_text']}", flush=True)
        print(f"  {seconds:.2f}s for {len(group)} utt; {speed:.2f} s audio/s; {audio_done / 3600:.3f}/"
              f"{audio_total / 3600:.3f} h; ETA {eta / 3600:.2f} h", flush=True)
    store.merge_complete_shards()
    store.close()
    print(f"finished {out}: {len(store.done)}/{len(rows)} utterances "
          f"({sum('error' in r for r in store.done.values())} failed)", flush=True)
    return 0


def fail(store: LabelStore, row: dict, error: Exception) -> None:
    """Log a failed utterance with its file and reason, and record it (a resumed run does not retry it)."""
    if row["index"] in store.done:
        return
    reason = f"{type(error).__name__}: {error}"
    print(f"ERROR {row['path']}: {reason}", flush=True)
    store.add({**{key: row[key] for key in ("index", "audio", "duration_s", "text")}, "error": reason}, None)


# --- the summary ----------------------------------------------------------------------------------------

def summary(folder: Path, threshold: float) -> dict:
    """What a labelled folder holds: counts, speed, the teacher-vs-human WER distribution."""
    records = [json.loads(line) for line in (folder / LABELS).read_text(encoding="utf-8").splitlines() if line]
    good = [r for r in records if "error" not in r]
    audio = sum(r["duration_s"] for r in good)
    compute = sum(r["seconds"] for r in good)
    errors = sum(r["errors"] for r in good)
    words = sum(r["ref_words"] for r in good)
    buckets = {"0": 0, "(0, 5]": 0, "(5, 10]": 0, "(10, 20]": 0, "(20, 50]": 0, "> 50": 0}
    for r in good:
        w = 100 * r["wer"]
        key = ("0" if w == 0 else "(0, 5]" if w <= 5 else "(5, 10]" if w <= 10 else "(10, 20]" if w <= 20
               else "(20, 50]" if w <= 50 else "> 50")
        buckets[key] += 1
    over = [r for r in good if r["wer"] > threshold]
    return {"folder": str(folder), "utterances": len(records), "failed": len(records) - len(good),
            "audio_h": round(audio / 3600, 4), "compute_h": round(compute / 3600, 4),
            "speed_audio_s_per_s": round(audio / max(compute, 1e-9), 3),
            "corpus_wer_pct": round(100 * errors / max(words, 1), 2), "errors": errors, "ref_words": words,
            "wer_buckets_pct": buckets, f"over_{threshold:.0%}": len(over),
            f"over_{threshold:.0%}_audio_h": round(sum(r["duration_s"] for r in over) / 3600, 4),
            "corpus_wer_pct_without_those": round(100 * sum(r["errors"] for r in good if r["wer"] <= threshold)
                                                  / max(1, sum(r["ref_words"] for r in good
                                                               if r["wer"] <= threshold)), 2),
            "silence_flagged": sum(r["silence"] for r in good),
            "stops": {s: sum(r["stop"] == s for r in good) for s in ("eot", "loop", "length")},
            "tokens": sum(len(r["tokens"]) for r in good),
            "forced_top1_disagree": sum(r["forced_top1_agree"] < 1 for r in good)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("manifest", nargs="?", help="manifest TSV (audio, duration_s, text)")
    p.add_argument("--out", help="output folder for this manifest (created; resumed when it exists)")
    p.add_argument("--teacher", default="whisper:base", help="a model folder or whisper:NAME (default whisper:base)")
    p.add_argument("--topk", type=int, default=32, help="token distributions kept per position (default 32)")
    p.add_argument("--shard-size", type=int, default=200, help="utterances per safetensors shard (default 200)")
    p.add_argument("--batch", type=int, default=1, help="utterances decoded together (default 1)")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows of the manifest")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--summary", nargs="+", metavar="OUT", help="summarise labelled folders instead (JSON)")
    p.add_argument("--threshold", type=float, default=0.10, help="--summary: WER counted as too high (0.10)")
    args = p.parse_args(argv)
    if args.summary:
        for folder in args.summary:
            print(json.dumps(summary(Path(folder), args.threshold), indent=2))
        return 0
    if not args.manifest or not args.out:
        p.error("give a MANIFEST and --out (or --summary OUT...)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
