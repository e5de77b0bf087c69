"""Phrase trees: what a grammar's commands say (words, sequences, alternatives, bounded repeats), the values
they carry into slots, and the built-in slots {digit}, {digits}, {number}, {letter}."""

from __future__ import annotations

from dataclasses import dataclass

from speech_transformer.text.normalize import DIGIT_WORDS, number_to_words

MAX_REPEAT = 16  # '+' and '*' stand for at most this many repetitions


@dataclass(frozen=True)
class Word:
    text: str  # normalised (upper case), what is said
    written: str  # as the grammar writes it: the slot value


@dataclass(frozen=True)
class Seq:
    items: tuple
    sep: str = " "  # joins the items' values


@dataclass(frozen=True)
class Alt:
    options: tuple


@dataclass(frozen=True)
class Repeat:
    item: object
    low: int
    high: int
    sep: str = " "


@dataclass(frozen=True)
class Value:
    """`item`, whose slot value is `value` whatever was said (e.g. FORTY TWO -> "42")."""

    item: object
    value: str


@dataclass(frozen=True)
class Slot:
    """A reference to a slot or rule: captures the inner value under `name`."""

    name: str
    line: int


Node = object  # Word | Seq | Alt | Repeat | Value | Slot
EMPTY = Seq(())


@dataclass(frozen=True)
class Command:
    tree: Node
    action: str | None
    line: int
    text: str  # the grammar's own text of it


@dataclass(frozen=True)
class Phrase:
    """One expansion: what is said, and what it means."""

    words: tuple[str, ...]  # normalised words
    command: int  # index into Grammar.commands
    slots: dict[str, str]


def _phrase(text: str, value: str) -> Value:
    words = text.split()
    return Value(Seq(tuple(Word(w, w.lower()) for w in words)) if len(words) > 1 else Word(words[0], words[0].lower()),
                 value)


def builtins() -> dict[str, Node]:
    """{digit}: ZERO/OH..NINE -> "0".."9"; {digits}: 1-16 digits -> "427"; {number}: ZERO..NINETY NINE -> "0".."99";
    {letter}: A..Z -> "A".."Z"."""
    digit = Alt(tuple(_phrase(w, str(d)) for d, w in enumerate(DIGIT_WORDS)) + (_phrase("OH", "0"),))
    number = Alt(tuple(_phrase(number_to_words(n), str(n)) for n in range(100)))
    letter = Alt(tuple(Value(Word(c, c), c) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    return {"digit": digit, "digits": Repeat(digit, 1, MAX_REPEAT, sep=""), "number": number,
            "letter": letter}


def children(node: Node) -> tuple:
    if isinstance(node, Seq):
        return node.items
    if isinstance(node, Alt):
        return node.options
    if isinstance(node, (Repeat, Value)):
        return (node.item,)
    return ()


def put_slot(slots: dict[str, str], name: str, value: str) -> dict[str, str]:
    out = dict(slots)
    key, k = name, 2
    while key in out:
        key, k = f"{name}_{k}", k + 1
    out[key] = value
    return out


def merge_slots(a: dict[str, str], b: dict[str, str]) -> dict[str, str]:
    out = a
    for name, value in b.items():
        out = put_slot(out, name, value)
    return out
