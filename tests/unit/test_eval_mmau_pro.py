"""MMAU-Pro: the reader on a test.parquet in the official columns (built here with pyarrow),
the instruction-following rules, the open-judge score extraction and the count-weighted
overall, worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from lalm.eval.mmau_pro import follows_instruction, open_judgement
from lalm.eval.tasks import ScoreContext, get_task
from lalm.prompt import QWEN2_AUDIO

ROWS = [  # (id, category, choices, answer, task_identifier, kwargs, response)
    ("c1", "sound", ["Dog", "Cat"], "Dog", None, None, "Dog"),
    ("c2", "sound", ["Dog", "Cat"], "Cat", None, None, "B"),
    ("c3", "music", ["Piano"], "Piano", None, None, "Piano"),
    ("i1", "instruction following", [], None, "No Commas", None, "Yes, it is"),
    ("i2", "instruction following", [], None, "Number Words (at most)", {"N": 3},
     "one two three"),
    ("i3", "instruction following", [], None, "All Lowercase", None, "hello"),
    ("o1", "open", [], "a dog barks", None, None, "a dog"),
]


def write_parquet(root: Path) -> Path:
    audio = root / "data"
    audio.mkdir(parents=True, exist_ok=True)
    rows = []
    for rid, cat, choices, answer, ident, kwargs, _ in ROWS:
        sf.write(audio / f"{rid}.wav", np.zeros(800, dtype=np.float32), 16000)
        paths = [f"data/{rid}.wav"] + ([f"data/{rid}.wav"] if rid == "c1" else [])
        rows.append({"id": rid, "audio_path": paths, "question": f"question {rid}",
                     "answer": answer, "choices": choices, "category": cat,
                     "task_identifier": ident,
                     "kwargs": {"N": None, "keywords": None, **(kwargs or {})},
                     "length_type": "short", "sub-cat": None, "transcription": None})
    path = root / "test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _records(root: Path) -> list[dict]:
    task = get_task("mmau-pro")
    items = task.read(root).items
    return [{**item.record(), "response": row[-1]} for item, row in zip(items, ROWS)]


def test_reader_keeps_audio_lists_and_categories(tmp_path: Path) -> None:
    write_parquet(tmp_path)
    task = get_task("mmau-pro")
    items = task.read(tmp_path / "test.parquet").items
    assert [i.id for i in items] == [r[0] for r in ROWS]
    assert items[0].audios == (str((tmp_path / "data" / "c1.wav").resolve()),) * 2
    assert items[3].reference == "" and items[4].fields["kwargs"]["N"] == 3
    closed = task.request(items[0], QWEN2_AUDIO).prompt.text
    assert closed.count("<|AUDIO|>") == 2 and "Choices:\n- Dog\n- Cat" in closed
    assert "Choices" not in task.request(items[6], QWEN2_AUDIO).prompt.text


def test_scores_without_a_judge_worked_by_hand(tmp_path: Path) -> None:
    write_parquet(tmp_path)
    # closed "sound": c1 right by both rules, c2 "B" right only by strict; "music" c3 has one
    # choice and is dropped. instruction following: i1 has a comma (fails), i2 and i3 pass.
    # official overall = (0.5 * 2 + 2/3 * 3) / 5 = 0.6; strict = (1.0 * 2 + 2) / 5 = 0.8
    task = get_task("mmau-pro")
    official = task.score(_records(tmp_path), ScoreContext(QWEN2_AUDIO))
    strict = task.score(_records(tmp_path), ScoreContext(QWEN2_AUDIO, "strict"))
    assert official["overall"] == pytest.approx(0.6) and strict["overall"] == pytest.approx(0.8)
    assert official["complete"] is False and "judge" in official["categories"]["open"]["error"]
    sound = official["categories"]["sound"]
    assert (sound["score"], sound["lalm-mc-strict-v1"], sound["count"]) == (0.5, 1.0, 2)
    assert official["closed_dropped_fewer_than_2_choices"] == 1
    assert official["categories"]["instruction following"]["score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("identifier, kwargs, response, ok", [
    ("Include Keywords", {"keywords": "dog, cat"}, "A Dog and a cat.", True),
    ("Include Keywords", {"keywords": "dog, cat"}, "A dog.", False),
    ("Keyword Frequency", {"keyword": "dog", "N": 2}, "dog, Dog, doggy", True),
    ("Forbidden Words", {"forbidden_words": "bad"}, "badly done", False),  # substring, officially
    ("Number Paragraphs", {"N": 2}, "one *** two ***", True),
    ("Number Words (range)", {"N1": 2, "N2": 3}, "a b c d", False),
    ("Number Sentences (at least)", {"N": 2}, "One. Two! Three?", True),
    ("Postscript", {"postscript_marker": "P.S."}, "Bye. ps: see you", True),
    ("Number Bullets", {"N": 2}, "* a\n* b\nc", True),
    ("Title", {}, "<<Hi>> there", True),
    ("Multiple Sections", {"N": 2, "section_splitter": "SECTION"}, "SECTION 1 a SECTION 2 b",
     True),
    ("Repeat Prompt", {}, "question x. Answer", True),
    ("Two Responses", {}, "a ****** b", True),
    ("All-capital Words (at most)", {"N": 1}, "HELLO WORLD", False),
    ("Start Checker", {"start_phrase": "Well,"}, "well then", True),
    ("End Checker", {"end_phrase": "Done!"}, "It is done", True),
    ("Quotation", {}, ' "quoted" ', True),
    ("Unknown Rule", {}, "anything", False),
])
def test_instruction_rules(identifier, kwargs, response, ok) -> None:
    assert follows_instruction(response, identifier, kwargs, "Question x.") is ok


def test_open_judgement_extraction_official_quirks_and_strict() -> None:
    full = "CORRECTNESS: 5 - a\nRELEVANCE: 5 - b\nCOMPLETENESS: 4 - c\nCLARITY: 4 - d\nOVERALL: 3"
    # official: an OVERALL of exactly 3 is replaced by the criteria's mean (18 / 4 = 4.5)
    assert open_judgement(full)[0]["overall"] == 4.5
    assert open_judgement(full, strict=True)[0]["overall"] == 3.0
    # nothing readable: official 3.0 everywhere, strict 1.0; four criteria missing either way
    assert open_judgement("I refuse.") == ({"correctness": 3.0, "relevance": 3.0,
                                            "completeness": 3.0, "clarity": 3.0,
                                            "overall": 3.0}, 4)
    assert open_judgement("I refuse.", strict=True)[0]["overall"] == 1.0
