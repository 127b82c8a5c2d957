"""VoiceBench ``bbh``: the official answer-extraction rules of ``evaluator/bbh.py``, as data.

The official evaluator lowercases the response, drops ``<1>``-style prefixes, ``<|user|>`` and
``<|turn_end|>``, turns ``: ** " - , . ：`` into spaces and collapses whitespace, then runs the
hand-written rules of the item's subtask (``sports_understanding``, ``hyperbaton``,
``navigate``, ``web_of_lies``, read from the item ``id``) in order; the first that matches gives
the answer (0/1). ``("yes_no", ...)`` runs the shared yes/no rules first. A response no rule
reads gets a random answer officially (unseeded; lalm draws from ``random.Random(0)`` in data
order) and counts wrong in strict mode. References map ``yes``/``(b)`` to 1, ``no``/``(a)`` to 0.
The rules keep the official quirks (e.g. hyperbaton answers ``"b"`` alone as 0).
"""

from __future__ import annotations

import random
import re
from typing import Any

from lalm.errors import ScoringError
from lalm.eval.metrics import check_pairs

BBH_VERSION = "voicebench-bbh-v1"
_TRUTH = {"yes": 1, "no": 0, "(a)": 0, "(b)": 1}
_SUBTASKS = ("sports_understanding", "hyperbaton", "navigate", "web_of_lies")


def normalize_bbh(response: str) -> str:
    """The official ``normalize`` of a response before the rules run."""
    text = response.lower()
    if text.endswith("<|user|>"):
        text = text[:-8].strip()
    if text.startswith(("<1>", "<2>", "<3>")):
        text = text[3:].strip()
    text = text.replace("<|turn_end|>", "")
    for mark in (":", "**", '"', "-", ",", ".", "："):
        text = text.replace(mark, " ")
    return " ".join(text.split())


def _matches(op: str, pattern: str, text: str) -> bool:
    if op == "in":
        return pattern in text
    if op == "eq":
        return text == pattern
    if op == "start":
        return text.startswith(pattern)
    if op == "end":
        return text.endswith(pattern)
    return re.search(pattern, text) is not None


def _run(rules: str, text: str) -> int | None:
    for op, pattern, value in RULES[rules]:
        if op == "yes_no":
            answer = _run("yes_no", text)
            if answer is not None:
                return answer
        elif _matches(op, pattern, text):
            return value
    return None


def extract_bbh_answer(response: str, item_id: str) -> int | None:
    """The answer (0/1) the official rules read, or None where the official evaluator guesses.

    Raises:
        ScoringError: an id naming none of the four subtasks (the official evaluator raises).
    """
    subtask = next((s for s in _SUBTASKS if s in item_id), None)
    if subtask is None:
        raise ScoringError(f"VoiceBench bbh item {item_id!r}: id names none of {_SUBTASKS}")
    return _run(subtask, normalize_bbh(response))


def score_bbh(records: list[dict[str, Any]], strict: bool) -> dict[str, Any]:
    """Accuracy by the official rules, its random fallback (seeded) and the strict number.

    Raises:
        ScoringError: a reference that is not yes/no/(A)/(B), or an unknown subtask.
    """
    check_pairs(records, records, BBH_VERSION)  # nothing to score is an error
    rng = random.Random(0)
    right = {"official": 0, "strict": 0}
    guessed = 0
    for r in records:
        truth = _TRUTH.get(str(r["reference"]).lower())
        if truth is None:
            raise ScoringError(f"VoiceBench bbh item {r['id']}: reference {r['reference']!r} "
                               f"is not yes/no/(A)/(B)")
        answer = extract_bbh_answer(str(r["response"]), str(r["id"]))
        if answer is None:
            guessed += 1
            right["official"] += rng.choice([0, 1]) == truth
            continue
        right["official"] += answer == truth
        right["strict"] += answer == truth
    n = len(records)
    both = {m: c / n for m, c in right.items()}
    return {"version": BBH_VERSION, "accuracy": both["strict" if strict else "official"],
            "official_accuracy": both["official"], "strict_accuracy": both["strict"],
            "guessed": guessed, "count": n, "random_seed": 0}


