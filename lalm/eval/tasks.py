"""Built-in evaluation tasks: where each benchmark's data lies, its official prompt per family,
its decoding budget and its scorer.

A task (`EvalTask`) reads a local copy of a benchmark into `EvalItem`s, turns an item into a
pipeline `Request` for a checkpoint family, and scores the finished prediction records.

Official suites (`OFFICIAL_SUITES`) read the JSONL files of the QwenLM evaluation scripts
(``QwenLM/Qwen-Audio`` and ``QwenLM/Qwen2-Audio`` ``eval_audio/``), one JSON object a line::

    {"audio": "path/to/clip.wav", "gt": "reference", "source": "librispeech_test_clean",
     "question": "...",            # ClothoAQA only
     "prompt": "..."}              # Qwen2-Audio's files: the base-model instruction

``--data`` is that file, or a folder holding it at one of the scripts' relative paths (e.g.
``asr/librispeech_eval.jsonl`` or ``data/asr/librispeech_eval.jsonl``). Relative audio paths
start from that folder (the scripts' working directory), else from the file's folder.

Prompts. Qwen-Audio (v1): the official task prompt (`lalm.prompt.TaskSpec` factories) and the
scripts' budget (``max_new_tokens`` 256 / 30 / 10 / 4 by task, ``min_new_tokens`` 1, greedy,
stop on ``<|endoftext|>``); the response is the decoded output with special tokens kept, as the
scripts decode it. Qwen2-Audio: the base-model prompt ``<|audio_bos|><|AUDIO|><|audio_eos|>`` +
the item's ``prompt`` field (the official files carry it), else the task's default instruction
(the official texts where Qwen2-Audio published them: ASR, S2TT, MELD, VocalSound, captioning;
lalm's own for scenes and AQA; NSynth has none); budget 256; special tokens skipped.

AIR-Bench (``airbench-foundation``, ``airbench-chat``) reads the ``Foundation_meta.json`` /
``Chat_meta.json`` layout (see `lalm.eval.airbench`); the lalm-synth task (``lalm-synth``) a lalm
manifest or a lalm-synth folder (`lalm.eval.synth_bench`); MMAU/MMAR, MMAU-Pro and VoiceBench
live in `lalm.eval.mcq`, `lalm.eval.mmau_pro` and `lalm.eval.voicebench`; the ASR tasks and
``covost2`` also read corpus folders and HF datasets (`lalm.eval.layouts`). See docs/eval.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lalm.errors import DataError, PromptError, ScoringError
from lalm.eval.airbench import (
    CHAT_META,
    FOUNDATION_META,
    foundation_instruction,
    read_meta,
    score_chat,
    score_foundation,
)
from lalm.eval.analysis import nsynth_scores
from lalm.eval.caption import cider_d, spice
from lalm.eval.layouts import read_asr, read_st
from lalm.eval.mcq import TASKS as MCQ_TASKS
from lalm.eval.metrics import (
    EXACT_MATCH,
    accuracy,
    aqa_accuracy,
    bleu,
    error_rate_by_source,
)
from lalm.eval.mmau_pro import TASK as MMAU_PRO
from lalm.eval.synth_bench import SYNTH_TASK
from lalm.eval.task import (  # the task types, re-exported: this module is where tasks are found
    OFFICIAL,
    SCORING_MODES,
    STRICT,
    EvalData,
    EvalItem,
    EvalTask,
    ScoreContext,
    chat_request,
    find_data_file,
    groups,
    read_official_jsonl,
)
from lalm.eval.voicebench import TASKS as VOICEBENCH_TASKS
from lalm.generation import Request
from lalm.prompt import AudioPart, FamilySpec, TaskSpec

# Language names for the Qwen2-Audio S2TT instruction "Translate the speech into <name>:".
_LANGUAGE_NAMES = {
    "en": "English", "de": "German", "zh": "Chinese", "ja": "Japanese", "fr": "French",
    "es": "Spanish", "it": "Italian", "ko": "Korean", "ca": "Catalan", "fa": "Persian",
    "et": "Estonian", "mn": "Mongolian", "tr": "Turkish", "ar": "Arabic", "sv": "Swedish",
    "lv": "Latvian", "sl": "Slovenian", "ta": "Tamil", "id": "Indonesian", "cy": "Welsh",
    "ru": "Russian", "pt": "Portuguese", "nl": "Dutch",
}


# ---------------------------------------------------------------------------- prompts


def _task_request(item: EvalItem, family: FamilySpec, spec: TaskSpec, default: str | None,
                  task: str) -> Request:
    """The task's prompt in the family (`FamilySpec.task_prompt`): its v1 task spec, or the
    natural-language instruction: the item's own ``prompt``, else the task default."""
    text = item.fields.get("prompt", default)
    try:
        return Request(*family.task_prompt(AudioPart(item.audios[0]), spec, text))
    except PromptError as e:
        raise PromptError(f"task {task}, item {item.id} (no official prompt for {family.name} "
                          f"and no 'prompt' field): {e}") from None


