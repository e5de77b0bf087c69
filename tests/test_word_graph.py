"""A grammar as a word graph: the phrases it accepts are exactly the grammar's."""

from speech_transformer.commands.grammar import Grammar
from speech_transformer.commands.word_graph import epsilon_closure


def accepts(graph, words) -> bool:
    states = graph.closure({0})
    for w in words:
        states = graph.closure({t for s in states for word, t in graph.words[s] if word == w})
    return bool(states & graph.final)


def test_word_graph_accepts_the_grammars_phrases_and_nothing_else():
    g = Grammar.parse_text("{app} = mail | web browser\nopen {app} [please]\nvolume (up | down) -> volume\n")
    graph = g.automaton()
    for phrase in g.expand():
        assert accepts(graph, phrase.words), phrase.words
    for wrong in (["OPEN"], ["OPEN", "WEB"], ["VOLUME"], ["PLEASE"], ["OPEN", "MAIL", "PLEASE", "PLEASE"]):
        assert not accepts(graph, wrong), wrong
    dial = Grammar.parse_text("dial {digit}+\n").automaton()  # repeats unrolled up to MAX_REPEAT
    assert accepts(dial, ["DIAL", "FOUR", "OH", "TWO"]) and accepts(dial, ["DIAL"] + ["NINE"] * 16)
    assert not accepts(dial, ["DIAL"]) and not accepts(dial, ["DIAL"] + ["NINE"] * 17)


def test_epsilon_closure_follows_chains():
    assert epsilon_closure([[1], [2], [], [0]], {0}) == frozenset({0, 1, 2})
