"""Evaluation tasks: official data layouts, official prompts per family (golden strings from the
QwenLM scripts), scorers on prediction records, AIR-Bench prompt text and the chat judge client
against a local HTTP server."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import loopback_server

from lalm.errors import DataError, PromptError, ScoringError
from lalm.eval.airbench import (
    ChatJudge,
    foundation_instruction,
    judge_prompt,
    parse_judge_scores,
    score_chat,
)
from lalm.eval.evaluate import read_predictions
from lalm.eval.tasks import OFFICIAL_SUITES, ScoreContext, get_task, task_names
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO

V1, V2 = QWEN_AUDIO, QWEN2_AUDIO


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# The official v1 prompts (QwenLM/Qwen-Audio eval_audio/evaluate_*.py), audio path "a.wav".
V1_PROMPTS = {
    "librispeech": "<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|>"
                   "<|notimestamps|><|wo_itn|>",
    "aishell2": "<audio>a.wav</audio><|startoftranscript|><|zh|><|transcribe|><|zh|>"
                "<|notimestamps|><|wo_itn|>",
    "covost2": "<audio>a.wav</audio><|startoftranscript|><|en|><|translate|><|de|>"
               "<|notimestamps|><|itn|>",
    "clotho": "<audio>a.wav</audio><|startofanalysis|><|unknown|><|caption|><|en|>"
              "<|notimestamps|><|caption_clotho|>",
    "cochlscene": "<audio>a.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|>"
                  "<|notimestamps|><|scene|>",
    "meld": "<audio>a.wav</audio><|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|>"
            "<|emotion_recognition|>",
    "vocalsound": "<audio>a.wav</audio><|startofanalysis|><|en|><|keyword|><|en|>"
                  "<|notimestamps|><|vocal_classification|>",
    "clothoaqa": "<audio>a.wav</audio><|startofanalysis|><|en|><|question|>Is it raining?"
                 "<|answer|>",
    "nsynth": "<audio>a.wav</audio><|startofanalysis|><|unknown|><|keyword|><|en|>"
              "<|notimestamps|><|note_analysis|>",
}
V1_BUDGET = {"librispeech": 256, "covost2": 256, "clotho": 30, "cochlscene": 10, "meld": 4,
             "vocalsound": 4, "clothoaqa": 4, "nsynth": 30}


@pytest.mark.parametrize("name", sorted(V1_PROMPTS))
def test_v1_prompts_are_the_official_task_prompts(name: str, tmp_path: Path) -> None:
    task = get_task(name)
    row = {"audio": "a.wav", "gt": "x", "source": "covost2_en_de_test", "question": "Is it raining?"}
    item = task.read(_write_jsonl(tmp_path / "x.jsonl", [row])).items[0]
    prompt = task.request(item, V1).prompt
    audio = item.audios[0]
    assert audio == str((tmp_path / "a.wav").resolve())
    assert prompt.text == V1_PROMPTS[name].replace("a.wav", audio)
    options = task.options(V1, eod_id=151643)
    assert options.max_new_tokens == V1_BUDGET.get(name, 256)
    assert (options.min_new_tokens, options.stop_token_ids, options.temperature) == (1, (151643,), 0)


def test_v2_prompts_use_the_items_prompt_else_the_official_default(tmp_path: Path) -> None:
    rows = [{"audio": "a.wav", "gt": "x", "source": "librispeech_test_clean",
             "prompt": "Detect the language and recognize the speech: <|en|>"},
            {"audio": "b.wav", "gt": "y", "source": "librispeech_test_clean"}]
    task = get_task("librispeech")
    items = task.read(_write_jsonl(tmp_path / "asr" / "librispeech_eval.jsonl", rows)).items
    texts = [task.request(i, V2).prompt.text for i in items]
    assert texts == [("<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize "
                      "the speech: <|en|>")] * 2
    st = get_task("covost2")
    item = st.read(_write_jsonl(tmp_path / "st.jsonl", [
        {"audio": "a.wav", "gt": "x", "source": "covost2_en_ja_test"}])).items[0]
    assert st.request(item, V2).prompt.text.endswith("Translate the speech into Japanese:")
    assert st.options(V2, 151643).max_new_tokens == 256
    nsynth = get_task("nsynth")
    with pytest.raises(PromptError, match="nsynth"):
        nsynth.request(nsynth.read(tmp_path / "st.jsonl").items[0], V2)
    with pytest.raises(PromptError, match="yue"):  # Qwen-Audio has no Cantonese tag
        get_task("cv15_yue").request(items[0], V1)


def test_data_folders_are_found_at_the_official_relative_paths(tmp_path: Path) -> None:
    _write_jsonl(tmp_path / "data" / "asc" / "tut2017_eval.jsonl",
                 [{"audio": "clips/a.wav", "gt": "park", "source": "tut2017"}])
    data = get_task("tut2017").read(tmp_path)
    assert data.items[0].audios == (str((tmp_path / "clips" / "a.wav").resolve()),)
    with pytest.raises(DataError, match="looked for"):
        get_task("meld").read(tmp_path)
    with pytest.raises(DataError, match="unknown evaluation task 'nope'"):
        get_task("nope")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"audio": "a.wav"}])
    with pytest.raises(DataError, match=r"bad.jsonl:1"):
        get_task("meld").read(bad)
    assert set(OFFICIAL_SUITES) <= set(task_names())


def _records(pairs: list[tuple[str, str | list[str], str]]) -> list[dict]:
    return [{"id": str(i), "response": h, "text": h, "reference": r, "source": s}
            for i, (h, r, s) in enumerate(pairs)]


def test_scorers_follow_the_family_procedure_per_source() -> None:
    asr = get_task("librispeech")
    records = _records([("Hello, world.", "hello world", "clean"),
                        ("hello world", "hello world", "other")])
    v1 = asr.score(records, ScoreContext(V1))
    v2 = asr.score(records, ScoreContext(V2))
    assert v1["version"] == "qwen-audio-asr-v1" and v2["version"] == "qwen2-audio-asr-v1"
    assert v1["error_rate"] == {"clean": 1.0, "other": 0.0}  # v1 keeps punctuation
    assert v2["error_rate"] == {"clean": 0.0, "other": 0.0}
    acc = get_task("meld").score(_records([("sad ", "sad", "meld"), ("Sad", "sad", "meld")]),
                                 ScoreContext(V1))
    assert acc["accuracy"] == {"meld": 0.5} and acc["version"] == "exact-match-v1"
    aqa = _records([("yes", "yes", "clotho_aqa"), ("no", "yes", "clotho_aqa"),
                    ("dog", "dog", "other_aqa"), ("yes", "yes", "other_aqa")])
    official = get_task("clothoaqa").score(aqa, ScoreContext(V1))
    strict = get_task("clothoaqa").score(aqa, ScoreContext(V1, "strict"))
    assert official["yes_no_accuracy"] == {"clotho_aqa": 0.5}  # Clotho sources only
    assert strict["yes_no_accuracy"] == {"clotho_aqa": 0.5, "other_aqa": 1.0}
    de = "Guten Tag, wie geht es dir?"
    st = get_task("covost2").score(_records([(de, de, "covost2_en_de_test")]), ScoreContext(V2))
    assert st["bleu"]["covost2_en_de_test"] == pytest.approx(100.0)
    with pytest.raises(ScoringError, match="scoring mode"):
        ScoreContext(V1, "lenient")


def test_foundation_instruction_is_the_official_text() -> None:
    item = {"question": "What is heard?", "choice_a": "dog", "choice_b": "cat"}
    assert foundation_instruction(item) == (
        "Choose the most suitable answer from options A, B, C, and D to respond the question in "
        "next line, you may only choose A or B or C or D.\nWhat is heard?\n"
        "A. dog\nB. cat\nC. None\nD. None")


def test_airbench_reader_skips_missing_audio(tmp_path: Path) -> None:
    meta = [{"path": f"{i}.wav", "question": "q", "choice_a": "x", "choice_b": "y",
             "answer_gt": "x", "task_name": "Sound_Event_Classification",
             "dataset_name": "demo", "uniq_id": i} for i in range(2)]
    (tmp_path / "Foundation_meta.json").write_text(json.dumps(meta))
    (tmp_path / "Sound_Event_Classification_demo").mkdir()
    (tmp_path / "Sound_Event_Classification_demo" / "0.wav").write_bytes(b"RIFF")
    data = get_task("airbench-foundation").read(tmp_path)
    assert [i.id for i in data.items] == ["0"] and data.items[0].reference == "x"
    assert len(data.skipped) == 1 and "1.wav" in data.skipped[0]
    records = [{**data.items[0].record(), "response": "The answer is B."}]
    score = get_task("airbench-foundation").score(records, ScoreContext(V2))
    assert score["overall"] == 0.0 and score["failed"] == 0


def test_predictions_reader_drops_a_cut_last_line(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "resp')
    assert [r["id"] for r in read_predictions(path)] == ["a", "b"]
    assert path.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    path.write_text('{"id": "a"}\nnot json\n')
    with pytest.raises(DataError, match="p.jsonl:2"):
        read_predictions(path)


@pytest.mark.parametrize("text, scores", [("8 6", (8, 6)), (" 7 10\n", (7, 10)),
                                          ("8, 6", None), ("11 3", None), ("8", None),
                                          ("Assistant 1: 8", None)])
def test_judge_scores_parse_as_the_official_script_reads_them(text, scores) -> None:
    assert parse_judge_scores(text) == scores


class _Judge(BaseHTTPRequestHandler):
    """A fake OpenAI chat endpoint: scores 9 for the reference, 4 for the other answer."""

    calls: ClassVar[list[dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append({"path": self.path, "auth": self.headers.get("Authorization"),
                                 **body})
        prompt = body["messages"][0]["content"]
        first = prompt.split("[The Start of Assistant 1s Answer]\n")[1].split("\n")[0]
        content = "9 4" if first == "REFERENCE" else "5 8"
        if "broken" in prompt:
            content = "I cannot judge this."
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def judge_server():
    _Judge.calls = []
    with loopback_server(_Judge) as url:
        yield url


def test_chat_judge_averages_both_orders_and_caches(judge_server, tmp_path: Path) -> None:
    cache = tmp_path / "judge.jsonl"
    judge = ChatJudge(judge_server, "judge-x", api_key="k", cache=cache)
    items = [{"meta_info": "a dog barks", "question": "What animal?", "answer_gt": "REFERENCE",
              "response": "a dog", "task_name": "sound_QA", "uniq_id": 1},
             {"meta_info": "broken", "question": "?", "answer_gt": "REFERENCE",
              "response": "x", "task_name": "speech_QA", "uniq_id": 2}]
    result = score_chat(items, judge)
    # order 1: reference 9, model 4; order 2 (swapped): model 5, reference 8
    assert result.model_score == 4.5 and result.reference_score == 8.5
    assert (result.judged, result.failed) == (1, 1)
    assert result.categories == {"sound": (4.5, 8.5, 1)}
    call = _Judge.calls[0]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer k"
    assert (call["model"], call["temperature"], call["seed"]) == ("judge-x", 0.0, 0)
    assert call["messages"][0]["content"] == judge_prompt("a dog barks", "What animal?",
                                                          "REFERENCE", "a dog")
    n_calls = len(_Judge.calls)
    again = score_chat(items, ChatJudge(judge_server, "judge-x", cache=cache))
    assert again == result and len(_Judge.calls) == n_calls  # every judgement from the cache
    with pytest.raises(ScoringError, match="failed 2 times"):
        ChatJudge("http://127.0.0.1:9/v1", "m", retries=2, timeout=2).complete("hi")
