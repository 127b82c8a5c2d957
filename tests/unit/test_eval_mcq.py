"""MMAU / MMAR: readers on files in the suites' own formats, and the official string match
against lalm's strict extraction on hand-made predictions whose expected accuracies are worked
out by hand below."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from lalm.errors import DataError
from lalm.eval.mcq import (
    OFFICIAL_MATCH,
    STRICT_MATCH,
    SUBSTRING_MATCH,
    strict_choice,
    string_match,
    substring_match,
)
from lalm.eval.tasks import ScoreContext, get_task
from lalm.prompt import QWEN2_AUDIO

CHOICES = ["Man", "Woman", "Child", "Robot"]


def _wav(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(1600, dtype=np.float32), 16000)


@pytest.mark.parametrize("prediction, answer, official, substring, strict", [
    ("Man", "Man", True, True, 0),
    ("A", "Man", False, False, 0),                 # letters never match the official rule
    ("The answer is Man.", "Man", True, True, 0),
    ("A man, not a woman", "Man", False, False, None),   # names two choices
    ("woman", "Woman", True, False, 1),            # "man" is a substring of "woman"
    ("(A) Man", "Woman", False, False, 0),
    ("", "Man", False, False, None),
])
def test_rules_on_single_predictions(prediction, answer, official, substring, strict) -> None:
    assert string_match(answer, prediction, CHOICES) is official
    assert substring_match(answer, prediction, CHOICES) is substring
    assert strict_choice(prediction, CHOICES) == strict


def test_official_rule_ignores_choices_that_share_the_answers_tokens() -> None:
    choices = ["dog barking", "dog", "cat"]
    # incorrect tokens: from "dog": none ("dog" is in the answer); from "cat": {"cat"}
    assert string_match("dog barking", "a dog is barking", choices)
    assert not string_match("dog barking", "dog", choices)   # "barking" missing
    assert strict_choice("dog barking", choices) == 0        # widest of "dog barking" / "dog"


def _records() -> list[dict]:
    rows = [("Man", "Man", "sound"), ("A", "Man", "sound"), ("The answer is Man.", "Man", "sound"),
            ("A man, not a woman", "Man", "sound"), ("woman", "Woman", "music"),
            ("(A) Man", "Woman", "music")]
    return [{"id": str(i), "response": p, "reference": a, "choices": CHOICES, "task": t,
             "difficulty": "easy", "sub-category": "x", "source": t}
            for i, (p, a, t) in enumerate(rows)]


def test_score_shows_official_substring_and_strict_worked_by_hand() -> None:
    # official  (mmau-string-match-v2): rows 0, 2, 4 right          -> 3/6 = 0.5
    # substring (mmau-substring-v1):    rows 0, 2 right              -> 2/6
    # strict    (letters or one choice): rows 0, 1 ("A" = Man), 2, 4 -> 4/6; row 3 fails
    # by task, official: sound 2/4, music 1/2; strict: sound 3/4, music 1/2
    task = get_task("mmau")
    official = task.score(_records(), ScoreContext(QWEN2_AUDIO))
    strict = task.score(_records(), ScoreContext(QWEN2_AUDIO, "strict"))
    assert official["version"] == OFFICIAL_MATCH and official["accuracy"] == 0.5
    assert strict["version"] == STRICT_MATCH and strict["accuracy"] == pytest.approx(4 / 6)
    procs = official["procedures"]
    assert procs[SUBSTRING_MATCH]["accuracy"] == pytest.approx(2 / 6)
    assert procs == strict["procedures"]  # both numbers in either mode
    assert procs[OFFICIAL_MATCH]["by"]["task"] == {"sound": 0.5, "music": 0.5}
    assert procs[STRICT_MATCH]["by"]["task"] == {"sound": 0.75, "music": 0.5}
    assert official["strict_failed"] == 1


def test_mmau_reader_reads_the_test_mini_json(tmp_path: Path) -> None:
    rows = [{"id": "q1", "audio_id": "./test-mini-audios/q1.wav", "question": "Who speaks?",
             "choices": CHOICES, "answer": "Man", "dataset": "AudioSet", "task": "sound",
             "split": "test-mini", "category": "Reasoning", "sub-category": "Source",
             "difficulty": "medium"}]
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(rows))
    _wav(tmp_path / "test-mini-audios" / "q1.wav")
    task = get_task("mmau")
    item = task.read(tmp_path).items[0]
    assert item.audios == (str((tmp_path / "test-mini-audios" / "q1.wav").resolve()),)
    assert (item.reference, item.source, item.fields["difficulty"]) == ("Man", "sound", "medium")
    prompt = task.request(item, QWEN2_AUDIO).prompt.text
    assert "Who speaks?\nChoices:\n- Man\n- Woman\n- Child\n- Robot\nAnswer with one" in prompt
    withheld = [{**rows[0], "answer": None}]
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps(withheld))
    with pytest.raises(DataError, match="withheld"):
        task.read(tmp_path)
    (tmp_path / "mmau-test-mini.json").write_text(json.dumps([{**rows[0], "answer": "Dog"}]))
    with pytest.raises(DataError, match="none of the choices"):
        task.read(tmp_path)


def test_mmar_reader_reads_the_meta_jsonl(tmp_path: Path) -> None:
    row = {"id": "x_00-01", "audio_path": "./audio/x.wav", "question": "Where is this from?",
           "choices": ["Canyon", "Forest", "Grassland"], "answer": "Grassland",
           "modality": "mix-sound-music", "category": "Cultural Layer",
           "sub-category": "Knowledge", "language": None, "source": "youtube"}
    (tmp_path / "MMAR-meta.jsonl").write_text(json.dumps(row) + "\n")
    _wav(tmp_path / "audio" / "x.wav")
    task = get_task("mmar")
    data = task.read(tmp_path / "MMAR-meta.jsonl")
    item = data.items[0]
    assert item.source == "mix-sound-music" and item.fields["category"] == "Cultural Layer"
    record = {**item.record(), "response": "Open grassland"}
    score = task.score([record], ScoreContext(QWEN2_AUDIO))
    assert score["accuracy"] == 1.0
    assert score["procedures"][OFFICIAL_MATCH]["by"]["category"] == {"Cultural Layer": 1.0}
    assert score["procedures"][STRICT_MATCH]["accuracy"] == 1.0


def test_mmar_reader_reads_a_hf_copy_with_an_audio_column(tmp_path: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("LALM_CACHE", str(tmp_path / "cache"))
    _wav(tmp_path / "x.wav")
    ds = datasets.Dataset.from_dict({
        "audio": [str(tmp_path / "x.wav")], "id": ["x"], "question": ["Which?"],
        "choices": [["Canyon", "Forest"]], "answer": ["Forest"], "modality": ["sound"],
        "category": ["Signal Layer"], "sub-category": ["s"], "language": [None]})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "hf"))
    item = get_task("mmar").read(tmp_path / "hf").items[0]
    assert (item.id, item.reference, item.source) == ("x", "Forest", "sound")
    assert Path(item.audios[0]).read_bytes() == (tmp_path / "x.wav").read_bytes()
