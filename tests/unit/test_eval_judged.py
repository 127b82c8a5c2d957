"""VoiceBench's rule and judge scorers, MMAU-Pro's open questions, and the judge client.

The judge is a real HTTP server on 127.0.0.1 (stdlib ``http.server``) that answers fixed
OpenAI-style chat completions chosen by the prompt's content: it stands in for a judge model,
which cannot run here. Its request counter shows what the on-disk cache saves. Data are HF
datasets saved with ``save_to_disk`` in VoiceBench's columns, with real audio bytes."""

from __future__ import annotations

import io
import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import soundfile as sf
from conftest import loopback_server

from lalm.errors import DataError, ScoringError
from lalm.eval.judge import ChatJudge, EmbeddingClient, text_sha256
from lalm.eval.tasks import ScoreContext, get_task
from lalm.eval.voicebench import OPEN_PROMPT, QA_PROMPT, extract_mcq_answer, majority_yes
from lalm.prompt import QWEN2_AUDIO

V2 = QWEN2_AUDIO


class _Judge(BaseHTTPRequestHandler):
    """Fixed judge replies: n completions picked by what the prompt holds."""

    bodies: ClassVar[list[dict]] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        if self.path.endswith("/embeddings"):  # "dog" / "cat" axes; a "B" leans to "cat"
            vectors = {"dog": [1.0, 0.0], "cat": [0.0, 1.0], "b": [0.1, 0.9]}
            self._reply({"data": [{"index": i, "embedding": vectors.get(t.lower(), [0.0, 0.0])}
                                  for i, t in enumerate(body["input"])]})
            return
        prompt = body["messages"][-1]["content"]
        if "### Candidate answer" in prompt:
            candidate = prompt.split("### Candidate answer")[1]
            replies = ["Yes", "Yes", "No"] if "Paris" in candidate else ["No", "no", "Yes"]
        elif "[Response]: great" in prompt:
            replies = ["5", "4", "[[3]]"]
        elif "[Response]:" in prompt:
            replies = ["4", "I think it is fine", "2"]
        else:  # MMAU-Pro's open-question judge
            replies = ["CORRECTNESS: 4 - a\nRELEVANCE: 4 - b\nCOMPLETENESS: 4 - c\n"
                       "CLARITY: 4 - d\nOVERALL: 4 - e"]
        n = body.get("n", 1)
        self._reply({"choices": [{"message": {"role": "assistant",
                                              "content": replies[i % len(replies)]}}
                                 for i in range(n)]})

    def _reply(self, reply: dict) -> None:
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def judge_url():
    _Judge.bodies = []
    with loopback_server(_Judge) as url:
        yield url


def _voicebench(tmp_path: Path, rows: list[dict], monkeypatch) -> Path:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("LALM_CACHE", str(tmp_path / "cache"))
    clips = []
    for i in range(len(rows)):
        buf = io.BytesIO()
        sf.write(buf, np.full(800, i / 100, dtype=np.float32), 16000, format="WAV")
        clips.append({"bytes": buf.getvalue(), "path": f"{i}.wav"})
    columns = {"audio": clips, **{k: [r[k] for r in rows] for k in rows[0]}}
    ds = datasets.Dataset.from_dict(columns).cast_column("audio", datasets.Audio())
    ds.save_to_disk(str(tmp_path / "subset"))
    return tmp_path / "subset"


def _records(task: str, data: Path, responses: list[str]) -> list[dict]:
    items = get_task(task).read(data).items
    return [{**i.record(), "response": r} for i, r in zip(items, responses)]


def test_mcq_official_guesses_where_strict_counts_wrong(tmp_path, monkeypatch) -> None:
    rows = [{"prompt": f"q{i}", "reference": ref} for i, ref in enumerate("BCDD")]
    data = _voicebench(tmp_path, rows, monkeypatch)
    task = get_task("voicebench-mcq")
    records = _records("voicebench-mcq", data, ["The answer is B.", "C", "I am not sure",
                                                "(d) blue"])
    # extracted: B, C, none, D. The failure gets random.Random(0).choice("ABCD") == "D",
    # right by luck: official 4/4; strict counts it wrong: 3/4; fail rate 1/4
    score = task.score(records, ScoreContext(V2))
    assert (score["official_accuracy"], score["strict_accuracy"], score["fail"]) == (1.0, .75,
                                                                                     .25)
    assert task.score(records, ScoreContext(V2, "strict"))["accuracy"] == 0.75
    request = task.request(get_task("voicebench-mcq").read(data).items[0], V2)
    assert "<|AUDIO|>" in request.prompt.text and "q0" not in request.prompt.text
    assert task.options(V2, 0).max_new_tokens == 1024


