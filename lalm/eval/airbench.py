"""AIR-Bench foundation scoring: answer-letter extraction and accuracy, official and strict.

The official ``OFA-Sys/AIR-Bench score_foundation.py`` reads the model's response with a
minimal rule (`extract_choice`): after stripping and removing newlines, the answer is the first
character if it is one of ``A``-``D``, else the second-to-last character if that is one (``"The
answer is B."``), else extraction fails. The true letter is the first choice whose text equals
``answer_gt``. Accuracy is reported per ``task_name + "_" + dataset_name``.

Two modes differ only in what a failed extraction counts as:

* ``"official"`` (version ``airbench-foundation-official-v1``): failures are dropped from the
  denominator (the official script only counts them in ``fail_num``), which rewards a model for
  answering off-format when unsure;
* ``"strict"`` (version ``airbench-foundation-strict-v1``): failures count as wrong answers.

Both report the failure count. The official rule also reads a response that merely *starts*
with a capital A-D (``"As the speaker..."``) as that letter; both modes keep that rule so the
two differ in one thing only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lalm.errors import ScoringError

CHOICE_LETTERS = "ABCD"
OFFICIAL = "airbench-foundation-official-v1"
STRICT = "airbench-foundation-strict-v1"
_VERSIONS = {"official": OFFICIAL, "strict": STRICT}


@dataclass(frozen=True)
class ChoiceAccuracy:
    """Accuracy of one task/dataset group (or of all items).

    Attributes:
        score: ``correct / scored`` (NaN when nothing was scored).
        correct: items whose extracted letter equals the true letter.
        scored: the denominator: extracted items (official) or all items (strict).
        failed: items whose answer could not be extracted.
        version: `OFFICIAL` or `STRICT`.
    """

    score: float
    correct: int
    scored: int
    failed: int
    version: str


@dataclass(frozen=True)
class FoundationResult:
    """AIR-Bench foundation scores.

    Attributes:
        groups: ``task_name + "_" + dataset_name`` -> its accuracy, in order of appearance.
        overall: all items pooled (micro average).
        macro: unweighted mean of the groups' scores (groups with nothing scored left out).
        version: `OFFICIAL` or `STRICT`.
    """

    groups: dict[str, ChoiceAccuracy]
    overall: ChoiceAccuracy
    macro: float
    version: str


def extract_choice(response: str | None) -> str | None:
    """The answer letter the official rule reads from a response, or None when it fails.

    Args:
        response: the model's raw answer (None and the string ``"None"`` count as no answer).

    Returns:
        ``"B"`` for ``"B"``, ``"B. Dog"`` or ``"The answer is B."``; None for ``"dog"``.
    """
    if response is None:
        return None
    text = response.strip().replace("\n", "")
    if not text or text == "None":
        return None
    if text[0] in CHOICE_LETTERS:
        return text[0]
    if len(text) > 1 and text[-2] in CHOICE_LETTERS:
        return text[-2]
    return None


def true_choice(item: Mapping[str, object]) -> str:
    """The letter of the choice equal to ``answer_gt`` (first match from A to D).

    Raises:
        ScoringError: no choice equals ``answer_gt`` (the official script exits there).
    """
    for letter in CHOICE_LETTERS:
        key = f"choice_{letter.lower()}"
        if key in item and item[key] == item.get("answer_gt"):
            return letter
    raise ScoringError(f"AIR-Bench item: answer_gt {item.get('answer_gt')!r} is none of the "
                       f"choices (uniq_id {item.get('uniq_id')!r})")


def _accuracy(correct: int, answered: int, failed: int, version: str) -> ChoiceAccuracy:
    scored = answered + failed if version == STRICT else answered
    return ChoiceAccuracy(correct / scored if scored else float("nan"), correct, scored, failed,
                          version)


def score_foundation(items: Sequence[Mapping[str, object]], mode: str = "official"
                     ) -> FoundationResult:
    """Score AIR-Bench foundation answers.

    Args:
        items: records with ``task_name``, ``dataset_name``, ``response``, ``answer_gt`` and
            ``choice_a`` ... ``choice_d`` (the official result-file fields). Records whose
            ``task_name`` is None are skipped, as officially.
        mode: ``"official"`` or ``"strict"`` (see the module docstring).

    Returns:
        Per-group, pooled and macro-averaged accuracies.

    Raises:
        ScoringError: unknown mode, no items, or an item whose answer is none of its choices.
    """
    if mode not in _VERSIONS:
        raise ScoringError(f"unknown AIR-Bench scoring mode {mode!r}; use official or strict")
    version = _VERSIONS[mode]
    counts: dict[str, list[int]] = {}  # group -> [correct, answered, failed]
    for item in items:
        if item.get("task_name") is None:
            continue
        c = counts.setdefault(f"{item['task_name']}_{item['dataset_name']}", [0, 0, 0])
        letter = extract_choice(item.get("response"))  # type: ignore[arg-type]
        if letter is None:
            c[2] += 1
            continue
        c[0] += letter == true_choice(item)
        c[1] += 1
    if not counts:
        raise ScoringError("AIR-Bench foundation: no items to score")
    groups = {g: _accuracy(*c, version) for g, c in counts.items()}
    overall = _accuracy(*(sum(c[k] for c in counts.values()) for k in range(3)), version)
    scored = [g.score for g in groups.values() if g.scored]
    macro = sum(scored) / len(scored) if scored else float("nan")
    return FoundationResult(groups, overall, macro, version)
