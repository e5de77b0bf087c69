"""Decoding flags for every command, made from the one option table (`decoding.options.OPTIONS`).

A flag left out keeps that setting of the model's preferred decoding; help texts show the embedded model's
own values, read from its config.json, never a copied number.
"""

from __future__ import annotations

import argparse
from typing import Any

from speech_transformer.decoding.options import METHODS, OPTIONS, DecodingOptions


COMPUTE = ("auto", "int8", "float32")  # `Recognizer.from_dir`'s compute, the --compute flag of the commands
COMPUTE_HELP = ("matrix arithmetic on the CPU: int8 (bfloat16 over frames where the CPU has it), float32, or auto "
                "(default: int8 for a model stored quantized, as the shipped ones are)")


def embedded_decoding() -> DecodingOptions | None:
    """The embedded default model's preferred decoding (None when this install ships no model)."""
    from speech_transformer import pretrained
    from speech_transformer.model.checkpoint import CheckpointError, ModelDirectory

    try:
        return ModelDirectory.read(pretrained.default_model_dir()).decoding
    except (FileNotFoundError, CheckpointError):
        return None


def describe_preferred(options: DecodingOptions | None) -> str:
    """'beam 4, CTC weight 0.3 (also tuned: lexicon beam 200, ...)': a model's preferred and other tuned searches."""
    if options is None:
        return "no embedded model"
    others = [options.override(method=m).describe() for m in ("attention", "lexicon")
              if m != options.method and getattr(options, m) != type(getattr(options, m))()]
    return options.describe() + (f" (also tuned: {'; '.join(others)})" if others else "")


def add_decoding_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per option that has one; each left out keeps that setting of the model's preferred decoding."""
    d = p.add_argument_group("decoding", "Default: the model's preferred decoding (its config.json \"decoding\"; "
                             f"the embedded model: {describe_preferred(embedded_decoding())}). Each flag changes "
                             "that one setting; a setting of another search (e.g. --word-score) chooses it.")
    for o in OPTIONS.values():
        if o.flag is None:
            continue
        kwargs: dict[str, Any] = {"dest": o.name, "help": o.help}
        if o.name == "method":
            kwargs["choices"] = METHODS
        else:
            kwargs["type"] = _flag_type(o.name)
        d.add_argument(o.flag, **kwargs)


def _flag_type(name: str):
    option = OPTIONS[name]

    def parse(text: str):
        try:
            return option.parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option.flag}: not a {option.kind.__name__}: {text!r}") from None

    parse.__name__ = option.kind.__name__
    return parse


def decoding_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the decoding flags set (flags left out are not in it)."""
    return {name: getattr(args, name) for name in OPTIONS if getattr(args, name, None) is not None}
