"""AIR-Bench: foundation prompts and scoring (official and strict), and the chat judge.

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

Prompts and data: `read_meta` reads ``Foundation_meta.json`` / ``Chat_meta.json`` and
`foundation_instruction` writes the official inference script's text prompt.

Chat (version ``airbench-chat-judge-v1``): `score_chat` asks an LLM judge (`ChatJudge`, any
OpenAI-compatible chat endpoint) the official judge prompt twice, reference first and model
first, and averages each side's two 1-10 scores; judgements that do not read as two scores are
dropped and counted, as officially. Unlike the official script (temperature 1, sometimes 2),
requests are deterministic (temperature 0, fixed seed) and cached.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lalm.errors import DataError, ScoringError
from lalm.eval.judge import ChatJudge, JudgeSettings

__all__ = ["ChatJudge", "extract_choice", "score_chat", "score_foundation"]

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


# ---------------------------------------------------------------------------- data and prompts

FOUNDATION_META = "Foundation_meta.json"
CHAT_META = "Chat_meta.json"
# The instruction of the official Inference_Foundation.py, before the question and choices.
FOUNDATION_QUESTION_PROMPT = (
    "Choose the most suitable answer from options A, B, C, and D to respond the question in "
    "next line, you may only choose A or B or C or D."
)


def read_meta(data: str | os.PathLike[str], name: str) -> tuple[list[dict[str, Any]], Path]:
    """The rows of an AIR-Bench meta file and the folder the per-task audio folders are in.

    Args:
        data: the meta file itself, or the folder holding it (``Foundation_meta.json`` /
            ``Chat_meta.json``; audio under ``<folder>/<task_name>_<dataset_name>/<path>``).
        name: `FOUNDATION_META` or `CHAT_META`.

    Raises:
        DataError: a missing or malformed file, or rows without the official fields.
    """
    path = Path(data)
    path = path / name if path.is_dir() else path
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"AIR-Bench meta file {path}: {e.strerror or e}") from e
    except json.JSONDecodeError as e:
        raise DataError(f"AIR-Bench meta file {path} is not JSON: {e}") from e
    need = ("path", "question", "answer_gt", "task_name", "dataset_name", "uniq_id")
    if not isinstance(rows, list) or not rows:
        raise DataError(f"AIR-Bench meta file {path} must hold a non-empty JSON list")
    for i, row in enumerate(rows):
        missing = [k for k in need if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(f"AIR-Bench meta file {path}, row {i}: missing {missing}")
    return rows, path.parent


def foundation_instruction(item: Mapping[str, object]) -> str:
    """The text prompt of a foundation item, exactly as the official inference script builds it.

    The script formats all four choices whatever their number, so a two-choice item reads
    ``C. None`` and ``D. None``; that is reproduced (the models were scored on it).
    """
    choices = "\n".join(f"{letter}. {item.get(f'choice_{letter.lower()}')}"
                        for letter in CHOICE_LETTERS)
    return f"{FOUNDATION_QUESTION_PROMPT}\n{item['question']}\n{choices}"


# ---------------------------------------------------------------------------- chat judge

CHAT_VERSION = "airbench-chat-judge-v1"
#: lalm's judge requests (the official script samples at temperature 1, sometimes 2).
CHAT_JUDGE_SETTINGS = JudgeSettings(temperature=0.0, samples=1, max_tokens=16)
# The official score_chat.py judge prompt; XAudioX etc. are its placeholders.
JUDGE_PROMPT = (
    "You are a helpful and precise assistant for checking the quality of the answer.\n"
    "[Detailed Audio Description]\nXAudioX\n[Question]\nXQuestionX\n"
    "[The Start of Assistant 1s Answer]\nXAssistant1X\n[The End of Assistant 1s Answer]\n"
    "[The Start of Assistant 2s Answer]\nXAssistant2X\n[The End of Assistant 2s Answer]\n"
    "[System]\n"
    "We would like to request your feedback on the performance of two AI assistants in response "
    "to the user question and audio description displayed above. AI assistants are provided "
    "with detailed audio descriptions and questions.\n"
    "Please rate the helpfulness, relevance, accuracy, and comprehensiveness of their responses. "
    "Each assistant receives an overall score on a scale of 1 to 10, where a higher score "
    "indicates better overall performance. Please output a single line containing only two "
    "values indicating the scores for Assistant 1 and 2, respectively. The two scores are "
    "separated by a space."
)
#: task_name -> category, as the official cal_score.py groups the chat tasks.
CHAT_CATEGORIES = {
    "speech_QA": "speech", "speech_dialogue_QA": "speech", "sound_QA": "sound",
    "sound_generation_QA": "sound", "music_QA": "music", "music_generation_analysis_QA": "music",
    "speech_and_sound_QA": "speech_and_sound", "speech_and_music_QA": "speech_and_music",
}


def judge_prompt(audio_description: str, question: str, answer_1: str, answer_2: str) -> str:
    """The official judge prompt with its four slots filled (in the official order of
    replacement, so a slot marker inside an earlier value is replaced too, as officially)."""
    return (JUDGE_PROMPT.replace("XAudioX", audio_description).replace("XQuestionX", question)
            .replace("XAssistant1X", answer_1).replace("XAssistant2X", answer_2))


def parse_judge_scores(text: str) -> tuple[int, int] | None:
    """The two 1-10 scores of a judgement (``"8 6"``), or None when it does not read as two
    integers in 1..10 (the official cal_score.py counts such judgements as failures)."""
    parts = text.strip().replace("\n", "").split(" ")
    if len(parts) != 2:
        return None
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        return None
    return (a, b) if 1 <= a <= 10 and 1 <= b <= 10 else None


@dataclass(frozen=True)
class ChatResult:
    """AIR-Bench chat scores.

    Attributes:
        categories: category -> (model's mean score, reference answer's mean score, items).
        model_score: the model's mean over all judged items.
        reference_score: the reference answers' mean over the same items.
        judged: items with both orders judged.
        failed: items with a judgement that did not parse (dropped, as officially).
        version: `CHAT_VERSION`.
        judge: the judge's record (`ChatJudge.describe`).
    """

    categories: dict[str, tuple[float, float, int]]
    model_score: float
    reference_score: float
    judged: int
    failed: int
    version: str = CHAT_VERSION
    judge: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"version": self.version, "model_score": self.model_score,
                "reference_score": self.reference_score, "judged": self.judged,
                "failed": self.failed, "judge": self.judge, "position_swap": True,
                "categories": {c: {"model": m, "reference": r, "count": n}
                               for c, (m, r, n) in self.categories.items()}}


def score_chat(items: Sequence[Mapping[str, Any]], judge: ChatJudge) -> ChatResult:
    """Judge chat answers against the reference answers, in both orders.

    Each item is judged twice: reference as Assistant 1 and the model as Assistant 2 (the
    official order), then swapped (the official ``cir`` run). The model's score is the mean of
    its two scores, and likewise for the reference, which cancels the judge's position bias.

    Args:
        items: records with ``meta_info`` (the audio description), ``question``,
            ``answer_gt``, ``response`` and ``task_name``.
        judge: the judge endpoint.

    Raises:
        ScoringError: no items, an unknown task_name, a failing endpoint, or nothing judged.
    """
    sums: dict[str, list[float]] = {}
    judged = failed = 0
    for item in items:
        category = CHAT_CATEGORIES.get(str(item.get("task_name")))
        if category is None:
            raise ScoringError(f"AIR-Bench chat item {item.get('uniq_id')!r}: unknown task_name "
                               f"{item.get('task_name')!r}")
        description, question = str(item["meta_info"]), str(item["question"])
        reference, response = str(item["answer_gt"]), str(item["response"])
        first = parse_judge_scores(judge.complete(
            judge_prompt(description, question, reference, response), CHAT_JUDGE_SETTINGS))
        second = parse_judge_scores(judge.complete(
            judge_prompt(description, question, response, reference), CHAT_JUDGE_SETTINGS))
        if first is None or second is None:
            failed += 1
            continue
        s = sums.setdefault(category, [0.0, 0.0, 0])
        s[0] += (first[1] + second[0]) / 2
        s[1] += (first[0] + second[1]) / 2
        s[2] += 1
        judged += 1
    if not judged:
        raise ScoringError(f"AIR-Bench chat: no item was judged ({failed} judgements failed)")
    categories = {c: (m / n, r / n, int(n)) for c, (m, r, n) in sums.items()}
    return ChatResult(categories, sum(s[0] for s in sums.values()) / judged,
                      sum(s[1] for s in sums.values()) / judged, judged, failed,
                      judge=judge.describe(JUDGE_PROMPT, CHAT_JUDGE_SETTINGS))
