"""Grammar parsing: the line format, the JSGF subset, expansion counts, parsing back, and errors by line."""

from __future__ import annotations

import pytest

from speech_transformer.commands.grammar import MAX_REPEAT, Grammar, GrammarError


def phrases(g: Grammar) -> set[str]:
    return {" ".join(p.words) for p in g.expand()}


def test_alternatives_optionals_and_actions():
    g = Grammar.parse_text("volume (up | down) [please] -> volume\n(the)? end\n")
    assert g.count() == 6
    assert phrases(g) == {"VOLUME UP", "VOLUME DOWN", "VOLUME UP PLEASE", "VOLUME DOWN PLEASE", "THE END", "END"}
    assert [c.action for c in g.commands] == ["volume", None]
    assert g.parse("VOLUME DOWN PLEASE".split()).command == 0
    assert g.parse("VOLUME SIDEWAYS".split()) is None


def test_slots_return_their_written_values():
    g = Grammar.parse_text("# apps\n{app} = browser | (text)? editor  # two\nopen {app} -> open\n")
    assert g.count() == 3
    p = g.parse(["OPEN", "TEXT", "EDITOR"])
    assert p.slots == {"app": "text editor"}
    assert {tuple(p.words): p.slots["app"] for p in g.expand()} == {
        ("OPEN", "BROWSER"): "browser", ("OPEN", "EDITOR"): "editor", ("OPEN", "TEXT", "EDITOR"): "text editor"}


def test_builtin_number_digit_digits_letter():
    g = Grammar.parse_text("type {number}\ndial {digits}\npress {digit}\nspell {letter}+\n")
    counts = {c.text: Grammar([c], g.slots).count() for c in g.commands}
    assert counts["type {number}"] == 100
    assert counts["press {digit}"] == 11  # ZERO..NINE and OH
    assert counts["dial {digits}"] == sum(11 ** k for k in range(1, MAX_REPEAT + 1))
    assert counts["spell {letter}+"] == sum(26 ** k for k in range(1, MAX_REPEAT + 1))
    assert g.parse("TYPE NINETY NINE".split()).slots == {"number": "99"}
    assert g.parse("TYPE ZERO".split()).slots == {"number": "0"}
    assert g.parse("DIAL FOUR OH SEVEN".split()).slots == {"digits": "407"}
    assert g.parse("SPELL A B".split()).slots == {"letter": "A", "letter_2": "B"}
    assert g.parse("TYPE ONE HUNDRED".split()) is None


def test_words_are_normalised_like_transcripts():
    g = Grammar.parse_text("Open Window 2\n")
    assert phrases(g) == {"OPEN WINDOW TWO"}


def test_the_shipped_grammars():
    desktop, digits = Grammar.load("desktop"), Grammar.load("digits")
    assert desktop.count() == len(desktop.expand()) == 246
    assert digits.count() == 11 and phrases(digits) >= {"ZERO", "OH", "NINE"}
    p = desktop.parse("OPEN THE TEXT EDITOR".split())
    assert desktop.commands[p.command].action == "open" and p.slots == {"app": "text editor"}
    assert desktop.parse("TYPE FORTY TWO".split()).slots == {"number": "42"}


JSGF = """#JSGF V1.0;
grammar desk;
/* a block
   comment */
public <open> = (open | start) [the]
                <app>;                       // spans two lines
<app> = browser | mail | <NULL> editor;
public <spell> = spell <letter>+;
public <dial> = dial <digit>* now;
"""


def test_jsgf_subset():
    g = Grammar.parse_text(JSGF, "desk.jsgf")
    assert [c.action for c in g.commands] == ["open", "spell", "dial"]
    assert Grammar([g.commands[0]], g.slots).count() == 12
    assert g.parse("START THE EDITOR".split()).slots == {"app": "editor"}
    assert g.parse("SPELL X Y Z".split()).slots == {"letter": "X", "letter_2": "Y", "letter_3": "Z"}
    assert g.parse("DIAL NOW".split()).command == 2
    assert g.parse("DIAL ONE TWO NOW".split()).slots == {"digit": "1", "digit_2": "2"}
    assert g.parse("SPELL".split()) is None


def test_to_jsgf_reads_back_the_same_phrases_and_pocketsphinx_accepts_it():
    desktop = Grammar.load("desktop")
    text = desktop.to_jsgf()
    assert phrases(Grammar.parse_text(text)) == phrases(desktop)
    from pocketsphinx import Decoder

    d = Decoder(samprate=16000, loglevel="FATAL")
    d.add_word("unmute", "AH N M Y UW T")
    d.add_jsgf_string("desktop", text)  # raises ValueError if PocketSphinx cannot parse it


def test_expansion_limit():
    g = Grammar.parse_text("spell {letter}+\n")
    with pytest.raises(ValueError, match="more than 1000"):
        g.expand(limit=1000)


@pytest.mark.parametrize("text, line, message", [
    ("open {app}\n", 1, "slot 'app' is not defined"),
    ("# fine\n{app} = a | b\n\n(open | close {app}\n", 4, "not closed"),
    ("volume (up | ) \n", 1, "empty alternative"),
    ("go -> 3x\n", 1, "bad action name"),
    ("open <app>\n", 1, "belong in JSGF"),
    ("{a} = x | {a}\nsay {a}\n", 1, "refers to itself"),
    ("{a} = x\n{a} = y\nsay {a}\n", 2, "already defined on line 1"),
    ("say ~~~\n", 1, "not a word"),
    ("x = y\n", 1, "'=' only defines a slot"),
    ("# nothing\n", 1, "no commands"),
])
def test_errors_name_the_file_and_line(text, line, message):
    with pytest.raises(GrammarError, match=message) as e:
        Grammar.parse_text(text, "bad.txt")
    assert str(e.value).startswith(f"bad.txt:{line}: ")


@pytest.mark.parametrize("text, line, message", [
    ("#JSGF V1.0;\ngrammar g;\npublic <a> = b\n  | c;\npublic <d> = e", 5, "not ended by ';'"),
    ("#JSGF V1.0;\ngrammar g;\n\npublic <a> = go {tag};\n", 4, "tags"),
    ("#JSGF V1.0;\ngrammar g;\n<a> = b;\n", 1, "no public rule"),
    ("#JSGF V1.0;\ngrammar g;\npublic <a> = b /5/;\n", 3, "weights"),
    ("#JSGF V1.0;\ngrammar g;\n// c\npublic <a> = (b;\n", 4, "not closed"),
    ("#JSGF V1.0;\ngrammar g;\npublic <a> = <b>;\n", 3, "'b' is not defined"),
])
def test_jsgf_errors_name_the_line(text, line, message):
    with pytest.raises(GrammarError, match=message) as e:
        Grammar.parse_text(text, "g.jsgf")
    assert str(e.value).startswith(f"g.jsgf:{line}: ")


def test_a_grammar_file_error_names_the_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("open {app}\n{app} = browser | mail\nclose (the {app}\n")
    with pytest.raises(GrammarError) as e:
        Grammar.load(path)
    assert str(e.value).startswith(f"{path}:3: ")
    with pytest.raises(GrammarError, match="cannot read"):
        Grammar.load(tmp_path / "missing.txt")
