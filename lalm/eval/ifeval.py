"""IFEval instruction checks, as VoiceBench's ``ifeval`` evaluator runs them.

VoiceBench (``src/evaluator/ifeval.py``) scores each row's ``instruction_id_list`` with
``kwargs`` by Google's IFEval checkers (its ``instruction_following_eval`` copy): a response
follows an instruction when it is non-empty and the checker accepts it. **strict** checks the
response as given; **loose** accepts it if any of eight variants passes (the response, it
without its first line, its last line, or both, each also with every ``*`` removed). Reported:
prompt-level and instruction-level accuracy for both, and ``final``, the mean of the four.
Before checking, a leading ``<1>``/``<2>``/``<3>`` and a trailing ``<|user|>`` are removed;
``kwargs`` entries whose value is falsy are dropped (as officially, so a 0 threshold is lost).

Differences named: sentence counts use a regular-expression splitter and capital-word counts a
regular-expression word split (the official checkers use NLTK's punkt models, a download);
``langdetect`` is seeded (``DetectorFactory.seed = 0``) so language checks are reproducible
(officially unseeded); a checker argument that the row lacks is an error (officially a random
value is drawn); the official script keys responses by prompt text, so rows sharing a prompt
share the last one's response; lalm keeps each row's own.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from lalm.errors import ScoringError

IFEVAL_VERSION = "voicebench-ifeval-v1"
_WORD = re.compile(r"\w+")


def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def _language(text: str) -> str | None:
    """langdetect's language of a text, seeded; None when it cannot tell."""
    try:
        import langdetect
    except ImportError as e:
        raise ScoringError("IFEval language checks need langdetect: pip install 'lalm[eval]'") \
            from e
    langdetect.DetectorFactory.seed = 0
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def _compare(value: int, threshold: int, relation: str) -> bool:
    if relation == "less than":
        return value < threshold
    if relation == "at least":
        return value >= threshold
    raise ScoringError(f"IFEval relation must be 'less than' or 'at least', not {relation!r}")


def _paragraphs(text: str, n: int) -> bool:
    parts = re.split(r"\s?\*\*\*\s?", text)
    count = len(parts)
    for i, part in enumerate(parts):
        if not part.strip():
            if i in (0, len(parts) - 1):
                count -= 1
            else:
                return False
    return count == n


def _nth_first_word(text: str, num_paragraphs: int, nth: int, first_word: str) -> bool:
    parts = re.split(r"\n\n", text)
    count = len(parts) - sum(not p.strip() for p in parts)
    if nth > count or not parts[nth - 1].strip():
        return False
    word = parts[nth - 1].strip().split()[0].strip().lstrip("'").lstrip('"')
    head = re.split(r"[.,?!'\"]", word)[0].lower()
    return count == num_paragraphs and head == first_word.lower()


def _highlights(text: str) -> int:
    single = [h for h in re.findall(r"\*[^\n\*]*\*", text) if h.strip("*").strip()]
    double = [h for h in re.findall(r"\*\*[^\n\*]*\*\*", text)
              if h.removeprefix("**").removesuffix("**").strip()]
    return len(single) + len(double)


def _two_responses(text: str) -> bool:
    parts = text.split("******")
    valid = []
    for i, part in enumerate(parts):
        if not part.strip():
            if i not in (0, len(parts) - 1):
                return False
        else:
            valid.append(part)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def _json(text: str) -> bool:
    body = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        body = body.removeprefix(prefix)
    try:
        json.loads(body.removesuffix("```").strip())
    except ValueError:
        return False
    return True


def _postscript(text: str, marker: str) -> bool:
    patterns = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}
    pattern = patterns.get(marker, r"\s*" + marker.lower() + r".*$")
    return bool(re.findall(pattern, text.lower(), flags=re.MULTILINE))


