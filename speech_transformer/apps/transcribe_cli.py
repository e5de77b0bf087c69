"""`speech-transformer transcribe`: the command line around `speech_transformer.apps.transcribe`.

    speech-transformer transcribe talks/ -o out --recursive --format srt,json --resume
    torchrun --nproc-per-node 8 -m speech_transformer.apps.transcribe_cli archive/ -o out --recursive --resume

Decoding flags left out take the model's preferred decoding (config.json "decoding"); a flag changes one
field of it. Exit codes, as in every subcommand: 0 all inputs done, 1 some inputs failed (the others are
written), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from speech_transformer.apps import exitcodes, writers as subtitles
from speech_transformer.apps.decoding_args import COMPUTE, COMPUTE_HELP, add_decoding_arguments, decoding_changes
from speech_transformer.audio.loading import reason
from speech_transformer.audio.sources import InputFile, expand_inputs, output_stems
from speech_transformer.apps.transcribe import TranscribeOptions, Transcriber, load_model
from speech_transformer.utils.runtime import setup_distributed


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speech-transformer transcribe",
        description="Transcribe audio files, folders, globs or manifests (.tsv/.jsonl); one output per input "
                    "and format. Under torchrun the inputs are shared out across the processes.")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("-o", "--output-dir", default=".", help="where outputs go (default: the current folder)")
    p.add_argument("--format", default="all", help="comma list of txt,json,srt,vtt,tsv, or all (default: all)")
    p.add_argument("--model", default=None, help="model folder, shipped model name or whisper:NAME|PATH "
                                                 "(default: the embedded model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(default: auto)")
    p.add_argument("--compute", default="auto", choices=COMPUTE, help=COMPUTE_HELP)
    add_decoding_arguments(p)
    p.add_argument("--batch-seconds", type=float, default=120.0,
                   help="padded audio per batch, 0: one chunk at a time (default: 120)")
    p.add_argument("--pool-seconds", type=float, default=None,
                   help="chunk audio collected across files before sorting into batches (default: 4 x batch)")
    p.add_argument("--max-chunk-seconds", type=float, default=20.0, help="longest VAD chunk (default: 20)")
    p.add_argument("--vad-threshold", type=float, default=0.5, help="speech probability threshold (default: 0.5)")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders of folder inputs")
    p.add_argument("--resume", action="store_true", help="skip inputs whose outputs all exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


@dataclass
class Summary:
    ok: int = 0
    skipped: int = 0  # already complete (--resume)
    silent: int = 0  # ok, but no speech found
    failed: list[tuple[str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    wall_seconds: float = 0.0

    def merge(self, other: "Summary") -> None:
        self.ok += other.ok
        self.skipped += other.skipped
        self.silent += other.silent
        self.failed += other.failed
        self.audio_seconds += other.audio_seconds
        self.wall_seconds = max(self.wall_seconds, other.wall_seconds)


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        formats = subtitles.parse_formats(args.format)
        options = TranscribeOptions.from_kwargs(
            decoding_changes=decoding_changes(args), batch_seconds=args.batch_seconds,
            pool_seconds=args.pool_seconds, max_chunk_seconds=args.max_chunk_seconds, threshold=args.vad_threshold)
        options.decoding()  # validates
    except SystemExit as e:
        return int(e.code or 0)
    except ValueError as e:
        print(f"speech-transformer transcribe: error: {e}", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    start = time.perf_counter()
    # gloo: only the summary travels; a long timeout: ranks finish their shares far apart
    rank, world, device = setup_distributed(args.device, "gloo", timedelta(days=7))
    out_dir = Path(args.output_dir)
    files, problems = expand_inputs(args.paths, args.recursive)
    stems = output_stems(files, out_dir)
    mine = [k for k in range(len(files)) if k % world == rank]
    summary = Summary(failed=list(problems) if rank == 0 else [])
    todo = []
    for k in mine:
        subtitles.remove_stale_temps(stems[k], formats)
        if args.resume and subtitles.is_complete(stems[k], formats):
            summary.skipped += 1
        else:
            todo.append(k)
    try:
        transcriber = Transcriber(load_model(args.model, str(device), args.compute), options) if todo else None
    except Exception as e:
        print(f"speech-transformer transcribe: cannot load the model: {reason(e)}", file=sys.stderr)
        return exitcodes.USAGE_ERROR
    if transcriber is not None:
        try:
            _transcribe_files(transcriber, [files[k] for k in todo], [stems[k] for k in todo], formats, summary,
                              progress=not args.no_progress and rank == 0)
        except KeyboardInterrupt:
            print(f"interrupted: {summary.ok} file(s) finished and kept; run again with --resume to go on",
                  file=sys.stderr)
            return exitcodes.INTERRUPTED
    summary.wall_seconds = time.perf_counter() - start
    if world > 1:
        import torch.distributed as dist

        gathered: list[Summary | None] = [None] * world
        dist.all_gather_object(gathered, summary)
        summary = Summary()
        for s in gathered:
            summary.merge(s)
        dist.destroy_process_group()
    if rank == 0:
        _print_summary(summary, out_dir, world)
    return exitcodes.INPUTS_FAILED if summary.failed else exitcodes.OK


def _transcribe_files(transcriber: Transcriber, files: list[InputFile], stems: list[Path], formats: list[str],
                      summary: Summary, progress: bool) -> None:
    from tqdm import tqdm

    started = time.perf_counter()
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    decoded = 0.0

    def show() -> None:
        elapsed = time.perf_counter() - started
        bar.set_postfix(audio=f"{summary.audio_seconds / 3600:.2f}h", speech=f"{decoded / 3600:.2f}h",
                        rtf=f"{elapsed / summary.audio_seconds:.3f}" if summary.audio_seconds else "-")

    def on_batch(seconds: float) -> None:
        nonlocal decoded
        decoded += seconds
        show()

    transcriber.on_batch = on_batch
    for i, t in transcriber.run([str(f.path) for f in files]):
        if t.ok:
            try:
                subtitles.write_outputs(t, stems[i], formats)
            except OSError as e:
                t.error = f"cannot write outputs ({e})"
        if t.ok:
            summary.ok += 1
            summary.silent += not t.segments
            summary.audio_seconds += t.duration
        else:
            summary.failed.append((t.source, t.error))
            bar.write(f"FAILED {t.source}: {t.error}", file=sys.stderr)
        bar.update(1)
        show()
    bar.close()


def _print_summary(s: Summary, out_dir: Path, world: int) -> None:
    rtf = f"{s.wall_seconds / s.audio_seconds:.3f}" if s.audio_seconds else "-"
    print(f"transcribed {s.ok} file(s) ({s.silent} without speech), skipped {s.skipped} already done, "
          f"failed {len(s.failed)}; {s.audio_seconds / 3600:.3f} h of audio in {s.wall_seconds:.1f} s "
          f"(real-time factor {rtf}{f', {world} processes' if world > 1 else ''}); outputs in {out_dir}")
    for name, why in s.failed:
        print(f"  failed: {name}: {why}")


if __name__ == "__main__":
    sys.exit(main())
