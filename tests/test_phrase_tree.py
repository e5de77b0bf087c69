"""Phrase trees: the built-in slots and how repeated slot names are kept apart."""

from speech_transformer.commands.phrase_tree import Repeat, Value, builtins, merge_slots, put_slot


def test_builtin_slots_say_numbers_as_words():
    b = builtins()
    numbers = {o.value: o.item for o in b["number"].options}
    assert len(numbers) == 100 and [w.text for w in numbers["42"].items] == ["FORTY", "TWO"]
    assert numbers["7"].text == "SEVEN" and numbers["13"].text == "THIRTEEN"
    digits = [(o.value, o.item.text) for o in b["digit"].options]
    assert digits[0] == ("0", "ZERO") and digits[-1] == ("0", "OH") and len(digits) == 11
    assert isinstance(b["digits"], Repeat) and b["digits"].sep == "" and isinstance(b["letter"].options[0], Value)


def test_a_slot_name_twice_gets_a_number():
    assert put_slot({"app": "mail"}, "app", "web") == {"app": "mail", "app_2": "web"}
    assert merge_slots({"n": "1"}, {"n": "2", "m": "3"}) == {"n": "1", "n_2": "2", "m": "3"}
