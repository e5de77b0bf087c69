"""A grammar as a word graph: words on arcs, epsilon arcs between states; what a constrained search walks when
a grammar has too many phrases to list."""

from __future__ import annotations

from dataclasses import dataclass, field

from speech_transformer.commands.phrase_tree import Alt, Node, Repeat, Slot, Value, Word


@dataclass
class WordGraph:
    """Words on arcs, epsilon arcs between states; phrases run from state 0 to a state in `final`."""

    words: list[list[tuple[str, int]]] = field(default_factory=list)
    eps: list[list[int]] = field(default_factory=list)
    final: set[int] = field(default_factory=set)

    def new(self) -> int:
        self.words.append([])
        self.eps.append([])
        return len(self.words) - 1

    def closure(self, states) -> frozenset[int]:
        return epsilon_closure(self.eps, states)


def epsilon_closure(eps: list[list[int]], states) -> frozenset[int]:
    """`states` and every state reachable from them over epsilon arcs (`eps[s]`: the targets of state s)."""
    out, todo = set(states), list(states)
    while todo:
        for t in eps[todo.pop()]:
            if t not in out:
                out.add(t)
                todo.append(t)
    return frozenset(out)


def word_graph(trees: list[Node], slots: dict[str, Node]) -> WordGraph:
    """Phrase trees as one word graph: every tree from state 0 to a final state (repeats unrolled)."""
    g = WordGraph()
    start = g.new()
    for tree in trees:
        g.final.add(_build(g, tree, start, slots))
    return g


def _build(g: WordGraph, node: Node, s: int, slots: dict[str, Node]) -> int:
    if isinstance(node, Word):
        t = g.new()
        g.words[s].append((node.text, t))
        return t
    if isinstance(node, Value):
        return _build(g, node.item, s, slots)
    if isinstance(node, Slot):
        return _build(g, slots[node.name], s, slots)
    if isinstance(node, Alt):
        end = g.new()
        for o in node.options:
            g.eps[_build(g, o, s, slots)].append(end)
        return end
    if isinstance(node, Repeat):
        end = g.new()
        if node.low == 0:
            g.eps[s].append(end)
        for r in range(1, node.high + 1):
            s = _build(g, node.item, s, slots)
            if r >= node.low:
                g.eps[s].append(end)
        return end
    for item in node.items:
        s = _build(g, item, s, slots)
    return s