#: The official rules per subtask, in order: (op, pattern, answer); op is ``in`` (substring),
#: ``eq``, ``start``, ``end``, ``re`` (``re.search``) or ``yes_no`` (the shared rules first).
RULES: dict[str, tuple[tuple[str, str, Any], ...]] = {
    'hyperbaton': (
        ('eq', 'a', 0),
        ('eq', 'b', 0),
        ('in', 'the answer is (a)', 0),
        ('in', 'the answer is (b)', 1),
        ('in', 'the correct adjective order is option (a)', 0),
        ('in', 'the correct adjective order is option (b)', 1),
        ('in', 'the correct grammatical order is a', 0),
        ('in', 'the correct grammatical order is b', 1),
        ('in', 'the correct sentence is option (a)', 0),
        ('in', 'the correct sentence is option (b)', 1),
        ('in', 'the sentence with the correct adjectives is a', 0),
        ('in', 'the sentence with the correct adjectives is b', 1),
        ('in', 'correct adjective order options is a', 0),
        ('in', 'correct adjective order options is b', 1),
        ('in', 'the correct answer is (a)', 0),
        ('in', 'the correct answer is (b)', 1),
        ('in', 'the correct option is (a)', 0),
        ('in', 'the correct option is (b)', 1),
        ('in', 'the correct order of adjectives in the sentence is option a', 0),
        ('in', 'the correct order of adjectives in the sentence is option b', 1),
        ('in', 'the correct sentence would be option (a)', 0),
        ('in', 'the correct sentence would be option (b)', 1),
        ('in', 'the correct sentence is (a)', 0),
        ('in', 'the correct sentence is (b)', 1),
        ('in', 'the proper adjective order is a', 0),
        ('in', 'the proper adjective order is b', 1),
        ('in', 'the correct adjective order is (a)', 0),
        ('in', 'the correct adjective order is (b)', 1),
        ('in', 'correct adjective order is a', 0),
        ('in', 'correct adjective order is b', 1),
        ('in', 'the adjectives in option a are in the correct order', 0),
        ('in', 'the adjectives in option b are in the correct order', 1),
        ('in', 'the right adjective order is a)', 0),
        ('in', 'the right adjective order is b)', 1),
        ('in', 'the correct adjectivs is (a)', 0),
        ('in', 'the correct adjectivs is (b)', 1),
        ('in', 'the right adjective order is (a)', 0),
        ('in', 'the right adjective order is (b)', 1),
        ('in', 'correct adjectival order is a', 0),
        ('in', 'correct adjectival order is b', 1),
        ('in', 'the proper adjective order is (a)', 0),
        ('in', 'the proper adjective order is (b)', 1),
        ('in', 'the correct sentence order is a', 0),
        ('in', 'the correct sentence order is b', 1),
        ('in', 'option a correctly follows the standard adjective order', 0),
        ('in', 'option b correctly follows the standard adjective order', 1),
        ('in', 'the answer directly is a', 0),
        ('in', 'the answer directly is b', 1),
        ('in', 'the correct order would be option a', 0),
        ('in', 'the correct order would be option b', 1),
        ('in', 'final answer should be a', 0),
        ('in', 'final answer should be b', 1),
        ('in', 'final answer a', 0),
        ('in', 'final answer b', 1),
        ('in', 'option (a) uses the correct adjective sequence', 0),
        ('in', 'option (b) uses the correct adjective sequence', 1),
        ('in', 'the correct option is option a', 0),
        ('in', 'the correct option is option b', 1),
        ('in', 'the answer is without any modification a', 0),
        ('in', 'the answer is without any modification b', 1),
        ('in', 'the correct one is option a', 0),
        ('in', 'the correct one is option b', 1),
        ('in', 'answer is without any modification a', 0),
        ('in', 'answer is without any modification b', 1),
        ('in', 'the answer is without any modification option a', 0),
        ('in', 'the answer is without any modification option b', 1),
        ('in', 'answer is a', 0),
        ('in', 'answer is b', 1),
        ('in', 'the answer is [a]', 0),
        ('in', 'the answer is [b]', 1),
        ('in', 'option a follows the correct adjective order', 0),
        ('in', 'option b follows the correct adjective order', 1),
        ('in', 'the correct order of adjectives is a', 0),
        ('in', 'the correct order of adjectives is b', 1),
        ('in', 'option (a) is the correct answer', 0),
        ('in', 'option (b) is the correct answer', 1),
        ('in', 'the correct order is a', 0),
        ('in', 'the correct order is b', 1),
        ('in', 'the correct object order is a', 0),
        ('in', 'the correct object order is b', 1),
        ('in', 'the correct answer order is a', 0),
        ('in', 'the correct answer order is b', 1),
        ('in', 'the final answer without any modification is a', 0),
        ('in', 'the final answer without any modification is b', 1),
        ('in', 'the correct sentence is a', 0),
        ('in', 'the correct sentence is b', 1),
        ('in', 'correct adjective order option is a', 0),
        ('in', 'correct adjective order option is b', 1),
        ('in', 'correct adjective order is sentence a', 0),
        ('in', 'correct adjective order is sentence b', 1),
        ('in', 'correct objective order option is a', 0),
        ('in', 'correct objective order option is b', 1),
        ('in', 'the answer is is a', 0),
        ('in', 'the answer is is b', 1),
        ('in', 'the correct adjective order is option a', 0),
        ('in', 'the correct adjective order is option b', 1),
        ('in', 'the correct adjective order is provided in option a', 0),
        ('in', 'the correct adjective order is provided in option b', 1),
        ('in', 'option a is more accurate', 0),
        ('in', 'option b is more accurate', 1),
        ('in', 'answer is option a', 0),
        ('in', 'answer is option b', 1),
        ('in', 'option a has the adjectives in the correct order', 0),
        ('in', 'option b has the adjectives in the correct order', 1),
        ('in', 'option a is closer to being correct', 0),
        ('in', 'option b is closer to being correct', 1),
        ('in', 'the most logical order is option a', 0),
        ('in', 'the most logical order is option b', 1),
        ('in', 'in option a the adjectives are in the correct order', 0),
        ('in', 'in option b the adjectives are in the correct order', 1),
        ('in', 'sentence a is the closest to the correct adjective order', 0),
        ('in', 'sentence b is the closest to the correct adjective order', 1),
        ('in', 'option a has the correct order', 0),
        ('in', 'option b has the correct order', 1),
        ('in', 'sentence a has a more logical', 0),
        ('in', 'sentence b has a more logical', 1),
        ('in', 'the closest correct order is option a', 0),
        ('in', 'the closest correct order is option b', 1),
        ('in', 'sentence a has the correct adjective order', 0),
        ('in', 'sentence b has the correct adjective order', 1),
        ('in', 'option a is the closest to the typical order', 0),
        ('in', 'option b is the closest to the typical order', 1),
        ('in', 'the correct answer would be option a', 0),
        ('in', 'the correct answer would be option b', 1),
        ('in', 'the correct option is a', 0),
        ('in', 'the correct option is b', 1),
        ('in', 'option a has a better adjective order', 0),
        ('in', 'option b has a better adjective order', 1),
        ('in', 'option a has the correct adjective order', 0),
        ('in', 'option b has the correct adjective order', 1),
        ('in', 'option a seems to follow the typical order', 0),
        ('in', 'option b seems to follow the typical order', 1),
        ('in', 'the correct order is found in option a', 0),
        ('in', 'the correct order is found in option b', 1),
        ('in', 'the correct adjective order is in the first option', 0),
        ('in', 'the correct adjective order is in the second option', 1),
        ('in', 'the correct adverb order would be a', 0),
        ('in', 'the correct adverb order would be b', 1),
        ('in', 'the correct answer would be the a', 0),
        ('in', 'the correct answer would be the b', 1),
        ('in', 'the correct adjective order is in option a', 0),
        ('in', 'the correct adjective order is in option b', 1),
        ('in', 'the correct adjective order is in sentence a', 0),
        ('in', 'the correct adjective order is in sentence b', 1),
        ('in', 'the adjectives are in the correct order for a', 0),
        ('in', 'the adjectives are in the correct order for b', 1),
        ('in', 'the answer is [option a]', 0),
        ('in', 'the answer is [option b]', 1),
        ('in', 'option (a) has a correct adjective order', 0),
        ('in', 'option (b) has a correct adjective order', 1),
        ('in', 'the correct sentence would be a', 0),
        ('in', 'the correct sentence would be b', 1),
        ('in', 'option a follows the correct sequence of adjectives', 0),
        ('in', 'option b follows the correct sequence of adjectives', 1),
        ('in', 'option a would be closer to the correct order', 0),
        ('in', 'option b would be closer to the correct order', 1),
        ('in', 'the correct sentence with the adjective order is a', 0),
        ('in', 'the correct sentence with the adjective order is b', 1),
        ('in', 'option a is more grammatically correct', 0),
        ('in', 'option b is more grammatically correct', 1),
        ('in', 'option a would be more correct', 0),
        ('in', 'option b would be more correct', 1),
        ('in', 'option a is incorrect and option b is correct', 1),
        ('in', 'option a is the closest match', 0),
        ('in', 'option b is the closest match', 1),
        ('in', 'option b follows the typical order of adjectives', 1),
        ('in', 'the correct sentence with the adjective order is option a', 0),
        ('in', 'the correct sentence with the adjective order is option b', 1),
        ('in', 'the correct sentence is option a', 0),
        ('in', 'the correct sentence is option b', 1),
        ('in', 'the correct objective order is in option a', 0),
        ('in', 'the correct objective order is in option b', 1),
        ('in', 'the answer is option (a)', 0),
        ('in', 'the answer is option (b)', 1),
        ('in', 'the correct option would be (a)', 0),
        ('in', 'the correct option would be (b)', 1),
        ('in', 'the correct order is in option a', 0),
        ('in', 'the correct order is in option b', 1),
        ('in', 'the correct adjective order is found in option a', 0),
        ('in', 'the correct adjective order is found in option b', 1),
        ('in', 'option (a) follows the typical order of adjectives', 0),
        ('in', 'option (b) follows the typical order of adjectives', 1),
        ('in', 'option (a) has the correct adjective order', 0),
        ('in', 'option (b) has the correct adjective order', 1),
        ('in', 'option (a) follows the general adjective order', 0),
        ('in', 'option (b) follows the general adjective order', 1),
        ('in', 'option (a) would be more grammatically correct', 0),
        ('in', 'option (b) would be more grammatically correct', 1),
        ('in', 'option a is the correct', 0),
        ('in', 'option b is the correct', 1),
        ('in', 'option a has the correct word order', 0),
        ('in', 'option b has the correct word order', 1),
        ('in', 'option a follows the correct order', 0),
        ('in', 'option b follows the correct order', 1),
        ('in', 'following the typical order is the first option', 0),
        ('in', 'following the typical order is the second option', 1),
        ('in', 'option a has a slightly better chance of being correct', 0),
        ('in', 'option b has a slightly better chance of being correct', 1),
        ('in', 'the answer is sentence a', 0),
        ('in', 'the answer is sentence b', 1),
        ('in', 'the final answer is (a)', 0),
        ('in', 'the final answer is (b)', 1),
        ('re', 'sentence a (.+?) seems to have a more logical', 0),
        ('re', 'sentence b (.+?) seems to have a more logical', 1),
        ('re', 'the correct adjective order is (.+?) option a', 0),
        ('re', 'the correct adjective order is (.+?) option b', 1),
        ('start', 'a ', 0),
        ('start', 'b ', 1),
        ('start', 'a)', 0),
        ('start', 'b)', 1),
    ),
    'yes_no': (
        ('in', 'answer is no', 0),
        ('in', 'answer is yes', 1),
        ('in', 'the answer no', 0),
        ('in', 'the answer yes', 1),
        ('in', 'final answer no', 0),
        ('in', 'final answer yes', 1),
        ('in', 'i would answer no', 0),
        ('in', 'i would answer yes', 1),
        ('in', 'the answer is without any modification no', 0),
        ('in', 'the answer is without any modification yes', 1),
        ('in', 'the answer to the question is no', 0),
        ('in', 'the answer to the question is yes', 1),
        ('in', 'the answer is false', 0),
        ('in', 'the answer is true', 1),
        ('in', 'answer false', 0),
        ('in', 'answer true', 1),
        ('in', 'the answer is $\\boxed{\\text{false}}$', 0),
        ('in', 'the answer is $\\boxed{\\text{true}}$', 1),
        ('in', 'the answer is \\boxed{no}', 0),
        ('in', 'the answer is \\boxed{yes}', 1),
        ('in', 'the answer is \\boxed{\\text{false}}', 0),
        ('in', 'the answer is \\boxed{\\text{true}}', 1),
        ('in', 'the answer is \\boxed{\\text{no}}', 0),
        ('in', 'the answer is \\boxed{\\text{yes}}', 1),
        ('in', 'i will provide the answer as no', 0),
        ('in', 'i will provide the answer as yes', 1),
        ('in', 'prefix answer no', 0),
        ('in', 'prefix answer yes', 1),
        ('in', 'conclusion no', 0),
        ('in', 'conclusion yes', 1),
    ),
    'web_of_lies': (
        ("yes_no", "", None),
        ('in', 'the prefix no applies to the statement', 0),
        ('in', 'veena s statement cannot be true', 0),
        ('in', 'therefore truly lorene tells the truth', 1),
        ('in', 'the answer is the truth', 1),
        ('in', 'affirmatively alejandro tells the truth', 1),
        ('re', 'answer is (.+?) tells a lie', 0),
        ('re', 'answer is (.+?) lies', 0),
        ('re', 'answer is (.+?) says lie', 0),
        ('re', 'answer is (.+?) doesn t tell the truth', 0),
        ('re', 'answer is (.+?) does not tell the truth', 0),
        ('re', 'answer is (.+?) didn t tell the truth', 0),
        ('re', 'answer is (.+?) tells the truth', 1),
        ('re', 'answer is (.+?) does tell the truth', 1),
        ('re', 'answer to the question (.+?) is no', 0),
        ('re', 'answer to the question (.+?) is yes', 1),
        ('re', 'from the above steps we can conclude that (.+?) tells the truth', 1),
        ('end', 'does not tell the truth', 0),
        ('end', 'cannot be telling the truth', 0),
        ('end', 'is lying', 0),
        ('end', 'tells the lie', 0),
        ('end', 'is also telling the truth', 1),
        ('end', 'must be lying', 1),
        ('end', 'must be telling the truth', 1),
        ('end', 'tells the truth', 1),
        ('end', 'delfina does tell the truth', 1),
        ('end', 'osvaldo is telling the truth', 1),
        ('end', 'lies', 0),
        ('start', 'no', 0),
        ('start', 'yes', 1),
        ('end', 'no', 0),
        ('end', 'yes', 1),
    ),
    'navigate': (
        ("yes_no", "", None),
        ('in', 'you do not return to the starting point', 0),
        ('in', 'you are not at the starting point', 0),
        ('in', 'you haven t moved back to the starting point', 0),
        ('in', 'you cannot return to the starting point', 0),
        ('in', 'you return to the starting point', 1),
        ('in', 'you are not facing the starting point', 0),
        ('in', 'you haven t returned to the starting point', 0),
        ('in', 'you end up back at the starting point', 1),
        ('in', 'you are not back at the starting point', 0),
        ('in', 'you will not return to the starting point', 0),
        ('in', 'yes following these instructions', 1),
        ('in', 'we end up back at the starting point', 1),
        ('in', 'indeed returns us to the starting point', 1),
        ('in', 'indeed bring us back to the starting point', 1),
        ('in', 'you ll end up right back where you started', 1),
        ('in', 'we ve now returned to the starting point', 1),
        ('in', 'i have returned to the starting position', 1),
        ('in', 'the final position is not directly at the starting point', 0),
        ('in', 'it appears that we did not return to the exact starting point', 0),
        ('in', 'does not return us to the starting point', 0),
        ('in', 'i will end up back where i started', 1),
        ('in', 'indeed return to the starting point', 1),
        ('in', 'i ll be back where i started', 1),
        ('in', 'i ll end up back at the starting point', 1),
        ('in', 'after following these instructions we return to the starting point', 1),
        ('in', 'we are back at the starting point!', 1),
        ('in', 'we are now back at the starting point', 1),
        ('in', 'you ll end up back where you started', 1),
        ('in', 'we have now returned to the starting point', 1),
        ('in', 'i ve returned to the starting point', 1),
        ('in', 'following these instructions will always return us to the starting point', 1),
        ('in', 'indeed return you to the starting point', 1),
        ('in', 'the answer is the starting point', 1),
        ('in', 'following these instructions doesn t return us to the starting point', 0),
        ('in',
         'following these directions does not lead you back to your original starting point',
         0),
        ('start', 'no', 0),
        ('start', 'yes', 1),
        ('end', 'no', 0),
        ('end', 'yes', 1),
    ),
    'sports_understanding': (
        ("yes_no", "", None),
        ('in', 'final answer the sentence is plausible', 1),
        ('in', 'the answer is directly yes', 1),
        ('in', 'no the sentence is not possible', 0),
        ('in', 'the answer is it is not possible', 0),
        ('in', 'the answer is the sentence is plausible', 1),
        ('in', 'the sentence is not particularly plausible', 0),
        ('in', 'the sentence is not plausible', 0),
        ('in', 'yes the sentence is structurally plausible', 1),
        ('in', 'is the sentence plausible? yes it is', 1),
        ('in', 'i would say that it is not a plausible sentence.', 0),
        ('in', 'no the original sentence is not plausible', 0),
        ('in', 'it s not a plausible', 0),
        ('in', 'to answer your original question no', 0),
        ('in', 'making it plausible', 1),
        ('in', 'making it implausible', 0),
        ('in', 'it is indeed a plausible sentence', 1),
        ('in', 'considering these points the sentence is plausible', 1),
        ('in', 'i would say the sentence is plausible', 1),
        ('in', 'i would say that the sentence is plausible', 1),
        ('in', 'i d say it s not entirely plausible', 0),
        ('in', 'therefore not plausible', 0),
        ('in', 'making it an implausible statement', 0),
        ('in', 'the following sentence is not plausible', 0),
        ('in', 'considering these points the sentence is unlikely to be true', 0),
        ('in', 'considering these points the sentence is not plausible', 0),
        ('in', 'yes the sentence is plausible', 1),
        ('in', 'based on this analysis the sentence is plausible', 1),
        ('in', 'considering these points the sentence seems plausible', 1),
        ('in', 'given the context the sentence is plausible', 1),
        ('in', 'considering these factors the sentence is plausible', 1),
        ('in', 'considering these points the sentence is unlikely to be plausible', 0),
        ('in', 'given the context of sports particularly basketball this sentence is plausible', 1),
        ('in', 'considering these points the sentence is likely true', 1),
        ('in', 'considering these elements the sentence is plausible', 1),
        ('in', 'i would say it s unlikely', 0),
        ('in', 'it seems unlikely', 0),
        ('in', 'given this analysis the sentence is plausible', 1),
        ('in', 'considering these points the sentence is the plausible', 1),
        ('in', 'the sentence is not entirely possible', 0),
        ('in', 'the sentence is not entirely accurate', 0),
        ('in', 'the sentence is not entirely plausible', 0),
        ('in', 'the answer is plausible', 1),
        ('in', 'modification of answer not possible', 0),
        ('in', 'the answer is without any modification no', 0),
        ('in', 'i would say that the sentence is generally plausible', 1),
        ('in', 'given these points the sentence is plausible', 1),
        ('in', 'yes the sentence is plausible', 1),
        ('in', 'considering these points the sentence seems to be a plausible', 1),
        ('in', 'the sentence appears to be a plausible', 1),
        ('eq', 'not plausible', 0),
        ('re',
         'considering these points the sentence (.+?) is grammatically correct and makes sense',
         1),
        ('re', 'considering these points the sentence (.+?) is plausible', 1),
        ('re', 'considering these points the sentence (.+?) is unlikely', 0),
        ('re', 'based on this analysis the sentence (.+?) is plausible', 1),
        ('re', 'considering these points the sentence (.+?) seems to be a possible', 1),
        ('re', 'based on these steps the sentence (.+?) is plausible', 1),
        ('re', 'based on this analysis the sentence (.+?) seems plausible', 1),
        ('re', 'considering these points the sentence (.+?) appears to be plausible', 1),
        ('re', 'considering these points the sentence (.+?) seems plausible', 1),
        ('re', 'the sentence (.+?) is not very plausible', 0),
        ('re', 'considering these points (.+?) is a plausible sentence', 1),
        ('re', 'given this information the sentence (.+?) is plausible', 1),
        ('re', 'given the context the sentence (.+?) is plausible', 1),
        ('re', 'the sentence (.+?) is flexible and realistic', 1),
        ('re', 'considering these points the sentence (.+?) is not a plausible statement', 0),
        ('re', 'the sentence (.+?) is not plausible', 1),
        ('start', 'no', 0),
        ('start', 'yes', 1),
        ('start', 'the following sentence is plausible', 1),
        ('end', 'no', 0),
        ('end', 'yes', 1),
    ),
}