@pytest.mark.parametrize("response, letter", [("Option A: cats", "A"), ("a", "A"),
                                              ("I think the answer would be c, since", "C"),
                                              ("答案是B", "B"), ("no idea", None)])
def test_mcq_templates(response: str, letter: str | None) -> None:
    assert extract_mcq_answer(response) == letter


def test_bbh_rules_per_subtask(tmp_path, monkeypatch) -> None:
    rows = [{"prompt": "p", "reference": ref, "id": rid} for rid, ref in [
        ("bbh_sports_understanding_1", "yes"), ("bbh_hyperbaton_2", "(B)"),
        ("bbh_navigate_3", "no"), ("bbh_web_of_lies_4", "Yes"), ("bbh_navigate_5", "yes")]]
    data = _voicebench(tmp_path, rows, monkeypatch)
    records = _records("voicebench-bbh", data, [
        "**Yes**, the sentence is plausible.",  # sports: "...sentence is plausible" -> 1
        "The answer is (B).",                   # hyperbaton: "the answer is (b)" -> 1
        "So the answer is no.",                 # shared yes/no rule "answer is no" -> 0
        "Hmm.",                                 # no rule: guessed
        "b",                                    # navigate: no rule for a bare "b": guessed
    ])
    # read: 1 (right), 1 (right), 0 (right), guess, guess. random.Random(0).choice([0, 1]) twice
    # gives 1 then 1: item 4 (truth 1) right, item 5 (truth 1) right -> official 5/5;
    # strict 3/5; 2 guessed
    score = get_task("voicebench-bbh").score(records, ScoreContext(V2))
    assert (score["official_accuracy"], score["strict_accuracy"], score["guessed"]) == (
        1.0, 0.6, 2)


def test_harm_refusal_rate(tmp_path, monkeypatch) -> None:
    data = _voicebench(tmp_path, [{"prompt": f"p{i}"} for i in range(4)], monkeypatch)
    records = _records("voicebench-harm", data, ["I cannot do that.", "", "Sure, here's how.",
                                                 "That is illegal."])
    # refusals: 0, 1 (empty, official only), 3 -> official 3/4, strict 2/4
    score = get_task("voicebench-harm").score(records, ScoreContext(V2))
    assert (score["official_refusal_rate"], score["strict_refusal_rate"]) == (0.75, 0.5)


def test_open_and_qa_judged_through_a_local_endpoint_and_cached(judge_url, tmp_path,
                                                                monkeypatch) -> None:
    cache = tmp_path / "judge.jsonl"
    data = _voicebench(tmp_path / "qa", [{"prompt": "Capital?", "reference": "Paris"},
                                         {"prompt": "Capital of France?", "reference": "Paris"}],
                       monkeypatch)
    qa_records = _records("voicebench-qa", data, ["It is Paris", "London"])
    with pytest.raises(DataError, match="voicebench-qa"):  # officially judged as QA
        get_task("voicebench-open").read(data)
    data = _voicebench(tmp_path / "open", [{"prompt": "Tell me a joke"}, {"prompt": "Hi"}],
                       monkeypatch)
    open_records = _records("voicebench-open", data, ["great", "junk"])
    judge = ChatJudge(judge_url, "judge-x", api_key="k", cache=cache, seed=7)
    # open samples: 5, 4, 3 ([[3]]) and 4, (unreadable), 2 -> official mean 18/5 = 3.6;
    # strict scores the unreadable one 1 -> 19/6
    score = get_task("voicebench-open").score(open_records, ScoreContext(V2, judge=judge))
    assert score["official_score"] == pytest.approx(3.6)
    assert score["strict_score"] == pytest.approx(19 / 6) and score["judge_failed"] == 1
    # qa votes: yes, yes, no -> right; no, no, yes -> wrong
    qa = get_task("voicebench-qa").score(qa_records, ScoreContext(V2, judge=judge))
    assert qa["accuracy"] == 0.5
    assert len(_Judge.bodies) == 4  # one request per item, n=3 completions each
    body = _Judge.bodies[0]
    assert (body["model"], body["n"], body["temperature"], body["top_p"], body["seed"]) == (
        "judge-x", 3, 0.5, 0.95, 7)
    assert body["messages"][0]["role"] == "system"
    assert body["messages"][1]["content"] == OPEN_PROMPT.replace(
        "{prompt}", "Tell me a joke").replace("{response}", "great")
    record = score["judge"]
    assert record["prompt_sha256"] == text_sha256(OPEN_PROMPT) and record["samples"] == 3
    assert (record["model"], record["temperature"], record["seed"]) == ("judge-x", 0.5, 7)
    assert qa["judge"]["prompt_sha256"] == text_sha256(QA_PROMPT)
    again = ChatJudge(judge_url, "judge-x", cache=cache, seed=7)
    assert get_task("voicebench-open").score(open_records, ScoreContext(V2, judge=again)) == score
    assert len(_Judge.bodies) == 4 and again.cache_hits == 2  # nothing sent again
    fixed = ChatJudge(judge_url, "judge-x", temperature=0.0, samples=1)
    one = get_task("voicebench-open").score(open_records, ScoreContext(V2, judge=fixed))
    assert _Judge.bodies[-1]["temperature"] == 0.0 and "n" not in _Judge.bodies[-1]
    assert one["official_score"] == 4.5 and one["judge"]["samples"] == 1  # samples 5 and 4
    with pytest.raises(ScoringError, match="judge"):
        get_task("voicebench-open").score(open_records, ScoreContext(V2))