def _st_languages(item: EvalItem) -> tuple[str, str]:
    """(audio, text) language of a CoVoST2 item from its source, e.g. ``covost2_en_de_test``."""
    parts = item.source.split("_")
    if len(parts) < 3:
        raise DataError(f"CoVoST2 item {item.id}: source {item.source!r} does not name the "
                        f"languages (<name>_<audio>_<text>_<split>)")
    return parts[-3], parts[-2]


def _asr_request(language: str) -> Callable[[EvalItem, FamilySpec], Request]:
    def request(item: EvalItem, family: FamilySpec) -> Request:
        return Request(*family.asr_prompt(AudioPart(item.audios[0]), language,
                                          instruction=item.fields.get("prompt")))
    return request


def _st_request(item: EvalItem, family: FamilySpec) -> Request:
    audio, text = _st_languages(item)
    name = _LANGUAGE_NAMES.get(text)
    return _task_request(item, family, TaskSpec.s2tt(audio, text),
                         f"Translate the speech into {name}:" if name else None, "covost2")


def _fixed_request(spec: TaskSpec, default: str | None, task: str
                   ) -> Callable[[EvalItem, FamilySpec], Request]:
    def request(item: EvalItem, family: FamilySpec) -> Request:
        return _task_request(item, family, spec, default, task)
    return request


def _aqa_request(item: EvalItem, family: FamilySpec) -> Request:
    question = item.fields.get("question")
    if not isinstance(question, str):
        raise DataError(f"ClothoAQA item {item.id} has no 'question'")
    return _task_request(item, family, TaskSpec.aqa(question), question, "clothoaqa")


# ---------------------------------------------------------------------------- scorers


def _asr_score(language: str) -> Callable[[list[dict[str, Any]], ScoreContext], dict[str, Any]]:
    def score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
        version = ctx.family.asr_scoring
        rates = error_rate_by_source([r["response"] for r in records],
                                     [r["reference"] for r in records],
                                     [r["source"] for r in records], language, version)
        return {"version": version, "unit": next(iter(rates.values())).unit,
                "error_rate": {s: e.score for s, e in rates.items()},
                "count": {s: e.count for s, e in rates.items()}}
    return score


def _st_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    out: dict[str, Any] = {"bleu": {}, "signature": {}, "count": {}}
    for source, rs in groups(records).items():
        target = source.split("_")[-2]
        result = bleu([r["response"] for r in rs], [r["reference"] for r in rs], target)
        out["bleu"][source] = result.score
        out["signature"][source] = result.signature
        out["count"][source] = result.count
        out["version"] = result.version
    return out


def _accuracy_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    scores = {s: accuracy([r["response"] for r in rs], [r["reference"] for r in rs], EXACT_MATCH)
              for s, rs in groups(records).items()}
    return {"version": EXACT_MATCH, "accuracy": {s: a.score for s, a in scores.items()},
            "count": {s: a.count for s, a in scores.items()}}


def _aqa_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    out: dict[str, Any] = {"version": EXACT_MATCH, "accuracy": {}, "yes_no_accuracy": {},
                           "count": {}}
    for source, rs in groups(records).items():
        overall, binary = aqa_accuracy([r["response"] for r in rs], [r["reference"] for r in rs])
        out["accuracy"][source] = overall.score
        out["count"][source] = overall.count
        # official: the yes/no subset is reported for Clotho sources only
        if binary is not None and (ctx.scoring == STRICT or source.startswith("clotho")):
            out["yes_no_accuracy"][source] = binary.score
    return out


