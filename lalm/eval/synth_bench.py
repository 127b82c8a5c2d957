"""The lalm-synth benchmark: every lalm-synth task and its AIR-Bench export, one table and chart.

    lalm bench-synth --model runs/default/export --data data/lalm-synth --out runs/bench

lalm-synth is lalm's own benchmark, so its procedure is defined here (version
``lalm-synth-v1``). Per task (the items' ``source`` is their task name):

========================= ============================== =====================================
tasks                     metric                         chart score (0-100, higher is better)
========================= ============================== =====================================
asr                       WER/CER per spoken language    100 x (1 - mean error rate), >= 0
                          (the family's official ASR
                          procedure), their mean
s2tt                      BLEU per target language,      the mean BLEU
                          their mean
srwt                      WER of the words, and the      100 x (1 - WER), >= 0
                          average shift of aligned words
mixed_caption             CIDEr-D (basic-normalised,     10 x CIDEr-D, <= 100
                          whitespace tokens)
everything else           accuracy against the target    100 x accuracy
========================= ============================== =====================================

Accuracy: ``official`` compares after Whisper's basic normaliser (case, punctuation and spacing
ignored, `NORMALIZED_MATCH`), ``strict`` the raw response exactly (`EXACT_MATCH`). Timed words:
a Qwen-Audio answer continues the prompt's primed ``<|0.00|>``, which is put back in front
before parsing; a Qwen2-Audio answer is plain ``word (start-end)`` text.

The AIR-Bench export (``airbench/`` beside the manifests) is run as ``airbench-foundation``
and reported in both scoring modes (one set of predictions, scored twice).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lalm import prompt as P
from lalm.data.manifest import Example, iter_manifest
from lalm.data.render import render_prompt, task_spec
from lalm.errors import DataError, PromptError, ScoringError
from lalm.eval.analysis import average_shift
from lalm.eval.caption import cider_d
from lalm.eval.metrics import (
    ASR_QWEN_AUDIO,
    EXACT_MATCH,
    NORMALIZED_MATCH,
    accuracy,
    bleu,
    error_rate,
)
from lalm.eval.normalizers import basic_normalize
from lalm.eval.task import STRICT, EvalData, EvalItem, EvalTask, ScoreContext, groups
from lalm.generation import Request

SYNTH_VERSION = "lalm-synth-v1"
_V2_TIMED_WORD = re.compile(r"(\S+) \((\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)\)")


def _read(data: Path) -> EvalData:
    """A lalm manifest, or a lalm-synth folder (its ``test.jsonl``)."""
    manifest = data / "test.jsonl" if data.is_dir() else data
    root = manifest.parent
    items = [EvalItem(ex.id, tuple(str((root / a.path).resolve()) for a in ex.audios),
                      ex.target, ex.task.name,
                      {"example": ex.to_dict(), "audio_root": str(root.resolve())})
             for ex in iter_manifest(manifest)]
    if not items:
        raise DataError(f"{manifest} holds no examples")
    return EvalData(items)


def _request(item: EvalItem, family: P.FamilySpec) -> Request:
    example = Example.from_dict(item.fields["example"])
    return Request(render_prompt(example, family, item.fields["audio_root"]),
                   task_spec(example, family))


def _timed_words(record: dict[str, Any], family: P.FamilySpec) -> str:
    """A response's timed words in the tag form `average_shift` reads ("" if none parse): the
    SRWT tags of a family with task tags (its prompt primed 0.00), else the plain-text form
    `lalm.data.render.render_target` writes."""
    if family.task_tags:
        return P.timestamp_tag(0.0) + record["response"]
    words = [P.TimedWord(w, float(s), float(e))
             for w, s, e in _V2_TIMED_WORD.findall(record["response"])]
    try:
        return P.format_timed_words(words)
    except PromptError:  # times outside [0, 30] s: no usable answer
        return ""


def _plain_words(record: dict[str, Any], family: P.FamilySpec) -> str:
    if family.task_tags:
        return record["text"]
    return " ".join(w for w, _, _ in _V2_TIMED_WORD.findall(record["response"]))


def _row(metric: str, value: float, score: float, count: int, version: str,
         **extra: Any) -> dict[str, Any]:
    return {"metric": metric, "value": value, "score": max(0.0, min(100.0, score)),
            "count": count, "version": version, **extra}


def _score_task(name: str, rs: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    examples = [Example.from_dict(r["example"]) for r in rs]
    if name == "asr":
        version = ctx.family.asr_scoring
        by_lang: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_lang.setdefault(ex.task.audio_language or "unknown", []).append(i)
        rates = {lang: error_rate([rs[i]["response"] for i in idx],
                                  [rs[i]["reference"] for i in idx], lang, version).score
                 for lang, idx in sorted(by_lang.items())}
        mean = sum(rates.values()) / len(rates)
        return _row("error rate", mean, 100 * (1 - mean), len(rs), version, per_language=rates)
    if name == "s2tt":
        by_target: dict[str, list[int]] = {}
        for i, ex in enumerate(examples):
            by_target.setdefault(ex.task.output_language, []).append(i)
        scores = {lang: bleu([rs[i]["response"] for i in idx], [rs[i]["reference"] for i in idx],
                             lang).score for lang, idx in sorted(by_target.items())}
        mean = sum(scores.values()) / len(scores)
        return _row("BLEU", mean, mean, len(rs), SYNTH_VERSION, per_language=scores)
    if name == "srwt":
        wer = error_rate([_plain_words(r, ctx.family) for r in rs],
                         [r["reference"] for r in rs], "en", ASR_QWEN_AUDIO).score
        refs = [P.format_timed_words([w for w in ex.words if w.word is not None])
                for ex in examples]
        try:
            shift = average_shift([_timed_words(r, ctx.family) for r in rs], refs)
            aas: float | None = shift.score
        except ScoringError:  # no word aligned anywhere
            aas = None
        return _row("WER", wer, 100 * (1 - wer), len(rs), SYNTH_VERSION, average_shift_s=aas)
    if name == "mixed_caption":
        result = cider_d([basic_normalize(r["response"]) for r in rs],
                         [[basic_normalize(r["reference"])] for r in rs], tokenize="none")
        return _row("CIDEr-D", result.score, 10 * result.score, len(rs), result.version)
    version = EXACT_MATCH if ctx.scoring == STRICT else NORMALIZED_MATCH
    field = "response" if ctx.scoring == STRICT else "text"
    acc = accuracy([r[field] for r in rs], [r["reference"] for r in rs], version).score
    return _row("accuracy", acc, 100 * acc, len(rs), version)


def _score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    return {"version": SYNTH_VERSION,
            "tasks": {name: {"category": rs[0]["example"]["metadata"].get("category"),
                             **_score_task(name, rs, ctx)}
                      for name, rs in groups(records).items()}}


#: lalm-synth as an evaluation task (all tasks of a manifest, scored per task).
SYNTH_TASK = EvalTask("lalm-synth", "every lalm-synth task of a manifest (per-task scores)",
                      _read, _request, _score)
