"""Multiple-choice audio QA: MMAU and MMAR, with their official answer matching and lalm's strict.

Both suites score free text against the choice texts; neither reads answer letters.

* **Official** (``mmau-string-match-v2``), the ``string_match`` of ``Sakshi113/MMAU
  evaluation.py`` (since 25 Oct 2024), copied unchanged into ``ddlBoJack/MMAR
  code/evaluation.py``: a text's tokens are the set of ``\\b\\w+\\b`` matches of its lowercased
  form; the prediction is right when it holds every token of the answer and none of the
  "incorrect tokens" (tokens of the other choices that the answer lacks; a choice with the
  answer's exact token set adds none). An empty prediction is wrong. So ``"Man"`` is right for
  answer ``Man`` among ``Woman``/``Child``, ``"The answer is Man"`` too, ``"(A)"`` is not, and
  ``"a man, not a woman"`` is not.
* **MMAU's first script** (``mmau-substring-v1``, 24-25 Oct 2024): right when the lowercased
  answer is a substring of the lowercased prediction and no other choice is. Reported beside
  the official number because early MMAU results were computed with it (``"woman"`` contains
  ``"man"``, so answer ``Man`` can never win against ``Woman``).
* **Strict** (``lalm-mc-strict-v1``): the response must name one choice unambiguously, by its
  letter (``A``, ``(B)``, ``C.``, ``D) text``: the n-th choice) or by its full text (the one
  choice whose text appears as whole words; when several do and one contains all the others,
  that one); anything else is a failed extraction and counts as wrong.

Accuracies are fractions. Breakdowns follow the official scripts: MMAU by ``task`` (sound,
music, speech), ``difficulty`` and ``sub-category``; MMAR by ``modality``, ``category`` and
``sub-category``.

Data: MMAU reads ``mmau-test-mini.json`` (a JSON list; audio ``audio_id`` relative to the
file's folder); the ``test`` split has no answers (they are withheld) and is refused. MMAR reads
``MMAR-meta.jsonl`` (or the older ``MMAR-meta.json``; audio ``audio_path``). Both also read a
HF ``datasets`` copy (``save_to_disk`` folder or parquet) with the same fields and an Audio
column (`lalm.eval.layouts`). Neither suite
publishes an inference prompt: lalm asks `choice_prompt` (the item's own ``prompt`` field wins).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lalm.errors import DataError
from lalm.eval.layouts import is_hf_dataset, read_hf_rows
from lalm.eval.metrics import check_pairs
from lalm.eval.task import (
    STRICT,
    EvalData,
    EvalItem,
    EvalTask,
    ScoreContext,
    _resolve,
    chat_request,
    find_data_file,
)
from lalm.prompt import FamilySpec

OFFICIAL_MATCH = "mmau-string-match-v2"
SUBSTRING_MATCH = "mmau-substring-v1"
STRICT_MATCH = "lalm-mc-strict-v1"
_WORD = re.compile(r"\b\w+\b")
_LETTER = re.compile(r"^\s*\(?([A-Za-z])\s*(?:[\).:,]|$|\s)")
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _tokens(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """The official MMAU / MMAR rule (``mmau-string-match-v2``, see the module docstring)."""
    predicted, wanted = _tokens(prediction), _tokens(answer)
    if not predicted:
        return False
    incorrect: set[str] = set()
    for choice in choices:
        tokens = _tokens(choice)
        if tokens != wanted:
            incorrect |= tokens - wanted
    return wanted <= predicted and predicted.isdisjoint(incorrect)


def substring_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's first rule (``mmau-substring-v1``): answer in prediction, no other choice is."""
    answer, prediction = str(answer), str(prediction)
    if not prediction:
        return False
    others = [str(c).lower() for c in choices if str(c) != answer]
    low = prediction.lower()
    return answer.lower() in low and not any(c in low for c in others)