def _caption_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    out: dict[str, Any] = {"cider_d": {}, "spice": {}, "spider": {}, "count": {}}
    for source, rs in groups(records).items():
        hyps = [r["response"] for r in rs]
        refs = [r["reference"] if isinstance(r["reference"], list) else [r["reference"]]
                for r in rs]
        c = cider_d(hyps, refs)
        out["cider_d"][source], out["count"][source] = c.score, c.count
        out["cider_d_version"] = c.version
        try:
            s = spice(hyps, refs)
        except ScoringError as e:  # SPICE is optional (Java + CoreNLP models)
            out["spice_error"] = str(e)
            continue
        out["spice"][source] = s.score
        out["spider"][source] = (c.score + s.score) / 2
    return out


def _nsynth_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for source, rs in groups(records).items():
        result = nsynth_scores([r["response"] for r in rs], [r["reference"] for r in rs])
        out[source] = asdict(result)
    return out


# ---------------------------------------------------------------------------- the suites


def _suite(name: str, description: str, paths: Sequence[str], request: Callable,
           score: Callable, max_new_tokens: int) -> EvalTask:  # official JSONL only
    return EvalTask(name, description, lambda data: read_official_jsonl(data, paths), request,
                    score, max_new_tokens)


def _asr_suite(name: str, description: str, files: Sequence[str], language: str) -> EvalTask:
    """An ASR task reading the official JSONL or a corpus / HF layout (`lalm.eval.layouts`)."""
    paths = [p for f in files for p in (f"asr/{f}", f"data/asr/{f}")]

    def read(data: Path) -> EvalData:
        return read_asr(data, paths, name)
    return EvalTask(name, description, read, _asr_request(language), _asr_score(language), 256)


def _read_covost2(data: Path) -> EvalData:
    return read_st(data, ["st/covost2_eval.jsonl", "data/st/covost2_eval.jsonl"])


_SCENE = _fixed_request(TaskSpec.scene(), "Classify the acoustic scene in English:", "scene")

#: The official evaluation suites of Qwen-Audio and Qwen2-Audio.
OFFICIAL_SUITES: dict[str, EvalTask] = {t.name: t for t in [
    _asr_suite("librispeech", "LibriSpeech ASR (WER per source)", ["librispeech_eval.jsonl"],
               "en"),
    _asr_suite("aishell1", "AISHELL-1 ASR (CER)", ["aishell1_eval.jsonl"], "zh"),
    _asr_suite("aishell2", "AISHELL-2 ASR (CER)", ["aishell2_eval.jsonl"], "zh"),
    _asr_suite("cv15_en", "Common Voice 15 English ASR", ["cv15_asr_en_eval.jsonl"], "en"),
    _asr_suite("cv15_zh", "Common Voice 15 Mandarin ASR", ["cv15_asr_zh_eval.jsonl"], "zh"),
    _asr_suite("cv15_yue", "Common Voice 15 Cantonese ASR (Qwen2-Audio)",
               ["cv15_asr_yue_eval.jsonl"], "yue"),
    _asr_suite("cv15_fr", "Common Voice 15 French ASR", ["cv15_asr_fr_eval.jsonl"], "fr"),
    _asr_suite("fleurs_zh", "FLEURS Mandarin ASR", ["fleurs_asr_zh_eval.jsonl"], "zh"),
    EvalTask("covost2", "CoVoST2 speech translation (BLEU per language pair)", _read_covost2,
             _st_request, _st_score, 256),
    _suite("clotho", "Clotho audio captioning (CIDEr-D, SPICE, SPIDEr)",
           ["caption/clotho_eval.jsonl", "data/caption/clotho_eval.jsonl"],
           _fixed_request(TaskSpec.aac(), "Generate the caption in English:", "clotho"),
           _caption_score, 30),
    _suite("cochlscene", "CochlScene acoustic scenes (accuracy)",
           ["asc/cochlscene_eval.jsonl", "data/asc/cochlscene_eval.jsonl"], _SCENE,
           _accuracy_score, 10),
    _suite("tut2017", "TUT2017 acoustic scenes (accuracy)",
           ["asc/tut2017_eval.jsonl", "data/asc/tut2017_eval.jsonl"], _SCENE, _accuracy_score, 10),
    _suite("meld", "MELD speech emotion (accuracy)",
           ["ser/meld_eval.jsonl", "data/emotion/meld_eval.jsonl", "data/ser/meld_eval.jsonl"],
           _fixed_request(TaskSpec.emotion(), "Recognize the emotion with keywords in English:",
                          "meld"), _accuracy_score, 4),
    _suite("vocalsound", "VocalSound vocal sounds (accuracy)",
           ["vsc/vocalsound_eval.jsonl", "data/vsc/vocalsound_eval.jsonl"],
           _fixed_request(TaskSpec.vocal_sound(),
                          "Classify the human vocal sound to VocalSound in English:",
                          "vocalsound"), _accuracy_score, 4),
    _suite("clothoaqa", "ClothoAQA audio QA (accuracy, yes/no subset)",
           ["aqa/clothoaqa_eval.jsonl", "data/aqa/clothoaqa_eval.jsonl",
            "data/st/clothoaqa_eval.jsonl"], _aqa_request, _aqa_score, 4),
    _suite("nsynth", "NSynth note analysis (pitch, velocity, instrument, qualities mAP)",
           ["mna/nsynth_eval.jsonl", "data/mna/nsynth_eval.jsonl"],
           _fixed_request(TaskSpec.note_analysis(), None, "nsynth"), _nsynth_score, 30),
]}


