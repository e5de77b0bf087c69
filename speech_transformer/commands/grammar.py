"""Command grammars: a small line format and a JSGF subset, parsed into phrase trees.

The line format (`grammars/desktop.txt`), one command per line::

    # comments start with '#'
    {app} = browser | terminal | mail          a slot: its alternatives
    open {app} -> open                         a command; '-> name' names its action
    volume (up | down) [please] -> volume      (a|b) alternatives, [x] or (x)? optional
    type {number} -> type                      built-in slots: {number} {digit} {digits} {letter}
    spell {letter}+                            x+ once or more, x* any number of times (both bounded)

The JSGF subset (`#JSGF V1.0; grammar name; [public] <rule> = ...;`): `|`, `[ ]`, `( )`, `<rule>`
references, `*` and `+`; `//` and `/* */` comments. Public rules are the commands (the rule name is the
action), a reference to another rule captures what it matched as a slot of that name, and the same
built-ins are there as `<number>`, `<digit>`, `<digits>`, `<letter>` unless the grammar defines them.

Words are normalised like training transcripts (`normalize_transcript`: upper case, "2" -> "TWO").
`Grammar.expand()` lists every phrase with its slot values, `Grammar.count()` counts them without
listing, `Grammar.parse(words)` finds the command a word sequence is, and `Grammar.automaton()` gives
the word graph a constrained search walks when there are too many phrases to list.
A bad grammar raises `GrammarError` naming the file and the line.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from speech_transformer.commands.phrase_tree import (
    EMPTY,
    MAX_REPEAT,
    Alt,
    Command,
    Node,
    Phrase,
    Repeat,
    Seq,
    Slot,
    Value,
    Word,
    builtins,
    children,
    merge_slots,
    put_slot,
)
from speech_transformer.commands.word_graph import WordGraph, epsilon_closure, word_graph  # noqa: F401 (matching reads them here)
from speech_transformer.text.normalize import normalize_transcript

GRAMMAR_DIR = Path(__file__).parent / "grammars"
_WORD = re.compile(r"^[A-Z']+$")


class GrammarError(ValueError):
    """A grammar that cannot be read; the message starts with `file:line:`."""

    def __init__(self, source: str, line: int, message: str):
        super().__init__(f"{source}:{line}: {message}")
        self.source, self.line = source, line


# --- parsing expressions ----------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(\{[^{}]*\}|<[^<>]*>|[()\[\]|?*+]|[^\s(){}\[\]|?*+<>;=]+|\S)")


class _Parser:
    """Recursive descent over one expression: alternatives > sequences > postfix ?, *, +."""

    def __init__(self, text: str, source: str, line: int, refs: str):
        self.source, self.line, self.refs = source, line, refs  # refs: "{}" (line format) or "<>" (JSGF)
        self.tokens = [m.group(1) for m in _TOKEN.finditer(text) if m.group(1).strip()]
        self.i = 0

    def error(self, message: str) -> GrammarError:
        return GrammarError(self.source, self.line, message)

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def parse(self) -> Node:
        if not self.tokens:
            raise self.error("empty expression")
        node = self.alternatives()
        if self.peek() is not None:
            raise self.error(f"unexpected {self.peek()!r}")
        return node

    def alternatives(self) -> Node:
        options = [self.sequence()]
        while self.peek() == "|":
            self.i += 1
            options.append(self.sequence())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def sequence(self) -> Node:
        items = []
        while self.peek() not in (None, "|", ")", "]"):
            items.append(self.postfix(self.term()))
        if not items:
            raise self.error("empty alternative (nothing between '|', '(' or ')')")
        return items[0] if len(items) == 1 else Seq(tuple(items))

    def postfix(self, node: Node) -> Node:
        while self.peek() in ("?", "*", "+"):
            op = self.tokens[self.i]
            self.i += 1
            node = Alt((EMPTY, node)) if op == "?" else Repeat(node, 0 if op == "*" else 1, MAX_REPEAT)
        return node

    def term(self) -> Node:
        t = self.tokens[self.i]
        self.i += 1
        if t in ("(", "["):
            node = self.alternatives()
            close = ")" if t == "(" else "]"
            if self.peek() != close:
                raise self.error(f"{t!r} is not closed by {close!r}")
            self.i += 1
            return node if t == "(" else Alt((EMPTY, node))
        if t[0] in "{<":
            if t[0] != self.refs[0]:
                what = "tags {...} are not supported" if t[0] == "{" else "rule references <...> belong in JSGF"
                raise self.error(f"{t}: {what}; this format names slots as {self.refs[0]}name{self.refs[1]}")
            name = t[1:-1].strip()
            if t[0] == "<" and name == "NULL":
                return EMPTY
            if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
                raise self.error(f"bad slot name {t!r}")
            return Slot(name, self.line)
        if t in (")", "]", "?", "*", "+") or not re.fullmatch(r"[^\s(){}\[\]|?*+<>;=/]+", t):
            raise self.error(f"unexpected {t!r}")
        said = normalize_transcript(t).split()
        if not said or not all(_WORD.match(w) for w in said):
            raise self.error(f"{t!r} is not a word the recogniser can say")
        if len(said) == 1:
            return Word(said[0], t)
        return Value(Seq(tuple(Word(w, w.lower()) for w in said)), t)


# --- the grammar ------------------------------------------------------------------------------

@dataclass
class Grammar:
    commands: list[Command]
    slots: dict[str, Node] = field(default_factory=dict)  # user slots/rules and the built-ins
    source: str = "<string>"

    @classmethod
    def parse_text(cls, text: str, source: str = "<string>") -> "Grammar":
        """Either format: JSGF when the text starts with `#JSGF`."""
        if text.lstrip().startswith("#JSGF"):
            return _parse_jsgf(text, source)
        return _parse_lines(text, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Grammar":
        """A grammar file, or the name of a shipped one (`desktop`, `digits`)."""
        p = Path(path)
        if not p.exists() and (GRAMMAR_DIR / f"{path}.txt").is_file():
            p = GRAMMAR_DIR / f"{path}.txt"
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise GrammarError(str(path), 0, f"cannot read the grammar ({e})") from None
        return cls.parse_text(text, str(path))

    def _resolve(self, node: Node, stack: tuple[str, ...] = ()) -> None:
        """Every slot defined, no slot containing itself."""
        if isinstance(node, Slot):
            if node.name not in self.slots:
                raise GrammarError(self.source, node.line, f"slot {node.name!r} is not defined")
            if node.name in stack:
                raise GrammarError(self.source, node.line, f"slot {node.name!r} refers to itself "
                                   f"({' -> '.join(stack + (node.name,))})")
            self._resolve(self.slots[node.name], stack + (node.name,))
        for child in children(node):
            self._resolve(child, stack)

    # counting and listing

    def count(self) -> int:
        """Number of phrases `expand` would list (counting derivations, before duplicates are merged)."""
        memo: dict[str, int] = {}

        def n(node: Node) -> int:
            if isinstance(node, Word):
                return 1
            if isinstance(node, Seq):
                out = 1
                for item in node.items:
                    out *= n(item)
                return out
            if isinstance(node, Alt):
                return sum(n(o) for o in node.options)
            if isinstance(node, Repeat):
                k = n(node.item)
                return sum(k ** r for r in range(node.low, node.high + 1))
            if isinstance(node, Value):
                return n(node.item)
            if node.name not in memo:
                memo[node.name] = n(self.slots[node.name])
            return memo[node.name]

        return sum(n(c.tree) for c in self.commands)

    def expand(self, limit: int | None = 100_000) -> list[Phrase]:
        """Every distinct word sequence with its command and slots (the first reading of an ambiguous one).

        Raises ValueError when there are more than `limit` phrases.
        """
        if limit is not None and self.count() > limit:
            raise ValueError(f"{self.source}: {self.count()} phrases, more than {limit} to list")
        seen: dict[tuple[str, ...], Phrase] = {}
        for k, c in enumerate(self.commands):
            for words, _, slots in self._expand(c.tree):
                if words not in seen:
                    seen[words] = Phrase(words, k, slots)
        return list(seen.values())

    def _expand(self, node: Node) -> Iterator[tuple[tuple[str, ...], str, dict[str, str]]]:
        if isinstance(node, Word):
            yield (node.text,), node.written, {}
        elif isinstance(node, Alt):
            for o in node.options:
                yield from self._expand(o)
        elif isinstance(node, Value):
            for words, _, slots in self._expand(node.item):
                yield words, node.value, slots
        elif isinstance(node, Slot):
            for words, value, slots in self._expand(self.slots[node.name]):
                yield words, value, put_slot(slots, node.name, value)
        else:
            items = node.items if isinstance(node, Seq) else None
            if items is None:  # Repeat
                for r in range(node.low, node.high + 1):
                    yield from self._expand(Seq((node.item,) * r, node.sep))
                return
            for combo in itertools.product(*(list(self._expand(i)) for i in items)):
                slots: dict[str, str] = {}
                for _, _, s in combo:
                    for name, value in s.items():
                        slots = put_slot(slots, name, value)
                yield (tuple(w for words, _, _ in combo for w in words),
                       node.sep.join(v for _, v, _ in combo if v), slots)

    # reading a word sequence back

    def parse(self, words: list[str] | tuple[str, ...]) -> Phrase | None:
        """The first command whose phrases include `words` (normalised), with its slots; None if none does."""
        words = tuple(words)
        for k, c in enumerate(self.commands):
            for end, _, slots in self._match(c.tree, words, 0):
                if end == len(words):
                    return Phrase(words, k, slots)
        return None

    def _match(self, node: Node, words: tuple[str, ...], i: int) -> list[tuple[int, str, dict[str, str]]]:
        """Ways `node` matches words[i:...]: (end, value, slots) each."""
        if isinstance(node, Word):
            return [(i + 1, node.written, {})] if i < len(words) and words[i] == node.text else []
        if isinstance(node, Alt):
            return [m for o in node.options for m in self._match(o, words, i)]
        if isinstance(node, Value):
            return [(e, node.value, s) for e, _, s in self._match(node.item, words, i)]
        if isinstance(node, Slot):
            return [(e, v, put_slot(s, node.name, v)) for e, v, s in self._match(self.slots[node.name], words, i)]
        if isinstance(node, Repeat):
            out, frontier = [], [(i, [], {})]
            for r in range(node.high + 1):
                if r >= node.low:
                    out += [(e, node.sep.join(vs), s) for e, vs, s in frontier]
                nxt = []
                for e, vs, s in frontier:
                    for e2, v, s2 in self._match(node.item, words, e):
                        if e2 > e:  # an empty repetition adds nothing
                            nxt.append((e2, vs + [v] if v else vs, merge_slots(s, s2)))
                frontier = nxt
                if not frontier:
                    break
            return out
        states = [(i, [], {})]
        for item in node.items:
            states = [(e2, vs + [v] if v else vs, merge_slots(s, s2))
                      for e, vs, s in states for e2, v, s2 in self._match(item, words, e)]
        return [(e, node.sep.join(vs), s) for e, vs, s in states]

    def vocabulary(self) -> set[str]:
        """Every word some phrase says."""
        out: set[str] = set()

        def walk(node: Node, seen: set[str]) -> None:
            if isinstance(node, Word):
                out.add(node.text)
            elif isinstance(node, Slot):
                if node.name not in seen:
                    seen.add(node.name)
                    walk(self.slots[node.name], seen)
            for child in children(node):
                walk(child, seen)

        for c in self.commands:
            walk(c.tree, set())
        return out

    def automaton(self) -> WordGraph:
        """The grammar as a word graph: all commands from state 0 (repeats unrolled)."""
        return word_graph([c.tree for c in self.commands], self.slots)

    def to_jsgf(self, name: str = "commands") -> str:
        """The same grammar as JSGF (for PocketSphinx): words lower case, repeats written out."""
        lines = ["#JSGF V1.0;", f"grammar {name};"]
        used = set()

        def j(node: Node) -> str:
            if isinstance(node, Word):
                return node.text.lower()
            if isinstance(node, Value):
                return j(node.item)
            if isinstance(node, Slot):
                used.add(node.name)
                return f"<{_jsgf_name(node.name)}>"
            if isinstance(node, Alt):
                opts = [o for o in node.options if o != EMPTY]
                inner = " | ".join(j(o) for o in opts)
                return f"[{inner}]" if len(opts) < len(node.options) else f"({inner})"
            if isinstance(node, Repeat):
                body = j(node.item)
                if node.high == MAX_REPEAT and node.low <= 1:  # PocketSphinx's own loops
                    return f"({body})" + ("+" if node.low else "*")
                opt = " ".join([f"[{body}"] * (node.high - node.low)) + "]" * (node.high - node.low)
                return " ".join([f"({body})"] * node.low + ([opt] if node.high > node.low else []))
            return "(" + " ".join(j(i) for i in node.items) + ")" if node.items else "<NULL>"

        body = [f"({j(c.tree)})" for c in self.commands]
        lines.append("public <command> = " + " | ".join(body) + ";")
        done: set[str] = set()
        while used - done:
            n = sorted(used - done)[0]
            done.add(n)
            lines.append(f"<{_jsgf_name(n)}> = {j(self.slots[n])};")
        return "\n".join(lines) + "\n"


def _jsgf_name(name: str) -> str:
    return "slot_" + re.sub(r"\W", "_", name)


# --- the two file formats ---------------------------------------------------------------------

def _parse_lines(text: str, source: str) -> Grammar:
    commands: list[Command] = []
    slots: dict[str, Node] = dict(builtins())
    defined: dict[str, int] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\{\s*([^{}]*?)\s*\}\s*=(.*)", line)
        if m:
            name = m.group(1)
            if not re.fullmatch(r"[A-Za-z_][\w.-]*", name):
                raise GrammarError(source, n, f"bad slot name {{{name}}}")
            if name in defined:
                raise GrammarError(source, n, f"slot {{{name}}} is already defined on line {defined[name]}")
            slots[name] = _Parser(m.group(2), source, n, "{}").parse()
            defined[name] = n
            continue
        if "=" in line:
            raise GrammarError(source, n, "'=' only defines a slot: {name} = a | b")
        body, arrow, action = line.partition("->")
        action = action.strip()
        if arrow and not re.fullmatch(r"[A-Za-z_][\w.-]*", action):
            raise GrammarError(source, n, f"bad action name {action!r} after '->'")
        commands.append(Command(_Parser(body, source, n, "{}").parse(), action or None, n, body.strip()))
    if not commands:
        raise GrammarError(source, 1, "no commands in the grammar")
    g = Grammar(commands, slots, source)
    for c in g.commands:
        g._resolve(c.tree)
    for name, line in defined.items():
        g._resolve(Slot(name, line))
    return g


def _strip_jsgf_comments(text: str) -> str:
    """Comments blanked out, newlines kept (so line numbers stay right)."""
    out = re.sub(r"/\*.*?\*/", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", out)


def _parse_jsgf(text: str, source: str) -> Grammar:
    body = _strip_jsgf_comments(text)
    statements: list[tuple[int, str]] = []  # (line where it starts, text)
    start = 0
    for k, ch in enumerate(body):
        if ch == ";":
            stmt = body[start:k]
            first = start + len(stmt) - len(stmt.lstrip())
            statements.append((body.count("\n", 0, first) + 1, stmt.strip()))
            start = k + 1
    if body[start:].strip():
        first = start + len(body[start:]) - len(body[start:].lstrip())
        raise GrammarError(source, body.count("\n", 0, first) + 1, "statement not ended by ';'")
    if not statements or not statements[0][1].startswith("#JSGF"):
        raise GrammarError(source, 1, "a JSGF grammar starts with '#JSGF V1.0;'")
    rules: dict[str, tuple[Node, bool, int]] = {}
    order: list[str] = []
    for n, stmt in statements[1:]:
        if re.fullmatch(r"grammar\s+[\w.]+", stmt) or stmt.startswith("import "):
            if stmt.startswith("import "):
                raise GrammarError(source, n, "import is not supported")
            continue
        m = re.fullmatch(r"(public\s+)?<([^<>]+)>\s*=(.*)", stmt, flags=re.S)
        if not m:
            raise GrammarError(source, n, f"expected '[public] <rule> = ...;', got {stmt[:40]!r}")
        name = m.group(2).strip()
        if name in rules:
            raise GrammarError(source, n, f"rule <{name}> is already defined on line {rules[name][2]}")
        expr = m.group(3)
        if "/" in expr:
            raise GrammarError(source, n, "weights /w/ are not supported")
        # a rule spanning lines: errors name its first line
        rules[name] = (_Parser(expr, source, n, "<>").parse(), bool(m.group(1)), n)
        order.append(name)
    slots = dict(builtins())
    slots.update({name: tree for name, (tree, _, _) in rules.items()})
    commands = [Command(Slot(name, line), name, line, name) for name in order
                for tree, public, line in [rules[name]] if public]
    if not commands:
        raise GrammarError(source, 1, "no public rule in the grammar")
    # a command's own rule is not a slot of itself: use its tree directly
    commands = [Command(rules[c.action][0], c.action, c.line, c.text) for c in commands]
    g = Grammar(commands, slots, source)
    for name in order:
        g._resolve(Slot(name, rules[name][2]))
    return g
