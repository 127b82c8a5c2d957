"""What an evaluation task is: its items (`EvalItem`, `EvalData`), its scoring context
(`ScoreContext`), the task itself (`EvalTask`), and the helpers every benchmark module shares
(reading the official JSONL files, grouping records, the one-turn chat request).

The benchmark modules (`lalm.eval.layouts`, `mcq`, `mmau_pro`, `voicebench`, `synth_bench`)
build on this module; `lalm.eval.tasks` gathers them into the registry of built-in tasks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lalm.errors import DataError, ScoringError
from lalm.generation import GenerationOptions, Request
from lalm.prompt import AudioPart, FamilySpec, Message, TextPart, build_chat_prompt

OFFICIAL = "official"
STRICT = "strict"
SCORING_MODES = (OFFICIAL, STRICT)

@dataclass(frozen=True)
class EvalItem:
    """One item to answer.

    Attributes:
        id: unique within the data set (the official files' line number when they have none).
        audios: absolute audio paths, in prompt order.
        reference: the ground truth (a list for several reference captions; "" when the
            benchmark's scorer reads its truth from ``fields``).
        source: the scoring group (the official ``source``, a synth task, an AIR-Bench group).
        fields: everything else the prompt or the scorer needs (JSON values).
    """

    id: str
    audios: tuple[str, ...]
    reference: str | list[str]
    source: str
    fields: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The item as a predictions-file record (the runner adds the response)."""
        return {"id": self.id, "audios": list(self.audios), "reference": self.reference,
                "source": self.source, **self.fields}


@dataclass(frozen=True)
class EvalData:
    """A data set as read: its items, and what was left out with the reason (``path: why``)."""

    items: list[EvalItem]
    skipped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScoreContext:
    """What a scorer may depend on besides the records.

    Attributes:
        family: the model's prompt family (picks e.g. the ASR procedure).
        scoring: ``"official"`` (each benchmark's procedure, quirks included) or ``"strict"``
            (nothing dropped or forgiven: failed extractions count as wrong, exact matches).
        judge: the LLM judge of judged tasks (`lalm.eval.judge.ChatJudge`).
    """

    family: FamilySpec
    scoring: str = OFFICIAL
    judge: Any = None

    def __post_init__(self) -> None:
        if self.scoring not in SCORING_MODES:
            raise ScoringError(f"unknown scoring mode {self.scoring!r}; use official or strict")


@dataclass(frozen=True)
class EvalTask:
    """One benchmark.

    Attributes:
        name: the ``--task`` name.
        description: one line for ``--help`` and summaries.
        read: data path -> `EvalData`.
        request: (item, family) -> the pipeline request (raises `PromptError` when the family
            has no prompt for the task).
        score: (prediction records, context) -> JSON-ready scores, each with its version.
        max_new_tokens: the budget with task-tag prompts (the v1 scripts'; Qwen2-Audio's scripts
            use 256 everywhere).
        chat_max_new_tokens: the budget for families without task tags.
    """

    name: str
    description: str
    read: Callable[[Path], EvalData]
    request: Callable[[EvalItem, FamilySpec], Request]
    score: Callable[[list[dict[str, Any]], ScoreContext], dict[str, Any]]
    max_new_tokens: int = 256
    chat_max_new_tokens: int = 256

    def options(self, family: FamilySpec, eod_id: int) -> GenerationOptions:
        """The official decoding settings for a family (greedy, at least one token): the v1
        scripts stop task-tag prompts at ``<|endoftext|>`` alone."""
        if family.task_tags:
            return GenerationOptions(max_new_tokens=self.max_new_tokens, min_new_tokens=1,
                                     stop_token_ids=(eod_id,))
        return GenerationOptions(max_new_tokens=self.chat_max_new_tokens, min_new_tokens=1)


def find_data_file(data: Path, candidates: Sequence[str]) -> tuple[Path, Path]:
    """The data file and the folder its relative audio paths start from.

    Args:
        data: a file, or a folder holding one of ``candidates`` (relative paths).
        candidates: where the official scripts look, relative to their working directory.

    Raises:
        DataError: nothing found (the message lists where it looked).
    """
    if data.is_file():
        return data, data.parent
    tried = [data / c for c in candidates]
    for path in tried:
        if path.is_file():
            return path, data
    raise DataError(f"no data file at {data}; looked for " + ", ".join(map(str, tried)))


def _resolve(path: str, roots: Sequence[Path]) -> str:
    """An absolute audio path: as given, else under the first root where it exists."""
    if os.path.isabs(path):
        return path
    for root in roots:
        if (root / path).exists():
            return str((root / path).resolve())
    return str((roots[0] / path).resolve())


def read_official_jsonl(data: Path, candidates: Sequence[str]) -> EvalData:
    """Items of an official evaluation JSONL (``audio``, ``gt``, ``source`` and extras).

    Raises:
        DataError: a missing file, or a line that is not JSON or lacks a field (the message
            names the file and line).
    """
    path, root = find_data_file(data, candidates)
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, gt, source = row["audio"], row["gt"], row["source"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise DataError(f"{path}:{n}: not an evaluation record ({e!r})") from e
            extra = {k: v for k, v in row.items() if k not in ("audio", "gt", "source")}
            items.append(EvalItem(str(row.get("id", n)), (_resolve(audio, [root, path.parent]),),
                                  gt, source, extra))
    if not items:
        raise DataError(f"{path} holds no records")
    return EvalData(items)


def chat_request(item: EvalItem, family: FamilySpec, text: str) -> Request:
    """One user turn: the item's audio, then ``text`` (AIR-Bench, both families' chat format)."""
    parts = (*(AudioPart(a) for a in item.audios), TextPart(text))
    return Request(build_chat_prompt([Message("user", parts)], family))



def groups(records: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Records by ``source``, in order of first appearance (as the official scripts group)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(r["source"], []).append(r)
    return out
