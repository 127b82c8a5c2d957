"""The family object (`lalm.prompt.FamilySpec`): the registry by name, singletons across pickling,
tokenizer detection by signature (a superset family wins), and a new family as one instance
that the prompt builders and the tokenizer follow without any other change."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

import lalm.prompt.family as family_module
from lalm.errors import PromptError, TokenizerError
from lalm.prompt import (
    IM_END,
    IM_START,
    QWEN2_AUDIO,
    QWEN2_AUDIO_BOS,
    QWEN2_AUDIO_EOS,
    QWEN2_AUDIO_TOKEN,
    QWEN_AUDIO,
    AudioPart,
    FamilySpec,
    Message,
    TextPart,
    TextPiece,
    build_chat_prompt,
    check_timestamps,
    detect_family,
    families,
    family_spec,
    register_family,
)
from lalm.tokenizer import Tokenizer, load_tokenizer


@pytest.fixture
def registry(monkeypatch):
    """The family registry, restored after the test (families registered in it are dropped)."""
    monkeypatch.setattr(family_module, "_FAMILIES", dict(family_module._FAMILIES))
    return family_module._FAMILIES


def _toy_chat(messages, add_generation_prompt):
    """A made-up template: ``<|im_start|>role\\n`` turns, each audio as bos/pad/eos, no system."""
    pieces = []
    for m in messages[1:]:
        pieces.append(TextPiece(f"{IM_START}{m.role}\n"))
        for part in m.content:
            pieces += ([TextPiece(QWEN2_AUDIO_BOS), part, TextPiece(QWEN2_AUDIO_EOS)]
                       if isinstance(part, AudioPart) else [TextPiece(part.text)])
        pieces.append(TextPiece(IM_END))
    if add_generation_prompt:
        pieces.append(TextPiece(f"{IM_START}assistant\n"))
    return tuple(pieces)


def _toy(name: str = "toy", **changes) -> FamilySpec:
    """A new family built from Qwen2-Audio's tokens with its own name and chat template."""
    return dataclasses.replace(QWEN2_AUDIO, name=name, label="Toy", chat_template=_toy_chat,
                               **changes)


def test_families_are_found_by_their_serialisable_name() -> None:
    assert family_spec("qwen-audio") is QWEN_AUDIO
    assert family_spec("qwen2-audio") is QWEN2_AUDIO
    assert family_spec(QWEN_AUDIO) is QWEN_AUDIO
    assert {QWEN_AUDIO, QWEN2_AUDIO} <= set(families())
    with pytest.raises(PromptError, match="unknown family 'qwen9'.*qwen-audio"):
        family_spec("qwen9")


def test_a_family_unpickles_to_the_registered_instance() -> None:
    # data-loader workers get pickled tokenizers and prompts: `prompt.family is tokenizer.family`
    # must still hold there
    for family in (QWEN_AUDIO, QWEN2_AUDIO):
        assert pickle.loads(pickle.dumps(family)) is family


def test_a_family_name_is_registered_once(registry) -> None:
    with pytest.raises(PromptError, match="already registered"):
        register_family(_toy("qwen2-audio"))
    assert register_family(QWEN2_AUDIO) is QWEN2_AUDIO  # the same instance again: a no-op


def test_family_fields_are_checked() -> None:
    with pytest.raises(PromptError, match="boundary_rows must be 0 or 2"):
        _toy(boundary_rows=1)
    with pytest.raises(PromptError, match="real_length"):
        _toy(real_length="round")


def test_slot_tokens_and_spans_follow_the_boundary_rows() -> None:
    assert QWEN_AUDIO.slot_tokens == ("<audio>", "[[[AUDIO:modality]]]", "</audio>")
    assert QWEN_AUDIO.audio_span(2) == ["<audio>", *["[[[AUDIO:modality]]]"] * 2, "</audio>"]
    assert QWEN2_AUDIO.slot_tokens == (QWEN2_AUDIO_TOKEN,)
    assert QWEN2_AUDIO.audio_span(3) == [QWEN2_AUDIO_TOKEN] * 3
    assert (QWEN_AUDIO.task_tags, QWEN2_AUDIO.task_tags) == (True, False)
    assert (QWEN_AUDIO.timestamps, QWEN2_AUDIO.timestamps) == (True, False)


