"""MMAU-Pro: closed questions, instruction following and open questions, scored per category.

The official ``sonalkum/MMAUPro evaluate_mmau_pro_comprehensive.py`` splits the rows of
``test.parquet`` by ``category``:

* ``open``: an LLM judge (officially a local ``Qwen/Qwen2.5-7B-Instruct``, sampled at
  temperature 0.1, 512 new tokens, system "You are a helpful and objective evaluator.") rates
  correctness, relevance, completeness and clarity 1-5 with `OPEN_JUDGE_PROMPT`; a criterion the
  reply lacks counts 3.0, and ``OVERALL`` is replaced by the criteria's mean when it is missing
  *or equals 3.0*. The category's score is the mean overall / 5.
* ``instruction following``: the response is checked against ``task_identifier`` and
  ``kwargs`` by string rules (`follows_instruction`); the score is the success rate.
* every other category (closed): rows with fewer than two choices are dropped; the official
  script maps the response to the choice with the most similar NV-Embed-v2 embedding, so any
  response, even an empty one, picks some choice. lalm does the same through any
  OpenAI-compatible embeddings endpoint (``--embed-url``, ``--embed-model nvidia/NV-Embed-v2``;
  ``mmau-pro-embedding-match-v1``); without one it scores closed rows with MMAU's official
  string match (``mmau-string-match-v2``), and says which in ``closed_procedure``. lalm's
  strict extraction (`lalm.eval.mcq`) is always reported beside it.

The overall number is the count-weighted mean of the category scores. Modes: ``official``
keeps the judge's neutral 3.0 for criteria it failed to state; ``strict`` counts them 1.0 (the
minimum) and scores closed rows by strict extraction. Both report how many judgements failed.

Differences named: sentence counts use a regular-expression splitter (the official script uses
NLTK's punkt models, which need a download); without a judge the open category is left out and
the summary says ``complete: false``. Prompts: MMAU-Pro publishes none; lalm sends the audio(s)
then the question (closed rows add `lalm.eval.mcq.choice_prompt`'s choice list).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lalm.errors import DataError
from lalm.eval.judge import JudgeSettings
from lalm.eval.mcq import OFFICIAL_MATCH, STRICT_MATCH, choice_prompt, strict_choice, string_match
from lalm.eval.metrics import check_pairs
from lalm.eval.task import (
    STRICT,
    EvalData,
    EvalItem,
    EvalTask,
    ScoreContext,
    _resolve,
    chat_request,
)
from lalm.generation import Request
from lalm.prompt import FamilySpec

VERSION = "mmau-pro-lalm-v1"
EMBEDDING_MATCH = "mmau-pro-embedding-match-v1"
OPEN, FOLLOW = "open", "instruction following"
OPEN_JUDGE_SYSTEM = "You are a helpful and objective evaluator."
OPEN_JUDGE_SETTINGS = JudgeSettings(temperature=0.1, samples=1, max_tokens=512,
                                    system=OPEN_JUDGE_SYSTEM)
# The official create_evaluation_prompt for task type "open" (its {context} filled in).
OPEN_JUDGE_PROMPT = (
    'You are an expert evaluator for general open-ended question answering tasks. '
    "Please evaluate the quality of a model's response to a question.\n"
    '\n'
    'Question: {question}\n'
    '\n'
    'Reference Answer: {reference}\n'
    '\n'
    'Model Response: {response}\n'
    '\n'
    'Please evaluate the model response on the following criteria and provide scores '
    'from 1-5 (where 5 is best):\n'
    '\n'
    '1. **Correctness**: How factually accurate is the response compared to the reference?\n'
    '2. **Relevance**: How well does the response address the specific question asked?\n'
    '3. **Completeness**: Does the response cover all important aspects mentioned in '
    'the reference?\n'
    '4. **Clarity**: How clear and well-structured is the response?\n'
    '\n'
    'For each criterion, provide:\n'
    '- A score from 1-5\n'
    '- A brief justification (1-2 sentences)\n'
    '\n'
    'Format your response as:\n'
    '\n'
    'CORRECTNESS: [score] - [justification]\n'
    'RELEVANCE: [score] - [justification] \n'
    'COMPLETENESS: [score] - [justification]\n'
    'CLARITY: [score] - [justification]\n'
    'OVERALL: [average score] - [overall assessment]'
)
_CRITERIA = ("correctness", "relevance", "completeness", "clarity")


# ---------------------------------------------------------------------------- instruction rules

def _sentences(text: str) -> int:
    return len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s])


def _alpha(text: str, keep_space: bool) -> str:
    return re.sub(r"[^a-zA-Z ]" if keep_space else r"[^a-zA-Z]", "", text).lower()


def _between(value: int, kw: Mapping[str, Any]) -> bool:
    return (kw.get("N1") or 0) <= value <= (kw.get("N2") if kw.get("N2") is not None else 999)


def _capitals(text: str) -> int:
    return sum(w.isupper() for w in text.split())


def follows_instruction(response: str, identifier: str, kwargs: Mapping[str, Any] | None,
                        question: str) -> bool:
    """Whether a response meets an instruction-following row's constraint, by the official
    rules (an unknown ``task_identifier`` fails, as officially)."""
    kw = dict(kwargs or {})
    n = kw.get("N") or 0
    low = response.lower()
    words = len(response.split())
    rules = {
        "Include Keywords": lambda: all(k.lower() in low
                                        for k in (kw.get("keywords") or "").split(", ")),
        "Keyword Frequency": lambda: len(re.findall(
            r"\b" + re.escape((kw.get("keyword") or "").lower()) + r"\b", low)) == n,
        "Forbidden Words": lambda: not any(k.lower() in low for k in
                                           (kw.get("forbidden_words") or "").split(", ")),
        "Number Paragraphs": lambda: len([p for p in response.split("***") if p.strip()]) == n,
        "Number Words (at least)": lambda: words >= n,
        "Number Words (at most)": lambda: words <= n,
        "Number Words (range)": lambda: _between(words, kw),
        "Number Sentences (at least)": lambda: _sentences(response) >= n,
        "Number Sentences (at most)": lambda: _sentences(response) <= n,
        "Number Sentences (range)": lambda: _between(_sentences(response), kw),
        "Postscript": lambda: _alpha(kw.get("postscript_marker") or "", False)
        in _alpha(response, False),
        "Number Placeholder": lambda: len(re.findall(r"\[[^\]]+\]", response)) >= n,
        "Number Bullets": lambda: len(re.findall(r"(?:^|\n)\s*\*\s+", response)) == n,
        "Title": lambda: re.search(r"<<[^>]+>>", response) is not None,
        "Minimum Number Highlighted Section": lambda: len(re.findall(r"\*([^*]+)\*",
                                                                     response)) >= n,
        "Multiple Sections": lambda: len([s for s in re.split(
            rf"\s*{re.escape(kw.get('section_splitter') or '')}\s*", response.strip())
            if s.strip()]) == n,
        "Repeat Prompt": lambda: response.strip().lower().startswith(question.strip().lower()),
        "Two Responses": lambda: (len(parts := response.split("******")) == 2
                                  and parts[0].lower().strip() != parts[1].lower().strip()),
        "All Uppercase": response.isupper,
        "All Lowercase": response.islower,
        "All-capital Words (at least)": lambda: _capitals(response) >= n,
        "All-capital Words (at most)": lambda: _capitals(response) <= n,
        "All-capital Words (range)": lambda: _between(_capitals(response), kw),
        "Start Checker": lambda: _alpha(response, True).startswith(
            _alpha(kw.get("start_phrase") or "", True)),
        "End Checker": lambda: _alpha(response, True).endswith(
            _alpha(kw.get("end_phrase") or "", True)),
        "Quotation": lambda: response.strip().startswith('"') and response.strip().endswith('"'),
        "No Commas": lambda: "," not in response,
    }
    rule = rules.get(identifier)
    return bool(rule()) if rule is not None else False


# ---------------------------------------------------------------------------- open judge

def open_judgement(text: str, strict: bool = False) -> tuple[dict[str, float], int]:
    """Scores from a judge reply, and how many of the four criteria it lacked.

    Args:
        text: the judge's reply.
        strict: False: the official extraction (a missing criterion is 3.0; an ``OVERALL``
            that is missing *or 3.0* becomes the criteria's mean); True: a missing criterion
            is 1.0 and only a missing ``OVERALL`` becomes the mean.

    Returns:
        ``({criterion: score, "overall": score}, missing criteria)``.
    """
    scores: dict[str, float] = {}
    missing = 0
    for name in _CRITERIA:
        match = re.search(rf"{name.upper()}:\s*(\d+)", text, re.IGNORECASE)
        scores[name] = float(match.group(1)) if match else (1.0 if strict else 3.0)
        missing += match is None
    overall = re.search(r"OVERALL:\s*(\d+(?:\.\d+)?)", text, re.IGNORECASE)
    mean = sum(scores[c] for c in _CRITERIA) / len(_CRITERIA)
    value = float(overall.group(1)) if overall else None
    scores["overall"] = mean if value is None or (value == 3.0 and not strict) else value
    return scores, missing


def _open_scores(records: Sequence[Mapping[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    if ctx.judge is None:
        return {"error": "open questions need a judge (--judge-url, --judge-model)"}
    overall, failed = [], 0
    for r in records:
        prompt = (OPEN_JUDGE_PROMPT.replace("{question}", str(r["question"]))
                  .replace("{reference}", str(r["reference"]))
                  .replace("{response}", str(r["response"])))
        scores, missing = open_judgement(ctx.judge.complete(prompt, OPEN_JUDGE_SETTINGS),
                                         strict=ctx.scoring == STRICT)
        failed += missing > 0
        overall.append(scores["overall"])
    mean = sum(overall) / len(overall)
    return {"score": mean / 5, "avg_overall": mean, "judge_failed": failed,
            "judge": ctx.judge.describe(OPEN_JUDGE_PROMPT, OPEN_JUDGE_SETTINGS)}


# ---------------------------------------------------------------------------- scoring

def embedding_choice(embedder: Any, response: str, choices: Sequence[str]) -> int:
    """The index of the choice whose embedding is closest (cosine) to the response's, the
    first on ties: the official closed-question matching."""
    vectors = np.asarray(embedder.embed([response, *choices]), dtype=np.float64)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return int(np.argmax(vectors[1:] @ vectors[0]))


def score_mmau_pro(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    """Per-category scores and their count-weighted mean (see the module docstring)."""
    check_pairs(records, records, VERSION)  # nothing to score is an error
    categories: dict[str, dict[str, Any]] = {}
    by_cat: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_cat.setdefault(str(r["category"]), []).append(r)
    dropped = 0
    embedder = getattr(ctx.judge, "embedder", None)
    closed_version = (STRICT_MATCH if ctx.scoring == STRICT else
                      EMBEDDING_MATCH if embedder is not None else OFFICIAL_MATCH)
    for cat, rows in by_cat.items():
        if cat == OPEN:
            categories[cat] = {"type": "open", "count": len(rows), **_open_scores(rows, ctx)}
        elif cat == FOLLOW:
            ok = [follows_instruction(str(r["response"]), str(r.get("task_identifier")),
                                      r.get("kwargs"), str(r["question"])) for r in rows]
            categories[cat] = {"type": "instruction_following", "count": len(rows),
                               "score": sum(ok) / len(ok)}
        else:
            valid = [r for r in rows if len(r["choices"]) > 1]
            dropped += len(rows) - len(valid)
            if not valid:
                continue
            official = [string_match(str(r["reference"]), str(r["response"]), r["choices"])
                        for r in valid]
            picks = [strict_choice(str(r["response"]), r["choices"]) for r in valid]
            strict = [p is not None and r["choices"][p] == r["reference"]
                      for p, r in zip(picks, valid)]
            embedded = ([r["choices"][embedding_choice(embedder, str(r["response"]),
                                                        r["choices"])] == r["reference"]
                         for r in valid] if embedder is not None else None)
            chosen = (strict if ctx.scoring == STRICT else
                      embedded if embedded is not None else official)
            categories[cat] = {"type": "closed", "count": len(valid),
                               "score": sum(chosen) / len(valid),
                               OFFICIAL_MATCH: sum(official) / len(valid),
                               STRICT_MATCH: sum(strict) / len(valid),
                               "strict_failed": sum(p is None for p in picks)}
            if embedded is not None:
                categories[cat][EMBEDDING_MATCH] = sum(embedded) / len(valid)
    scored = {c: v for c, v in categories.items() if "score" in v}
    total = sum(v["count"] for v in scored.values())
    overall = sum(v["score"] * v["count"] for v in scored.values()) / total if total else None
    return {"version": VERSION, "overall": overall, "complete": len(scored) == len(categories),
            "closed_procedure": closed_version,
            "embedding": embedder.describe() if embedder is not None else
            "none given (--embed-url): closed rows by the MMAU string match",
            "closed_dropped_fewer_than_2_choices": dropped,
            "categories": categories}


# ---------------------------------------------------------------------------- data

def read_mmau_pro(data: Path) -> EvalData:
    """The rows of MMAU-Pro's ``test.parquet`` (the file, or the folder holding it; audio
    ``audio_path`` lists relative to that folder, e.g. ``data/<uuid>.wav`` after unzipping
    ``data.zip`` there).

    Raises:
        DataError: no parquet, or rows without the official columns.
    """
    import pyarrow.parquet as pq

    path = data / "test.parquet" if data.is_dir() else data
    if not path.is_file():
        raise DataError(f"no MMAU-Pro parquet at {path}")
    rows = pq.read_table(path).to_pylist()
    items = []
    for n, row in enumerate(rows):
        missing = [k for k in ("id", "audio_path", "question", "category") if k not in row]
        if missing:
            raise DataError(f"{path}, row {n}: missing {missing}")
        audios = row["audio_path"] if isinstance(row["audio_path"], list) else [row["audio_path"]]
        fields = {"question": row["question"], "choices": [str(c) for c in row.get("choices")
                                                           or []],
                  "category": row["category"], "task_identifier": row.get("task_identifier"),
                  "kwargs": row.get("kwargs"), "sub-cat": row.get("sub-cat"),
                  "length_type": row.get("length_type")}
        items.append(EvalItem(str(row["id"]),
                              tuple(_resolve(str(a), [path.parent]) for a in audios),
                              "" if row.get("answer") is None else str(row["answer"]),
                              str(row["category"]), fields))
    if not items:
        raise DataError(f"{path} holds no rows")
    return EvalData(items)


def _request(item: EvalItem, family: FamilySpec) -> Request:
    choices = item.fields["choices"]
    closed = item.source not in (OPEN, FOLLOW) and len(choices) > 1
    text = choice_prompt(item.fields["question"], choices) if closed else item.fields["question"]
    return chat_request(item, family, text)


TASK = EvalTask("mmau-pro", "MMAU-Pro (closed: string match / strict; instruction following; "
                "open: LLM judge; count-weighted overall)", read_mmau_pro, _request,
                score_mmau_pro)