def _title(text: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


def _checkers(kw: Mapping[str, Any]) -> dict[str, Callable[[str], bool]]:
    """Instruction id -> check of a response, with the row's arguments bound."""
    def arg(name: str) -> Any:
        if name not in kw:
            raise KeyError(name)
        return kw[name]
    return {
        "keywords:existence": lambda t: all(re.search(k, t, flags=re.IGNORECASE)
                                            for k in arg("keywords")),
        "keywords:frequency": lambda t: _compare(
            len(re.findall(arg("keyword").strip(), t, flags=re.IGNORECASE)), arg("frequency"),
            arg("relation")),
        "keywords:forbidden_words": lambda t: not any(
            re.search(r"\b" + w + r"\b", t, flags=re.IGNORECASE)
            for w in arg("forbidden_words")),
        "keywords:letter_frequency": lambda t: _compare(
            collections.Counter(t.lower())[arg("letter").strip().lower()],
            arg("let_frequency"), arg("let_relation")),
        "language:response_language": lambda t: _language(t) in (arg("language"), None),
        "length_constraints:number_sentences": lambda t: _compare(
            _sentences(t), arg("num_sentences"), arg("relation")),
        "length_constraints:number_paragraphs": lambda t: _paragraphs(t, arg("num_paragraphs")),
        "length_constraints:number_words": lambda t: _compare(
            len(_WORD.findall(t)), arg("num_words"), arg("relation")),
        "length_constraints:nth_paragraph_first_word": lambda t: _nth_first_word(
            t, arg("num_paragraphs"), arg("nth_paragraph"), arg("first_word")),
        "detectable_content:number_placeholders": lambda t: len(
            re.findall(r"\[.*?\]", t)) >= arg("num_placeholders"),
        "detectable_content:postscript": lambda t: _postscript(
            t, arg("postscript_marker").strip()),
        "detectable_format:number_bullet_lists": lambda t: len(
            re.findall(r"^\s*\*[^\*].*$", t, flags=re.MULTILINE)) + len(
            re.findall(r"^\s*-.*$", t, flags=re.MULTILINE)) == arg("num_bullets"),
        "detectable_format:constrained_response": lambda t: any(
            o in t.strip() for o in ("My answer is yes.", "My answer is no.",
                                     "My answer is maybe.")),
        "detectable_format:number_highlighted_sections": lambda t: _highlights(t)
        >= arg("num_highlights"),
        "detectable_format:multiple_sections": lambda t: len(re.split(
            r"\s?" + arg("section_spliter").strip() + r"\s?\d+\s?", t)) - 1
        >= arg("num_sections"),
        "detectable_format:json_format": _json,
        "detectable_format:title": _title,
        "combination:two_responses": _two_responses,
        "combination:repeat_prompt": lambda t: t.strip().lower().startswith(
            arg("prompt_to_repeat").strip().lower()),
        "startend:end_checker": lambda t: t.strip().strip('"').lower().endswith(
            arg("end_phrase").strip().lower()),
        "change_case:capital_word_frequency": lambda t: _compare(
            sum(w.isupper() for w in re.findall(r"\w+|[^\w\s]+", t)),
            arg("capital_frequency"), arg("capital_relation")),
        "change_case:english_capital": lambda t: t.isupper() and _language(t) in ("en", None),
        "change_case:english_lowercase": lambda t: t.islower() and _language(t) in ("en", None),
        "punctuation:no_comma": lambda t: "," not in t,
        "startend:quotation": lambda t: len(t.strip()) > 1 and t.strip()[0] == '"'
        and t.strip()[-1] == '"',
    }


def _variants(response: str) -> list[str]:
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
           "\n".join(lines[1:-1]).strip()]
    return [response, response.replace("*", ""), *cut, *(c.replace("*", "") for c in cut)]


def follows(response: str, instruction: str, kwargs: Mapping[str, Any] | None,
            loose: bool = False) -> bool:
    """Whether a response follows one IFEval instruction (strict or loose).

    Raises:
        ScoringError: an unknown instruction id, or an argument the row lacks.
    """
    kw = {k: v for k, v in (kwargs or {}).items() if v}
    check = _checkers(kw).get(instruction)
    if check is None:
        raise ScoringError(f"unknown IFEval instruction {instruction!r}")
    try:
        return any(r.strip() and check(r) for r in (_variants(response) if loose
                                                    else [response]))
    except KeyError as e:
        raise ScoringError(f"IFEval {instruction}: the row gives no {e.args[0]!r}") from e


def _clean(response: str) -> str:
    if response.startswith(("<1>", "<2>", "<3>")):
        response = response[3:].strip()
    return response[:-8].strip() if response.endswith("<|user|>") else response


def score_ifeval(records: Sequence[Mapping[str, Any]], strict: bool) -> dict[str, Any]:
    """Prompt- and instruction-level accuracy, strict and loose, and their mean (``final``)."""
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        prompts = instructions = followed = 0
        for r in records:
            ids, kwargs = r["instruction_id_list"], r["kwargs"]
            flags = [follows(_clean(str(r["response"])), i, k, loose=mode == "loose")
                     for i, k in zip(ids, kwargs)]
            prompts += all(flags)
            followed += sum(flags)
            instructions += len(ids)
        out[f"{mode}-prompt"] = prompts / len(records)
        out[f"{mode}-instruction"] = followed / instructions if instructions else 0.0
    out["final"] = sum(out.values()) / len(out)
    headline = (out["strict-prompt"] + out["strict-instruction"]) / 2 if strict else out["final"]
    return {"version": IFEVAL_VERSION, "score": headline, **out, "count": len(records)}