def test_majority_vote_ties_are_not_a_yes() -> None:
    assert majority_yes(["Yes", "yes", "No"]) and not majority_yes(["Yes", "No", "maybe"])


def test_mmau_pro_open_questions_with_a_judge(judge_url, tmp_path) -> None:
    from tests.unit.test_eval_mmau_pro import _records as pro_records, write_parquet

    write_parquet(tmp_path)
    judge = ChatJudge(judge_url, "qwen2.5-7b", cache=tmp_path / "j.jsonl")
    score = get_task("mmau-pro").score(pro_records(tmp_path), ScoreContext(V2, judge=judge))
    # open: overall 4 -> 0.8; weighted with sound (0.5 x 2) and instruction following
    # (2/3 x 3): (1 + 2 + 0.8) / 6
    assert score["categories"]["open"]["score"] == pytest.approx(0.8)
    assert score["overall"] == pytest.approx(3.8 / 6) and score["complete"] is True
    body = _Judge.bodies[0]
    assert (body["temperature"], body["max_tokens"]) == (0.1, 512)
    assert body["messages"][0]["content"] == "You are a helpful and objective evaluator."


def test_mmau_pro_closed_questions_by_embedding_similarity(judge_url, tmp_path) -> None:
    from tests.unit.test_eval_mmau_pro import _records as pro_records, write_parquet

    write_parquet(tmp_path)
    embedder = EmbeddingClient(judge_url, "nv-embed", cache=tmp_path / "e.jsonl")
    judge = ChatJudge(judge_url, "qwen2.5-7b", embedder=embedder)
    score = get_task("mmau-pro").score(pro_records(tmp_path), ScoreContext(V2, judge=judge))
    # c1 "Dog" is nearest "Dog"; c2 "B" nearest "Cat" (its answer): closed 2/2 by embedding,
    # 1/2 by the string match. overall = (1.0 x 2 + 2/3 x 3 + 0.8 x 1) / 6 = 0.8
    sound = score["categories"]["sound"]
    assert (sound["mmau-pro-embedding-match-v1"], sound["mmau-string-match-v2"]) == (1.0, 0.5)
    assert score["closed_procedure"] == "mmau-pro-embedding-match-v1"
    assert score["overall"] == pytest.approx(0.8)
    assert score["embedding"]["model"] == "nv-embed"
    sent = len(_Judge.bodies)
    get_task("mmau-pro").score(pro_records(tmp_path), ScoreContext(
        V2, judge=ChatJudge(judge_url, "qwen2.5-7b", embedder=EmbeddingClient(
            judge_url, "nv-embed", cache=tmp_path / "e.jsonl"))))
    assert len(_Judge.bodies) == sent + 1  # embeddings cached on disk; the open judge not


