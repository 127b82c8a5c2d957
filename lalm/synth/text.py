"""Templated English sentences for lalm-synth: numbers, dates, times, commands, names.

Numbers, dates and times are written out in words, exactly as they are spoken, so the
transcript is the exact target with no normalisation question. `split_of(text)` assigns every
sentence to one split by a stable hash, and generators draw until they hit the wanted split:
train, valid and test sentences are disjoint.
"""

from __future__ import annotations

import hashlib

import numpy as np

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL_ENDINGS = {"one": "first", "two": "second", "three": "third", "five": "fifth",
                    "eight": "eighth", "nine": "ninth", "twelve": "twelfth"}

WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
MONTHS = ("January February March April May June July August September October November "
          "December").split()
FIRST_NAMES = ("Alice Bruno Clara David Emma Felix Grace Henry Irene James Laura Martin Nina "
               "Oscar Paula Quentin Rosa Samuel Teresa Victor").split()
LAST_NAMES = ("Adams Baker Carter Dixon Evans Fisher Garcia Hughes Irving Jensen Keller Lopez "
              "Morgan Novak Owens Parker").split()
THINGS = "apples boxes chairs birds books bottles coins letters trees cars".split()
PLACES = "kitchen garden garage office hallway basement classroom market".split()
DEVICES = "lights heater fan radio television oven music alarm".split()
ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "office", "hallway")
VERBS = ("Turn on", "Turn off", "Please switch on", "Please switch off", "Check")
OBJECTS = "invoice package meeting contract delivery appointment report tickets".split()


def number_words(n: int) -> str:
    """English words for 0 <= n < 10000 ("four hundred and two")."""
    if not 0 <= n < 10000:
        raise ValueError(f"number {n} out of range")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else f" and {number_words(rest)}")
    rest = n % 1000
    joiner = " and " if 0 < rest < 100 else " "
    head = f"{number_words(n // 1000)} thousand"
    return head if rest == 0 else head + joiner + number_words(rest)


def ordinal_words(n: int) -> str:
    """English ordinal words for 1 <= n < 100 ("twenty-first")."""
    words = number_words(n)
    head, _, last = words.rpartition("-")
    if last in _ORDINAL_ENDINGS:
        last = _ORDINAL_ENDINGS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head}-{last}" if head else last


def time_words(hour: int, minute: int) -> str:
    """A 12-hour clock time in words ("seven o'clock", "ten fifteen", "six oh five")."""
    h = number_words(hour)
    if minute == 0:
        return f"{h} o'clock"
    return f"{h} oh {_ONES[minute]}" if minute < 10 else f"{h} {number_words(minute)}"


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return str(options[int(rng.integers(len(options)))])


def numbers_sentence(rng: np.random.Generator) -> str:
    n = int(rng.integers(2, 2000))
    return f"I counted {number_words(n)} {_pick(rng, THINGS)} in the {_pick(rng, PLACES)}."


def date_sentence(rng: np.random.Generator) -> str:
    return (f"The meeting is on {_pick(rng, WEEKDAYS)}, {_pick(rng, MONTHS)} "
            f"{ordinal_words(int(rng.integers(1, 29)))}.")


def time_sentence(rng: np.random.Generator) -> str:
    minute = int(rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50]))
    return f"The train leaves at {time_words(int(rng.integers(1, 13)), minute)}."


def command_sentence(rng: np.random.Generator) -> str:
    return f"{_pick(rng, VERBS)} the {_pick(rng, DEVICES)} in the {_pick(rng, ROOMS)}."


def name_sentence(rng: np.random.Generator) -> str:
    return (f"{_pick(rng, FIRST_NAMES)} {_pick(rng, LAST_NAMES)} called about the "
            f"{_pick(rng, OBJECTS)}.")


#: Template families: name -> generator. The family is recorded in item metadata.
TEMPLATES = {"numbers": numbers_sentence, "dates": date_sentence, "times": time_sentence,
             "commands": command_sentence, "names": name_sentence}


def split_of(key: str) -> str:
    """The split a text belongs to, from a stable hash: 80% train, 10% valid, 10% test."""
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:4], "big") % 10
    return "test" if bucket == 0 else "valid" if bucket == 1 else "train"


def english_sentence(rng: np.random.Generator, split: str) -> tuple[str, str]:
    """Draw a templated sentence whose `split_of` is `split`; returns (template family, text)."""
    while True:
        family = _pick(rng, list(TEMPLATES))
        text = TEMPLATES[family](rng)
        if split_of(text) == split:
            return family, text
