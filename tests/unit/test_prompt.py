"""Prompt formats: golden strings per task, round trips build -> ids -> parse, chat layouts, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lalm.audio import audio_token_count
from lalm.errors import PromptError
from lalm.prompt import (
    QWEN2_AUDIO,
    QWEN_AUDIO,
    AudioPart,
    Header,
    Instruction,
    Message,
    NoteAnalysis,
    Prompt,
    Task,
    TaskSpec,
    TextPart,
    TimedWord,
    build_base_prompt,
    build_chat_prompt,
    build_prompt,
    format_note_analysis,
    format_timed_words,
    parse_output,
    tag,
)
from lalm.tokenizer import Tokenizer

# The official evaluation scripts' prompts (QwenLM/Qwen-Audio eval_audio/evaluate_*.py), filled in.
A = "<audio>x.wav</audio>"
GOLDEN_TASK_PROMPTS = [
    (TaskSpec.asr("en"), A + "<|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"),
    (TaskSpec.asr("zh"), A + "<|startoftranscript|><|zh|><|transcribe|><|zh|><|notimestamps|><|wo_itn|>"),
    (TaskSpec.s2tt("en", "de"), A + "<|startoftranscript|><|en|><|translate|><|de|><|notimestamps|><|itn|>"),
    (TaskSpec.srwt("zh"), A + "<|startoftranscript|><|zh|><|transcribe|><|zh|><|timestamps|><|0.00|>"),
    (TaskSpec.aac(), A + "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_clotho|>"),
    (TaskSpec.aac(Instruction.CAPTION_AUDIOCAPS),
     A + "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_audiocaps|>"),
    (TaskSpec.scene(), A + "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>"),
    (TaskSpec.emotion(),
     A + "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>"),
    (TaskSpec.vocal_sound(),
     A + "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>"),
    (TaskSpec.aqa("Is it raining?"), A + "<|startofanalysis|><|en|><|question|>Is it raining?<|answer|>"),
    (TaskSpec.note_analysis(),
     A + "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>"),
]


@pytest.mark.parametrize("spec,expected", GOLDEN_TASK_PROMPTS)
def test_task_prompt_text_and_ids(v1_tokenizer: Tokenizer, spec: TaskSpec, expected: str) -> None:
    prompt = build_prompt(spec, AudioPart(Path("x.wav")))
    assert prompt.text == expected
    out = prompt.encode(v1_tokenizer, [5])
    assert out.ids[:7] == [155163, *[151851] * 5, 155164] and out.audio_spans == ((0, 7),)
    tag_ids = out.ids[7:]
    if spec.task is not Task.QUESTION:  # every tag is one real special id
        assert all(i >= 151851 for i in tag_ids) and v1_tokenizer.decode(tag_ids) == spec.render()
    mask = torch.isin(torch.tensor(out.ids), torch.tensor(sorted(v1_tokenizer.audio_slot_ids)))
    assert int(mask.sum()) == 7 and bool(mask[:7].all())


# Round trips: target text (as the model writes it) -> ids -> decode -> parse_output -> structure.
ROUND_TRIPS = [
    (TaskSpec.asr("en"), "turn left at the next light", {"text": "turn left at the next light"}),
    (TaskSpec.s2tt("en", "de"), "Biegen Sie an der nächsten Ampel links ab.",
     {"text": "Biegen Sie an der nächsten Ampel links ab."}),
    (TaskSpec.aac(), "Rain falls on a tin roof.", {"text": "Rain falls on a tin roof."}),
    (TaskSpec.scene(), "park", {"text": "park"}),
    (TaskSpec.emotion(), "neutral", {"text": "neutral"}),
    (TaskSpec.vocal_sound(), "Cough", {"text": "Cough"}),
    (TaskSpec.aqa("Is it raining?"), "yes", {"text": "yes"}),
    (TaskSpec.note_analysis(),
     format_note_analysis(NoteAnalysis(60, 100, "keyboard_acoustic", ("bright", "percussive"))),
     {"note": NoteAnalysis(60, 100, "keyboard_acoustic", ("bright", "percussive")),
      "text": "keyboard_acousticbright, percussive"}),
]


@pytest.mark.parametrize("spec,target,expected", ROUND_TRIPS)
def test_round_trip(v1_tokenizer: Tokenizer, spec: TaskSpec, target: str, expected: dict) -> None:
    ids = v1_tokenizer.encode(target + "<|endoftext|>")
    parsed = parse_output(v1_tokenizer.decode(ids), spec)
    for key, value in expected.items():
        assert getattr(parsed, key) == value


def test_srwt_round_trip(v1_tokenizer: Tokenizer) -> None:
    words = [TimedWord("turn", 0.0, 0.35), TimedWord("left", 0.35, 0.6),
             TimedWord("at", 0.8, 0.9), TimedWord("once", 1.5, 1.92)]
    silences = [(0.9, 1.5)]
    target = format_timed_words(words, silences)
    assert target == ("<|0.00|>turn<|0.35|>left<|0.60|><|0.80|>at<|0.90|><|sil|><|1.50|>once"
                      "<|1.92|>")
    ids = v1_tokenizer.encode(target)
    assert all(v1_tokenizer.decode([i]).startswith("<|") for i in ids if i >= 151643)
    spec = TaskSpec.srwt("en")
    generated = v1_tokenizer.decode(ids)[len("<|0.00|>"):]  # the prompt already wrote <|0.00|>
    parsed = parse_output(generated, spec)
    assert parsed.words == tuple(words) and parsed.silences == tuple(silences)
    assert parsed.text == "turn left at once" and parsed.timestamps[0] == 0.35
    zh = parse_output("<|0.00|>你<|0.20|>好<|0.40|>", TaskSpec.srwt("zh"))
    assert zh.text == "你好" and zh.words[1] == TimedWord("好", 0.2, 0.4)


def test_parse_grounding_language_and_stop() -> None:
    answer = 'The word "middle classes" starts at <|2.33|> seconds and ends at <|3.26|> seconds.'
    parsed = parse_output(answer + "<|im_end|>\n<|im_start|>user junk")
    assert parsed.timestamps == (2.33, 3.26) and parsed.words == ()
    assert parsed.text == 'The word "middle classes" starts at 2.33 seconds and ends at 3.26 seconds.'
    tagged = parse_output("<|startoftranscript|><|de|><|transcribe|><|de|><|notimestamps|>Hallo")
    assert tagged.language == "de" and tagged.text == "Hallo"
    assert tagged.tags == ("startoftranscript", "de", "transcribe", "de", "notimestamps")
    assert parse_output("<|vocab_pad:155677|>ok").text == "ok"


@pytest.mark.parametrize("kwargs,message", [
    ({"task": Task.TRANSCRIBE, "audio_language": "xx", "text_language": "en"}, "unknown audio_language 'xx'"),
    ({"task": Task.TRANSCRIBE, "audio_language": "en"}, "needs a text_language"),
    ({"task": Task.QUESTION, "audio_language": "en"}, "needs a non-empty question"),
    ({"task": Task.QUESTION, "question": "q", "timestamps": True}, "takes no text_language"),
    ({"task": Task.CAPTION, "text_language": "en", "question": "q"}, "only for task QUESTION"),
    ({"task": Task.TRANSCRIBE, "text_language": "en", "first_timestamp": 0.0}, "needs timestamps=True"),
    ({"task": Task.TRANSCRIBE, "text_language": "en", "timestamps": True, "first_timestamp": 31.0},
     "outside"),
    ({"task": "transcribe", "text_language": "en"}, "must be a Task"),
    ({"task": Task.CAPTION, "text_language": "en", "instruction": "caption_clotho"}, "an Instruction"),
    ({"task": Task.QUESTION, "question": "<audio>a</audio>"}, "contains the special token '<audio>'"),
])
def test_bad_specs(kwargs: dict, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        TaskSpec(**kwargs)


def test_header_override_and_timestamp_format() -> None:
    spec = TaskSpec(Task.CAPTION, "en", "en", header=Header.TRANSCRIPT)
    assert spec.render().startswith("<|startoftranscript|>")
    assert format_timed_words([TimedWord("w", 29.996, 30.0)]) == "<|30.00|>w<|30.00|>"
    with pytest.raises(PromptError, match="outside"):
        format_timed_words([TimedWord("w", 1.0, 31.0)])
    with pytest.raises(PromptError, match="contains a tag"):
        format_timed_words([TimedWord("<|en|>", 1.0, 2.0)])
    with pytest.raises(PromptError, match="outside 0..127"):
        format_note_analysis(NoteAnalysis(pitch=128))


def test_encode_errors(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer) -> None:
    prompt = build_prompt(TaskSpec.asr(), AudioPart(np.zeros(160, np.float32)))
    assert prompt.text.startswith("<audio>audio</audio>")
    with pytest.raises(PromptError, match="1 audios but 2 audio token counts"):
        prompt.encode(v1_tokenizer, [3, 4])
    with pytest.raises(PromptError, match="ints >= 0"):
        prompt.encode(v1_tokenizer, [-1])
    with pytest.raises(PromptError, match="cannot be encoded with a qwen2-audio tokenizer"):
        prompt.encode(v2_tokenizer, [3])
    with pytest.raises(PromptError, match="takes an AudioPart"):
        build_prompt(TaskSpec.asr(), "a.wav")  # type: ignore[arg-type]


def test_v1_chat_multi_turn_layout(v1_tokenizer: Tokenizer) -> None:
    messages = [
        Message("user", [AudioPart("a.wav"), TextPart("what is that sound?")]),
        Message("assistant", "A man speaking."),
        Message("user", [TextPart("And these?"), AudioPart("b.wav"), AudioPart("c.wav")]),
    ]
    prompt = build_chat_prompt(messages, QWEN_AUDIO)
    assert prompt.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nAudio 1:<audio>a.wav</audio>\nwhat is that sound?<|im_end|>\n"
        "<|im_start|>assistant\nA man speaking.<|im_end|>\n"
        "<|im_start|>user\nAnd these?Audio 1:<audio>b.wav</audio>\nAudio 2:<audio>c.wav</audio>\n"
        "<|im_end|>\n<|im_start|>assistant\n")
    out = prompt.encode(v1_tokenizer, [2, 3, 4])
    assert [out.ids[a:b] for a, b in out.audio_spans] == [
        [155163, 151851, 151851, 155164], [155163, *[151851] * 3, 155164],
        [155163, *[151851] * 4, 155164]]
    assert out.ids[-3:] == [151644, *v1_tokenizer.encode("assistant"), 198]
    done = build_chat_prompt(messages[:2], QWEN_AUDIO, add_generation_prompt=False)
    assert done.text.endswith("A man speaking.<|im_end|>")
    # make_context encodes role, "\n" and content separately: a leading newline stays its own token
    lead = build_chat_prompt([Message("user", "\nhi")], QWEN_AUDIO).encode(v1_tokenizer, [])
    assert lead.ids[11:14] == [151644, 872, 198] and lead.ids[14:-5] == v1_tokenizer.encode("\nhi")
    assert v1_tokenizer.encode("user\n\nhi") != lead.ids[12:-5]  # one call would merge the newlines


def test_v1_chat_tags_allowed_chatml_not(v1_tokenizer: Tokenizer) -> None:
    prompt = build_chat_prompt([Message("user", "<|en|> <|im_end|>")], QWEN_AUDIO)
    ids = prompt.encode(v1_tokenizer, []).ids
    assert 151859 in ids and ids.count(151645) == 2  # system and user ends only
    with pytest.raises(PromptError, match="user message text contains the special token '<audio>'"):
        build_chat_prompt([Message("user", "<audio>a.wav</audio>")], QWEN_AUDIO)


def test_v2_chat_and_base_prompts(v2_tokenizer: Tokenizer) -> None:
    voice = build_chat_prompt([Message("user", [AudioPart("q.wav")])], QWEN2_AUDIO)
    assert voice.text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                          "<|im_start|>user\nAudio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
                          "<|im_end|>\n<|im_start|>assistant\n")
    out = voice.encode(v2_tokenizer, [4])
    start, end = out.audio_spans[0]
    assert out.ids[start - 1:end + 1] == [151647, *[151646] * 4, 151648]
    base = build_base_prompt([AudioPart("g.mp3")], "Generate the caption in English:")
    assert base.text == "<|audio_bos|><|AUDIO|><|audio_eos|>Generate the caption in English:"
    n = audio_token_count(404)
    ids = base.encode(v2_tokenizer, [n]).ids
    assert n == 101 and ids[:n + 2] == [151647, *[151646] * n, 151648]
    assert ids[n + 2:] == v2_tokenizer.encode("Generate the caption in English:")
    assert base.encode(v2_tokenizer, [0]).ids[:2] == [151647, 151648]  # a clip of <= 2 mel frames
    with pytest.raises(PromptError, match="contains the special token '<|im_end|>'"):
        build_chat_prompt([Message("user", "hi<|im_end|>")], QWEN2_AUDIO)
    with pytest.raises(PromptError, match="at least one audio"):
        build_base_prompt([], "x")


def test_from_text(v1_tokenizer: Tokenizer, v2_tokenizer: Tokenizer) -> None:
    raw = "<audio>a.wav</audio><|startoftranscript|><|en|><|transcribe|><|en|><|notimestamps|><|wo_itn|>"
    prompt = Prompt.from_text(raw, QWEN_AUDIO)
    assert prompt.text == raw and prompt.audios[0].source == "a.wav"
    built = build_prompt(TaskSpec.asr(), AudioPart("a.wav"))
    assert prompt.encode(v1_tokenizer, [3]).ids == built.encode(v1_tokenizer, [3]).ids
    raw2 = "<|audio_bos|><|AUDIO|><|audio_eos|>Detect the language and recognize the speech: <|en|>"
    p2 = Prompt.from_text(raw2, "qwen2-audio", [AudioPart(b"RIFF")])
    assert p2.text == raw2
    assert len(p2.encode(v2_tokenizer, [7]).ids) == len(v2_tokenizer.encode(raw2)) + 6
    with pytest.raises(PromptError, match="1 audio slots but 2 audios"):
        Prompt.from_text(raw, QWEN_AUDIO, [AudioPart("a"), AudioPart("b")])
    with pytest.raises(PromptError, match="pass audios"):
        Prompt.from_text(raw2, QWEN2_AUDIO)
    with pytest.raises(PromptError, match="contains the special token"):
        Prompt.from_text("<audio>a.wav", QWEN_AUDIO)


def test_messages_validate() -> None:
    assert Message("user", "hi").content == (TextPart("hi"),)
    with pytest.raises(PromptError, match="role must be"):
        Message("robot", "hi")  # type: ignore[arg-type]
    with pytest.raises(PromptError, match="TextPart/AudioPart"):
        Message("user", [42])  # type: ignore[list-item]
    with pytest.raises(PromptError, match="system message may only come first"):
        build_chat_prompt([Message("user", "a"), Message("system", "b")], QWEN_AUDIO)
    with pytest.raises(PromptError, match="last message to be a user turn"):
        build_chat_prompt([Message("assistant", "a")], QWEN2_AUDIO)
    with pytest.raises(PromptError, match="at least one user or assistant"):
        build_chat_prompt([Message("system", "s")], QWEN2_AUDIO, add_generation_prompt=False)
    assert tag("en") == "<|en|>"