def _read_airbench(data: Path, meta_name: str) -> EvalData:
    rows, root = read_meta(data, meta_name)
    items, skipped = [], []
    for row in rows:
        audio = root / f"{row['task_name']}_{row['dataset_name']}" / row["path"]
        if row["task_name"] == "Audio_Grounding":  # the official script reads .flac there
            audio = audio.with_suffix(".flac")
        if not audio.exists():  # the official inference script skips missing audio
            skipped.append(f"{audio}: missing audio")
            continue
        fields = {k: v for k, v in row.items() if k not in ("path", "answer_gt")}
        items.append(EvalItem(str(row["uniq_id"]), (str(audio),), row["answer_gt"],
                              f"{row['task_name']}_{row['dataset_name']}",
                              {"path": row["path"], **fields}))
    return EvalData(items, skipped)


def _foundation_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    rows = [{**r, "answer_gt": r["reference"]} for r in records]
    result = score_foundation(rows, ctx.scoring)
    return {"version": result.version, "overall": result.overall.score, "macro": result.macro,
            "failed": result.overall.failed, "scored": result.overall.scored,
            "groups": {g: a.score for g, a in result.groups.items()}}


def _chat_score(records: list[dict[str, Any]], ctx: ScoreContext) -> dict[str, Any]:
    if ctx.judge is None:
        raise ScoringError("airbench-chat needs a judge endpoint (--judge-url, --judge-model)")
    rows = [{**r, "answer_gt": r["reference"]} for r in records]
    return score_chat(rows, ctx.judge).to_dict()


def _builtin_tasks() -> dict[str, EvalTask]:
    airbench = {
        "airbench-foundation": EvalTask(
            "airbench-foundation", "AIR-Bench foundation single-choice questions (accuracy)",
            lambda data: _read_airbench(data, FOUNDATION_META),
            lambda item, family: chat_request(item, family, foundation_instruction(item.fields)),
            _foundation_score),
        "airbench-chat": EvalTask(
            "airbench-chat", "AIR-Bench chat (LLM judge, 1-10, both orders averaged)",
            lambda data: _read_airbench(data, CHAT_META),
            lambda item, family: chat_request(item, family, item.fields["question"]),
            _chat_score),
    }
    return {**OFFICIAL_SUITES, **airbench, SYNTH_TASK.name: SYNTH_TASK, **MCQ_TASKS,
            MMAU_PRO.name: MMAU_PRO, **VOICEBENCH_TASKS}


def task_names() -> list[str]:
    """Every built-in task name."""
    return list(_builtin_tasks())


def get_task(name: str) -> EvalTask:
    """A built-in task by name.

    Raises:
        DataError: an unknown name (the message lists the known ones).
    """
    tasks = _builtin_tasks()
    if name not in tasks:
        raise DataError(f"unknown evaluation task {name!r}; known: {', '.join(tasks)}")
    return tasks[name]


__all__ = [
    "OFFICIAL", "OFFICIAL_SUITES", "SCORING_MODES", "STRICT", "EvalData", "EvalItem", "EvalTask",
    "ScoreContext", "chat_request", "find_data_file", "get_task", "groups", "read_official_jsonl",
    "task_names",
]