def _words(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def strict_choice(prediction: str, choices: Sequence[str]) -> int | None:
    """The index of the one choice a response names, or None (lalm's strict extraction)."""
    letter = _LETTER.match(prediction)
    if letter and letter.group(1).upper() in _LETTERS[:len(choices)]:
        rest = prediction[letter.end():]
        # "A" alone or "A) text"; not a sentence that merely starts with "A ..."
        if not rest.strip() or letter.group(0).rstrip()[-1:] in ").:,":
            return _LETTERS.index(letter.group(1).upper())
    said = f" {_words(prediction)} "
    named = [i for i, c in enumerate(choices) if _words(c) and f" {_words(c)} " in said]
    if len(named) == 1:
        return named[0]
    widest = [i for i in named
              if all(f" {_words(choices[j])} " in f" {_words(choices[i])} " for j in named)]
    return widest[0] if len(widest) == 1 else None


def choice_prompt(question: str, choices: Sequence[str]) -> str:
    """lalm's multiple-choice instruction (the suites publish none), asking for choice text."""
    lines = "\n".join(f"- {c}" for c in choices)
    return f"{question}\nChoices:\n{lines}\nAnswer with one of the choices, exactly as written."


# ---------------------------------------------------------------------------- scoring

def _judge_item(record: Mapping[str, Any]) -> dict[str, bool]:
    choices = [str(c) for c in record["choices"]]
    answer, response = str(record["reference"]), str(record["response"])
    picked = strict_choice(response, choices)
    return {OFFICIAL_MATCH: string_match(answer, response, choices),
            SUBSTRING_MATCH: substring_match(answer, response, choices),
            STRICT_MATCH: picked is not None and choices[picked] == answer,
            "strict_failed": picked is None}


def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def score_choices(records: Sequence[Mapping[str, Any]], breakdowns: Sequence[str],
                  ctx: ScoreContext) -> dict[str, Any]:
    """Accuracy of multiple-choice records by every procedure, overall and per breakdown field.

    Args:
        records: prediction records with ``reference`` (the answer text), ``choices``,
            ``response`` and the breakdown fields.
        breakdowns: record fields to group by (e.g. ``task``, ``difficulty``).
        ctx: ``scoring`` picks which procedure is the headline ``accuracy``.

    Returns:
        ``accuracy`` (the mode's), ``version``, and per procedure its accuracy, counts and
        breakdowns; ``strict_failed`` counts responses naming no single choice.
    """
    check_pairs(records, records, OFFICIAL_MATCH)  # nothing to score is an error
    judged = [_judge_item(r) for r in records]
    out: dict[str, Any] = {}
    for version in (OFFICIAL_MATCH, SUBSTRING_MATCH, STRICT_MATCH):
        flags = [j[version] for j in judged]
        by: dict[str, dict[str, float | None]] = {}
        for name in breakdowns:
            groups: dict[str, list[bool]] = {}
            for r, ok in zip(records, flags):
                if r.get(name) is not None:
                    groups.setdefault(str(r[name]), []).append(ok)
            by[name] = {g: _rate(v) for g, v in groups.items()}
        out[version] = {"accuracy": _rate(flags), "correct": sum(flags), "count": len(flags),
                        "by": by}
    headline = STRICT_MATCH if ctx.scoring == STRICT else OFFICIAL_MATCH
    return {"version": headline, "accuracy": out[headline]["accuracy"],
            "strict_failed": sum(j["strict_failed"] for j in judged), "procedures": out}


# ---------------------------------------------------------------------------- data

def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not JSON ({e})") from e
    if not isinstance(rows, list):
        raise DataError(f"{path} must hold a JSON list of questions")
    return rows


def choice_item(row: Mapping[str, Any], n: int, path: Path, audio_key: str, roots: list[Path],
                source_key: str, extra: Sequence[str]) -> EvalItem:
    """One multiple-choice row as an item (answer checked to be one of the choices).

    Raises:
        DataError: missing fields, no answer (withheld test split) or an answer that is none
            of the choices (the message names the file and row).
    """
    where = f"{path}, row {n}"
    missing = [k for k in (audio_key, "question", "choices") if k not in row]
    if missing:
        raise DataError(f"{where}: missing {missing}")
    if row.get("answer") is None:
        raise DataError(f"{where}: no 'answer' (the test split's answers are withheld; "
                        f"score it on the suite's server)")
    choices = [str(c) for c in row["choices"]]
    if str(row["answer"]) not in choices:
        raise DataError(f"{where}: answer {row['answer']!r} is none of the choices {choices}")
    audios = row[audio_key] if isinstance(row[audio_key], list) else [row[audio_key]]
    fields = {"question": row["question"], "choices": choices,
              **{k: row.get(k) for k in extra}}
    if "prompt" in row:
        fields["prompt"] = row["prompt"]
    return EvalItem(str(row.get("id", n)), tuple(_resolve(str(a), roots) for a in audios),
                    str(row["answer"]), str(row.get(source_key)), fields)


def _reader(candidates: Sequence[str], audio_key: str, source_key: str,
            extra: Sequence[str]) -> Callable[[Path], EvalData]:
    def read(data: Path) -> EvalData:
        if is_hf_dataset(data):  # the suite's HF copy: an Audio column instead of paths
            rows, audio = read_hf_rows(data)
            path, root, key = data, data if data.is_dir() else data.parent, audio
        else:
            path, root = find_data_file(data, candidates)
            rows, key = _rows(path), audio_key
        if not rows:
            raise DataError(f"{path} holds no questions")
        return EvalData([choice_item(row, n, path, key, [root, path.parent], source_key,
                                     extra) for n, row in enumerate(rows)])
    return read


def choice_request(item: EvalItem, family: FamilySpec):  # noqa: ANN201 - a pipeline Request
    """The item's audio(s) then its ``prompt`` or `choice_prompt`, as one chat user turn."""
    text = item.fields.get("prompt") or choice_prompt(item.fields["question"],
                                                      item.fields["choices"])
    return chat_request(item, family, text)


_MMAU_FIELDS = ("task", "difficulty", "sub-category", "category", "dataset", "split")
_MMAR_FIELDS = ("modality", "category", "sub-category", "language")

#: MMAU (test-mini) and MMAR.
TASKS: dict[str, EvalTask] = {t.name: t for t in [
    EvalTask("mmau", "MMAU multiple-choice audio QA (official string match; strict; by task, "
             "difficulty, sub-category)",
             _reader(["mmau-test-mini.json", "mmau-test.json"], "audio_id", "task",
                     _MMAU_FIELDS),
             choice_request,
             lambda records, ctx: score_choices(records, ("task", "difficulty", "sub-category"),
                                                ctx)),
    EvalTask("mmar", "MMAR multiple-choice audio reasoning (official string match; strict; by "
             "modality, category, sub-category)",
             _reader(["MMAR-meta.jsonl", "MMAR-meta.json"], "audio_path", "modality",
                     _MMAR_FIELDS),
             choice_request,
             lambda records, ctx: score_choices(records, ("modality", "category",
                                                          "sub-category"), ctx)),
]}
