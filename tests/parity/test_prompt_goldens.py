"""Golden token ids: the official Qwen-Audio tokenizer's six prompts, and Qwen2-Audio's chat template.

v1: ``qwen_audio_v1_tiny_A/goldens/prompts.json`` holds, for ASR, S2TT, AAC, SRWT, AQA and a
two-audio chat, the exact prompt text, the ids the reference tokenizer gives before audio
expansion, the ids after it, and where each audio span lies. v2: the chat template shipped in
``qwen2_audio_tokenizer/`` rendered with jinja2 is the reference text.
"""

from __future__ import annotations

import json
import pytest
from conftest import shared_fixture

from lalm.audio import audio_token_count
from lalm.prompt import (
    AudioPart,
    QWEN_AUDIO,
    QWEN2_AUDIO,
    Message,
    Prompt,
    TaskSpec,
    TextPart,
    build_chat_prompt,
    build_prompt,
)
from lalm.tokenizer import Tokenizer, load_tokenizer

V1_SPECS = {
    "asr": TaskSpec.asr("en"),
    "s2tt": TaskSpec.s2tt("en", "de"),
    "aac": TaskSpec.aac(),
    "srwt": TaskSpec.srwt("en"),
    "aqa": TaskSpec.aqa("What do you hear?"),
}


@pytest.fixture(scope="module")
def v1_records() -> dict[str, dict]:
    goldens = shared_fixture("qwen_audio_v1_tiny_A") / "goldens"
    records = {r["name"]: r for r in json.loads((goldens / "prompts.json").read_text())}
    mel_lens = {a["file"]: a["mel_len"] for a in
                json.loads((goldens / "goldens.json").read_text())["audio"].values()}
    for r in records.values():
        r["mel_lens"] = [mel_lens[u] for u in r["audio_urls"]]
    return records


@pytest.fixture(scope="module")
def v1() -> Tokenizer:
    return load_tokenizer(shared_fixture("qwen_audio_v1_tiny_A"))


def _v1_prompt(name: str, record: dict) -> Prompt:
    if name == "chat":
        assert record["system"] == "You are a helpful assistant."
        content = [*map(AudioPart, record["audio_urls"]),
                   TextPart(record["query"].rsplit("\n", 1)[1])]
        return build_chat_prompt([Message("user", content)], QWEN_AUDIO)
    return build_prompt(V1_SPECS[name], AudioPart(record["audio_urls"][0]))


@pytest.mark.parametrize("name", ["asr", "s2tt", "aac", "srwt", "aqa", "chat"])
def test_v1_golden_prompt(v1: Tokenizer, v1_records: dict[str, dict], name: str) -> None:
    record = v1_records[name]
    prompt = _v1_prompt(name, record)
    assert prompt.text == record["text"]
    assert v1.encode(record["text"]) == record["unexpanded_tiktoken_ids"]
    counts = [span - 2 for span in record["audio_span_tokens"]]
    assert [audio_token_count(n) for n in record["mel_lens"]] == counts
    out = prompt.encode(v1, counts)
    assert out.ids == record["ids"] and len(out.ids) == record["n_tokens"]
    assert [[a, b - 1] for a, b in out.audio_spans] == record["audio_positions"]
    # the raw text, parsed back, gives the same ids (the path text never reaches them)
    assert Prompt.from_text(record["text"], QWEN_AUDIO).encode(v1, counts).ids == record["ids"]


CONVERSATIONS = [
    [Message("user", [AudioPart("q.wav")])],  # voice chat
    [Message("user", [AudioPart("g.mp3"), TextPart("What's that sound?")])],  # audio analysis
    [Message("system", "Be brief."), Message("user", [AudioPart("a.wav"), AudioPart("b.wav"),
                                                      TextPart("Compare them.\n\nThen guess.")])],
    [Message("user", [AudioPart("g.mp3"), TextPart("What's that sound?")]),
     Message("assistant", "It is the sound of glass shattering."),
     Message("user", [TextPart("What can you do when you hear that?")]),
     Message("assistant", "Stay alert and cautious."),
     Message("user", [AudioPart("s.flac"), TextPart("What does the person say?")])],
]


def _as_hf(messages: list[Message]) -> list[dict]:
    def part(p: TextPart | AudioPart) -> dict:
        if isinstance(p, AudioPart):
            return {"type": "audio", "audio_url": p.label}
        return {"type": "text", "text": p.text}

    return [{"role": m.role, "content": [part(p) for p in m.content]} for m in messages]


@pytest.fixture(scope="module")
def v2() -> Tokenizer:
    return load_tokenizer(shared_fixture("qwen2_audio_tokenizer"))


@pytest.mark.parametrize("messages", CONVERSATIONS, ids=["voice", "analysis", "two-audio", "multi-turn"])
def test_v2_chat_matches_chat_template(v2: Tokenizer, messages: list[Message]) -> None:
    jinja2 = pytest.importorskip("jinja2")
    folder = shared_fixture("qwen2_audio_tokenizer")
    source = json.loads((folder / "chat_template.json").read_text())["chat_template"]
    template = jinja2.Environment().from_string(source)
    expected = template.render(messages=_as_hf(messages), add_generation_prompt=True)
    prompt = build_chat_prompt(messages, QWEN2_AUDIO)
    assert prompt.text == expected
    counts = list(range(3, 3 + len(prompt.audios)))
    out = prompt.encode(v2, counts)
    # the processor's result: the whole text in one call, each <|AUDIO|> repeated N times
    expanded = expected
    for n in counts:
        expanded = expanded.replace("<|AUDIO|>", "\0" * n, 1)
    assert out.ids == v2.encode(expanded.replace("\0", "<|AUDIO|>"))

