"""`speech-transformer listen`: live recognition from the microphone, a file or standard input.

    speech-transformer listen                              the default microphone, JSON lines on stdout
    speech-transformer listen --grammar desktop            voice commands: command / rejected events
    speech-transformer listen --input talk.flac --realtime a file, paced at the speed of speech
    arecord -f S16_LE -r 16000 | speech-transformer listen --input - --raw-rate 16000

One JSON line per event (`streaming.Event`): {"type": "partial"|"final"|"command"|"rejected", "text",
"start", "end", "latency_s"}, finals with "words", commands with "command", "action", "slots",
"confidence". Acting on commands is left to the programs that read these lines. Ctrl-C flushes the last
utterance and exits 130; no audio device exits 2.
"""

from __future__ import annotations

import argparse
import io
import json
import queue
import sys
import time
from typing import Iterator

import numpy as np

from speech_transformer.apps import exitcodes
from speech_transformer.apps.decoding_args import COMPUTE, COMPUTE_HELP
from speech_transformer.audio.loading import SAMPLE_RATE, AudioError

BLOCK_SECONDS = 0.05  # audio handed to the recogniser at a time


class NoDevice(Exception):
    """No microphone to listen to; the message says why."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="speech-transformer listen",
                                description="Listen live: partial hypotheses while someone speaks, a final one "
                                            "(or a command) when they pause. One JSON line per event.")
    p.add_argument("--model", default=None, help="model folder or shipped name (default: the embedded model)")
    p.add_argument("--device", default=None, help="microphone: a sounddevice index or name (default: the system's)")
    p.add_argument("--compute", default="auto", choices=COMPUTE, help=COMPUTE_HELP)
    p.add_argument("--input", default=None, metavar="FILE|-", help="read a file (any format soundfile reads) or "
                   "standard input instead of the microphone")
    p.add_argument("--raw-rate", type=int, default=None, metavar="HZ",
                   help="--input is raw 16-bit little-endian mono PCM at this rate")
    p.add_argument("--realtime", action="store_true", help="pace --input at the speed of speech")
    p.add_argument("--format", choices=["json", "text"], default="json")
    p.add_argument("--grammar", default=None, help="match each utterance against this grammar (file or shipped "
                                                   "name: desktop, digits): command or rejected events")
    p.add_argument("--hop", type=float, default=None, help="seconds of new audio between partials (default 0.4)")
    p.add_argument("--end-silence", type=float, default=None, help="silence that ends an utterance (default 0.25)")
    p.add_argument("--max-utterance", type=float, default=None, help="longest utterance, seconds (default 20)")
    return p


def file_blocks(path: str, raw_rate: int | None) -> tuple[int, Iterator[np.ndarray]]:
    """(sample rate, blocks) of a file or of standard input ("-")."""
    import soundfile as sf

    if raw_rate is not None:
        stream = sys.stdin.buffer if path == "-" else open(path, "rb")
        step = int(raw_rate * BLOCK_SECONDS) * 2

        def raw() -> Iterator[np.ndarray]:
            rest = b""
            while chunk := stream.read(step):
                data, rest = rest + chunk, b""
                data, rest = data[:len(data) // 2 * 2], data[len(data) // 2 * 2:]
                yield np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        return raw_rate, raw()
    if path != "-":  # a file: the same checks and block reading as transcribe (16 kHz mono)
        from speech_transformer.audio.sources import FileSource

        return SAMPLE_RATE, FileSource(path, BLOCK_SECONDS).blocks()
    f = sf.SoundFile(io.BytesIO(sys.stdin.buffer.read()))  # soundfile seeks: stdin is read whole
    return f.samplerate, f.blocks(max(1, int(f.samplerate * BLOCK_SECONDS)), dtype="float32", always_2d=True)


def microphone(device: str | None) -> tuple[int, Iterator[tuple[np.ndarray, float]]]:
    """(sample rate, (block, arrival time) pairs) of a live input device. Raises NoDevice."""
    try:
        import sounddevice as sd
    except (ImportError, OSError) as e:  # OSError: "PortAudio library not found"
        raise NoDevice(f"cannot use the sound system ({e}); install PortAudio, or use --input FILE|-") from None
    try:
        chosen = int(device) if device is not None and device.isdigit() else device
        rate = int(sd.query_devices(chosen, kind="input")["default_samplerate"])
    except (ValueError, sd.PortAudioError) as e:
        raise NoDevice(f"no audio input device{f' {device!r}' if device else ''} ({e}); "
                       "use --input FILE|- to read a file or standard input") from None
    blocks: queue.Queue = queue.Queue()

    def heard(data, frames, when, status):
        blocks.put((data[:, 0].copy(), time.monotonic()))

    def generate() -> Iterator[tuple[np.ndarray, float]]:
        with sd.InputStream(rate, int(rate * BLOCK_SECONDS), chosen, 1, "float32", callback=heard):
            while True:
                yield blocks.get()
    return rate, generate()


def paced(rate: int, blocks: Iterator[np.ndarray], realtime: bool) -> Iterator[tuple[np.ndarray, float]]:
    """Blocks with their arrival times; with `realtime`, each one waits until its audio would have been heard."""
    start, fed = time.monotonic(), 0
    for block in blocks:
        fed += len(block)
        due = start + fed / rate
        if realtime:
            time.sleep(max(0.0, due - time.monotonic()))
            yield block, due
        else:
            yield block, time.monotonic()


def show(event, fmt: str, tty: bool) -> None:
    d = event.to_dict()
    if fmt == "json":
        print(json.dumps(d), flush=True)
        return
    if event.type == "partial":
        print(f"\r\033[K… {event.text}" if tty else f"… {event.text}", end="" if tty else "\n", flush=True)
        return
    said = {"final": event.text, "rejected": f"(not understood) {event.text}",
            "command": f"{d.get('action') or 'command'}: {event.text.lower()} {d.get('slots') or ''} "
                       f"({d.get('confidence', 0):.2f})"}[event.type]
    print(f"{chr(13) + chr(27) + '[K' if tty else ''}[{event.start:7.2f} {event.end:7.2f}] {said}", flush=True)


def open_input(args) -> tuple[int, Iterator[tuple[np.ndarray, float]]]:
    """(sample rate, (block, arrival time) pairs) of the microphone or --input. Raises NoDevice, OSError."""
    if args.input is None:
        return microphone(args.device)
    rate, blocks = file_blocks(args.input, args.raw_rate)
    return rate, paced(rate, blocks, args.realtime)


def run(recognizer, options, grammar, rate: int, timed, fmt: str) -> int:
    from speech_transformer.recognition.streaming import StreamingRecognizer

    stream = StreamingRecognizer(recognizer, options, grammar)
    tty = sys.stdout.isatty()
    try:
        for block, arrival in timed:
            for e in stream.accept(block, rate, arrival):
                show(e, fmt, tty)
    except KeyboardInterrupt:
        for e in stream.flush():
            show(e, fmt, tty)
        return exitcodes.INTERRUPTED
    for e in stream.flush():
        show(e, fmt, tty)
    return exitcodes.OK


def main(argv: list[str] | None = None) -> int:
    from speech_transformer.commands.grammar import Grammar, GrammarError
    from speech_transformer.model.checkpoint import CheckpointError
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.recognition.streaming import StreamOptions

    def fail(message: str, code: int) -> int:
        print(f"speech-transformer listen: {message}", file=sys.stderr)
        return code

    try:
        args = _parser().parse_args(argv)
        changes = {"hop_seconds": args.hop, "end_silence_seconds": args.end_silence,
                   "max_utterance_seconds": args.max_utterance,  # a shorter end silence keeps as much pad
                   "pad_seconds": min(StreamOptions.pad_seconds, args.end_silence) if args.end_silence else None}
        options = StreamOptions(**{k: v for k, v in changes.items() if v is not None})
        grammar = Grammar.load(args.grammar) if args.grammar else None
    except SystemExit as e:
        return int(e.code or 0)
    except (GrammarError, ValueError) as e:
        return fail(f"error: {e}", exitcodes.USAGE_ERROR)
    try:
        rate, timed = open_input(args)
    except NoDevice as e:
        return fail(str(e), exitcodes.USAGE_ERROR)
    except AudioError as e:  # names the file and the reason
        return fail(str(e), exitcodes.INPUTS_FAILED)
    except (OSError, RuntimeError) as e:  # soundfile's LibsndfileError is a RuntimeError
        return fail(f"cannot read {args.input}: {e}", exitcodes.INPUTS_FAILED)
    try:
        recognizer = Recognizer.from_dir(args.model, compute=args.compute)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        return fail(f"cannot load the model: {e}", exitcodes.USAGE_ERROR)
    try:
        return run(recognizer, options, grammar, rate, timed, args.format)
    except KeyboardInterrupt:
        return exitcodes.INTERRUPTED
    except AudioError as e:
        return fail(str(e), exitcodes.INPUTS_FAILED)
    except (OSError, RuntimeError) as e:
        return fail(f"reading {args.input or 'the microphone'} failed: {e}", exitcodes.INPUTS_FAILED)


if __name__ == "__main__":
    sys.exit(main())
