"""`speech-transformer commands`: which command of a grammar each recording is, or rejected (JSON lines).

See `speech_transformer.commands.matching` for how an utterance is matched and rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from speech_transformer.commands.grammar import Grammar, GrammarError
from speech_transformer.commands.matching import DEFAULT_REJECT_THRESHOLD, CommandMatch, MatchOptions, match


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="speech-transformer commands",
        description="Match spoken commands against a grammar; one JSON line per input on stdout: "
                    "file, command, action, slots, confidence, or rejected. Recordings longer than "
                    "--split-seconds are cut into utterances by the VAD first (their line lists them).")
    p.add_argument("paths", nargs="+", metavar="AUDIO", help="files, folders, globs or manifests")
    p.add_argument("--grammar", required=True, help="grammar file (line format or JSGF), or a shipped name: "
                                                    "desktop, digits")
    p.add_argument("--model", default=None, help="model folder or shipped name (default: the embedded model)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threshold", type=float, default=None,
                   help="reject when the log-likelihood ratio to unconstrained decoding is below this, in nats "
                        f"(default: the model's config.json, else {DEFAULT_REJECT_THRESHOLD})")
    p.add_argument("--no-reject", action="store_true", help="always give the best command")
    p.add_argument("--ctc-weight", type=float, default=None,
                   help=f"share of CTC in the joint score (default: the model's, else {MatchOptions.ctc_weight})")
    p.add_argument("--split-seconds", type=float, default=6.0, help="longer inputs are split by the VAD")
    p.add_argument("--recursive", action="store_true", help="descend into subfolders of folder inputs")
    return p


def main(argv: list[str] | None = None) -> int:
    from speech_transformer.audio.loading import SAMPLE_RATE, load_audio
    from speech_transformer.recognition.recognizer import Recognizer
    from speech_transformer.audio.sources import expand_inputs, reason

    try:
        args = _parser().parse_args(argv)
        MatchOptions(ctc_weight=args.ctc_weight or 0.0)  # a bad weight is refused before any model loads
        grammar = Grammar.load(args.grammar)
    except SystemExit as e:
        return int(e.code or 0)
    except (GrammarError, ValueError) as e:
        print(f"speech-transformer commands: error: {e}", file=sys.stderr)
        return 2
    files, problems = expand_inputs(args.paths, args.recursive)
    failed = len(problems)
    for arg, why in problems:
        print(json.dumps({"file": arg, "error": why}), flush=True)
    if not files:
        return 1 if failed else 0
    try:
        recognizer = Recognizer.from_dir(args.model, device=args.device)
        options = MatchOptions.for_model(recognizer.info, ctc_weight=args.ctc_weight, reject_threshold=args.threshold)
    except Exception as e:
        print(f"speech-transformer commands: cannot load the model: {reason(e)}", file=sys.stderr)
        return 1
    if args.no_reject:
        options = replace(options, reject_threshold=None)
    vad = None
    for f in files:
        line: dict = {"file": str(f.path)}
        try:
            start = time.perf_counter()
            wave = load_audio(str(f.path))
            duration = len(wave) / SAMPLE_RATE
            line["duration"] = round(duration, 3)
            if duration > args.split_seconds:
                if vad is None:
                    from speech_transformer.audio.vad import SileroVad

                    vad = SileroVad()
                chunks = vad(wave)
                found = match(recognizer, [wave[c.start:c.end] for c in chunks], grammar, options)
                line["utterances"] = [{"start": round(c.start_s, 3), "end": round(c.end_s, 3), **_result(m)}
                                      for c, m in zip(chunks, found)]
            else:
                line.update(_result(match(recognizer, [wave], grammar, options)[0]))
            line["seconds"] = round(time.perf_counter() - start, 3)
        except Exception as e:
            line = {"file": str(f.path), "error": reason(e)}
            failed += 1
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


def _result(m: CommandMatch | None) -> dict:
    return {"rejected": True} if m is None else {"rejected": False, **m.to_dict()}


if __name__ == "__main__":
    sys.exit(main())
