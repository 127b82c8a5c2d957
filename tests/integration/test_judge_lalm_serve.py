"""A `lalm serve`d model as the judge: a real server process on 127.0.0.1 with a tiny random
checkpoint. It takes n > 1 (the engine runs the choices side by side), so a suite asking for
several samples is sent one request; the report says so, and a rerun after the server is gone
scores from the cache alone. (The split into one request per sample, for servers that refuse
n > 1, is tested in tests/unit/test_eval_judged.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from lalm.eval.airbench import score_chat
from lalm.eval.judge import ChatJudge

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_lalm_serve_judges_airbench_chat_with_n_samples(tmp_path: Path) -> None:
    from conftest import shared_fixture

    from lalm.testing.server import running_server, save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "judge", shared_fixture("qwen2_audio_tokenizer"))
    items = [{"meta_info": "a dog barks", "question": "What animal?", "answer_gt": "a dog",
              "response": "a cat", "task_name": "sound_QA", "uniq_id": 1}]
    cache = tmp_path / "judgements.jsonl"
    with running_server(checkpoint, "--served-model-name", "judge",
                        log=tmp_path / "serve.log") as server:
        judge = ChatJudge(server.url + "/v1", "judge", cache=cache, samples=2)
        first = judge.sample("Rate: 1 or 2?")
        assert len(first) == 2 and not judge.separate_samples
        assert judge.requests == 1  # one n=2 request answered with two choices
        try:
            result = score_chat(items, judge)
        except Exception as e:  # random weights rarely write two scores: nothing judged
            assert "no item was judged" in str(e)
            result = None
    again = ChatJudge("http://127.0.0.1:9/v1", "judge", cache=cache, samples=2, retries=1,
                      timeout=2)
    assert again.sample("Rate: 1 or 2?") == first and again.requests == 0  # cache only
    if result is not None:
        assert not result.judge["samples_as"].startswith("separate")