def test_detection_takes_the_largest_matching_signature(registry) -> None:
    specials = {IM_START, IM_END, QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_BOS, QWEN2_AUDIO_EOS}
    assert detect_family(specials) is QWEN2_AUDIO
    wider = register_family(_toy(signature=frozenset({QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_BOS})))
    assert detect_family(specials) is wider  # a superset family (as Qwen2.5-Omni's) wins
    assert detect_family({QWEN2_AUDIO_TOKEN}) is QWEN2_AUDIO  # lacking the wider signature
    assert detect_family({IM_START}) is None
    register_family(_toy("toy2", signature=frozenset({QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_EOS})))
    with pytest.raises(PromptError, match="equally"):
        detect_family(specials)


def test_a_new_family_is_one_instance(registry, qwen2_tokenizer_dir) -> None:
    """Registered, a new family is what the real Qwen2 BPE's tokenizer detects, and prompts,
    ids and stops follow its fields: nothing else changes."""
    toy = register_family(_toy(signature=frozenset({QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_BOS}),
                               stop_tokens=(IM_END,)))
    tok = load_tokenizer(qwen2_tokenizer_dir)
    assert tok.family is toy
    assert tok.stop_ids == (tok.token_id(IM_END),)
    clip = AudioPart("a.wav")
    prompt = build_chat_prompt([Message("user", (clip, TextPart("What is it?")))], "toy")
    assert prompt.family is toy
    assert prompt.text == (f"{IM_START}user\n{QWEN2_AUDIO_BOS}{QWEN2_AUDIO_TOKEN}"
                           f"{QWEN2_AUDIO_EOS}What is it?{IM_END}{IM_START}assistant\n")
    encoded = prompt.encode(tok, [3])
    (start, end), = encoded.audio_spans
    assert encoded.ids[start:end] == [tok.token_id(QWEN2_AUDIO_TOKEN)] * 3
    assert encoded.ids == tok.encode(prompt.text.replace(QWEN2_AUDIO_TOKEN,
                                                         QWEN2_AUDIO_TOKEN * 3))
    with pytest.raises(PromptError, match="cannot be encoded with a toy tokenizer"):
        build_chat_prompt([Message("user", "hi")], QWEN2_AUDIO).encode(tok, [])


def test_timestamps_are_refused_by_families_without_them() -> None:
    check_timestamps(QWEN_AUDIO, True)
    check_timestamps(QWEN2_AUDIO, False)
    with pytest.raises(PromptError, match=r"need a Qwen-Audio \(v1\) checkpoint.*qwen2-audio"):
        check_timestamps(QWEN2_AUDIO, True)
    with pytest.raises(PromptError, match="word timestamps"):
        QWEN2_AUDIO.asr_prompt(AudioPart("a.wav"), "en", timestamps=True)


def test_task_prompts_ask_each_family_its_way() -> None:
    from lalm.prompt import TaskSpec

    clip = AudioPart("a.wav")
    v1, spec = QWEN_AUDIO.asr_prompt(clip, "en")
    assert spec == TaskSpec.asr("en") and v1.text.startswith("<audio>a.wav</audio>")
    v2, none = QWEN2_AUDIO.asr_prompt(clip, "de")
    assert none is None
    assert v2.text == (f"{QWEN2_AUDIO_BOS}{QWEN2_AUDIO_TOKEN}{QWEN2_AUDIO_EOS}"
                       "Detect the language and recognize the speech: <|de|>")
    own, _ = QWEN2_AUDIO.asr_prompt(clip, "de", instruction="Transcribe:")
    assert own.text.endswith(f"{QWEN2_AUDIO_EOS}Transcribe:")
    with pytest.raises(PromptError, match="Qwen2-Audio has no prompt for this task"):
        QWEN2_AUDIO.task_prompt(clip, TaskSpec.scene(), None)
    with pytest.raises(PromptError, match="needs a task spec"):
        QWEN_AUDIO.task_prompt(clip, None, "Describe it.")


def test_an_unknown_tokenizer_names_the_families_it_tried(tmp_path) -> None:
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers.models import WordLevel

    hf = tokenizers.Tokenizer(WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    hf.add_special_tokens(["<|endoftext|>"])
    hf.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(TokenizerError, match=r"Qwen2-Audio: <\|AUDIO\|>"):
        Tokenizer.from_hf(tmp_path)
