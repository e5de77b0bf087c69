"""Training-target text normalisation, LibriSpeech style.

Targets use only upper-case letters A-Z, the apostrophe and single spaces. Sources such as LJSpeech
and ARCTIC are mixed case with punctuation and digits; `normalize_transcript` maps them onto the
same alphabet, spelling numbers out the way a reader says them.
"""

from __future__ import annotations

import re
import unicodedata

DIGIT_WORDS = tuple("ZERO ONE TWO THREE FOUR FIVE SIX SEVEN EIGHT NINE".split())
_ONES = DIGIT_WORDS + tuple("TEN ELEVEN TWELVE THIRTEEN FOURTEEN FIFTEEN SIXTEEN SEVENTEEN EIGHTEEN NINETEEN".split())
_TENS = "_ _ TWENTY THIRTY FORTY FIFTY SIXTY SEVENTY EIGHTY NINETY".split()
_SCALES = [(10**12, "TRILLION"), (10**9, "BILLION"), (10**6, "MILLION"), (1000, "THOUSAND")]
_ORDINAL_EXCEPTIONS = {"ONE": "FIRST", "TWO": "SECOND", "THREE": "THIRD", "FIVE": "FIFTH", "EIGHT": "EIGHTH",
                       "NINE": "NINTH", "TWELVE": "TWELFTH"}
SYMBOL_WORDS = {"&": "AND", "%": "PERCENT", "+": "PLUS", "@": "AT", "=": "EQUALS"}
_CURRENCY = {"$": ("DOLLAR", "DOLLARS", "CENT", "CENTS"), "£": ("POUND", "POUNDS", "PENNY", "PENCE"),
             "€": ("EURO", "EUROS", "CENT", "CENTS")}


def number_to_words(n: int) -> str:
    """Cardinal words: 1905 -> 'ONE THOUSAND NINE HUNDRED FIVE'."""
    if n < 0:
        return "MINUS " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (" " + _ONES[ones] if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return _ONES[hundreds] + " HUNDRED" + (" " + number_to_words(rest) if rest else "")
    for scale, word in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return number_to_words(high) + " " + word + (" " + number_to_words(rest) if rest else "")
    raise AssertionError("unreachable")


def year_to_words(n: int) -> str:
    """How years are read: 1984 -> 'NINETEEN EIGHTY FOUR', 1900 -> 'NINETEEN HUNDRED', 2005 -> 'TWO THOUSAND FIVE'."""
    high, low = divmod(n, 100)
    if 2000 <= n < 2010 or low == 0 and n % 1000 == 0:
        return number_to_words(n)
    if low == 0:
        return number_to_words(high) + " HUNDRED"
    return number_to_words(high) + (" OH " + _ONES[low] if low < 10 else " " + number_to_words(low))


def ordinal_to_words(n: int) -> str:
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_EXCEPTIONS:
        words[-1] = _ORDINAL_EXCEPTIONS[last]
    elif last.endswith("Y"):
        words[-1] = last[:-1] + "IETH"
    else:
        words[-1] = last + "TH"
    return " ".join(words)


def _money(m: re.Match) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m.group(1)]
    whole = int(m.group(2).replace(",", ""))
    cents = int((m.group(3) or "0").ljust(2, "0")[:2])
    parts = [number_to_words(whole) + " " + (one if whole == 1 else many)] if whole or not cents else []
    if cents:
        parts.append(number_to_words(cents) + " " + (sub_one if cents == 1 else sub_many))
    return " " + " AND ".join(parts) + " "


def _number(m: re.Match) -> str:
    digits, suffix = m.group(1), (m.group(2) or "").lower()
    if suffix in ("st", "nd", "rd", "th"):
        return " " + ordinal_to_words(int(digits.replace(",", ""))) + " "
    if "." in digits:
        whole, frac = digits.replace(",", "").split(".")
        return f" {number_to_words(int(whole or 0))} POINT {' '.join(_ONES[int(d)] for d in frac)} "
    if "," not in digits and len(digits) == 4 and 1100 <= int(digits) <= 2099:
        return " " + year_to_words(int(digits)) + " "
    if digits.startswith("0") and len(digits) > 1:  # codes and phone numbers: digit by digit
        return " " + " ".join(_ONES[int(d)] for d in digits) + " "
    return " " + number_to_words(int(digits.replace(",", ""))) + " "


def spell_numbers(text: str) -> str:
    """Replace currency amounts, ordinals, decimals, years and plain integers with words."""
    text = re.sub(r"([$£€])\s?(\d[\d,]*)(?:\.(\d+))?", _money, text)
    return re.sub(r"(\d[\d,]*(?:\.\d+)?)(st|nd|rd|th|ST|ND|RD|TH)?\b", _number, text)


def spell_out(text: str, symbols: str = "".join(SYMBOL_WORDS)) -> str:
    """The steps both normalisers take first (this one and scoring's `english-v1`): accents dropped, curly
    quotes and backticks made `'`, numbers and the `symbols` (of SYMBOL_WORDS) spelled out in upper-case words."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = re.sub("[\u2018\u2019\u02bc`]", "'", text)
    text = spell_numbers(text)
    for symbol in symbols:
        text = text.replace(symbol, f" {SYMBOL_WORDS[symbol]} ")
    return text


def normalize_transcript(text: str) -> str:
    """Any English sentence -> LibriSpeech-style target: 'Mr. Smith's 2nd car!' -> "MR SMITH'S SECOND CAR"."""
    text = spell_out(text).upper()
    text = re.sub(r"[^A-Z' ]+", " ", text)
    text = re.sub(r"(?<![A-Z])'|'(?![A-Z])", " ", text)  # quotes, not apostrophes inside words
    return " ".join(text.split())


def whisper_style(text: str) -> str:
    """A transcript as Whisper writes one, for a decoder over Whisper's vocabulary: a leading space, and an
    all-upper-case transcript (LibriSpeech's, a grammar's words) in sentence case with a full stop:
    "TURN ON THE LIGHT" -> " Turn on the light." Mixed-case text keeps its case and punctuation."""
    text = " ".join(text.split())
    if text.isupper():
        text = text[:1] + text[1:].lower()
        text = text if text[-1:] in ".?!" else text + "."
    return " " + text