@pytest.mark.parametrize("task", ["mmau", "mmar", "mmau-pro", "voicebench-mcq",
                                  "voicebench-harm", "voicebench-bbh"])
def test_nothing_to_score_is_an_error_not_a_division_by_zero(task: str) -> None:
    with pytest.raises(ScoringError, match="nothing to score"):
        get_task(task).score([], ScoreContext(V2))


class _OneSampleJudge(_Judge):
    """Like `_Judge`, but refuses n > 1 with a 400, as some OpenAI-compatible servers do."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        if "n" in json.loads(self._peek()):
            self.send_response(400)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_POST()

    def _peek(self) -> str:
        length = int(self.headers["Content-Length"])
        raw = self.rfile.read(length)
        self.rfile = io.BytesIO(raw)  # let the parent read the body again
        return raw.decode()


def test_samples_split_into_single_requests_when_n_is_refused(tmp_path, monkeypatch) -> None:
    _Judge.bodies = []
    data = _voicebench(tmp_path, [{"prompt": "Tell me a joke"}], monkeypatch)
    records = _records("voicebench-open", data, ["great"])
    with loopback_server(_OneSampleJudge) as url:
        judge = ChatJudge(url, "j", cache=tmp_path / "c.jsonl", seed=7)
        score = get_task("voicebench-open").score(records, ScoreContext(V2, judge=judge))
    # the n=3 request is refused (400, not retried); then 3 requests, seeds 7, 8, 9, each
    # answered with the stub's first reply "5"
    assert [b["seed"] for b in _Judge.bodies] == [7, 8, 9] and judge.requests == 3
    assert score["official_score"] == 5.0 and score["judge"]["samples_as"].startswith("separate")
    offline = ChatJudge("http://127.0.0.1:9/v1", "j", cache=tmp_path / "c.jsonl", seed=7,
                        retries=1, timeout=2)
    rerun = get_task("voicebench-open").score(records, ScoreContext(V2, judge=offline))
    assert rerun["official_score"] == 5.0 and offline.requests == 0  # from the cache alone
    assert rerun["judge"]["samples_as"] == score["judge"]["samples_as"]


def test_ifeval_strict_loose_prompt_and_instruction_levels(tmp_path, monkeypatch) -> None:
    def kw(**given):  # the HF column is a list of structs with every key (None if unused)
        return {"num_words": None, "relation": None, "num_bullets": None, **given}
    rows = [
        {"prompt": "p1", "key": 1, "instruction_id_list": ["punctuation:no_comma",
                                                           "length_constraints:number_words"],
         "kwargs": [kw(), kw(num_words=5, relation="less than")]},
        {"prompt": "p2", "key": 2, "instruction_id_list": ["detectable_format:title",
                                                           "startend:quotation"],
         "kwargs": [kw(), kw()]},
        {"prompt": "p3", "key": 3, "instruction_id_list": ["detectable_format:number_bullet_lists"],
         "kwargs": [kw(num_bullets=2)]}]
    data = _voicebench(tmp_path, rows, monkeypatch)
    records = _records("voicebench-ifeval", data, ["hi, there", '"<<Poem>> roses"',
                                                   "* a\n* b\n* c"])
    # strict: row 1 has a comma (1 of 2 followed), row 2 both, row 3 three bullets for two
    #   -> prompt 1/3, instruction 3/5
    # loose: row 3 without its first line has two bullets -> prompt 2/3, instruction 4/5
    # final = (1/3 + 3/5 + 2/3 + 4/5) / 4 = 0.6; lalm's strict headline (1/3 + 3/5) / 2 = 7/15
    task = get_task("voicebench-ifeval")
    score = task.score(records, ScoreContext(V2))
    assert score["strict-prompt"] == pytest.approx(1 / 3)
    assert score["strict-instruction"] == pytest.approx(3 / 5)
    assert score["loose-prompt"] == pytest.approx(2 / 3)
    assert score["loose-instruction"] == pytest.approx(4 / 5)
    assert score["final"] == pytest.approx(0.6) and score["score"] == pytest.approx(0.6)
    assert task.score(records, ScoreContext(V2, "strict"))["score"] == pytest.approx(7 / 15)
    broken = [{**records[2], "kwargs": [kw()]}]
    with pytest.raises(ScoringError, match="num_bullets"):
        task.score(broken, ScoreContext(V2))
