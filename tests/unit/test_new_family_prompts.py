"""Qwen2.5-Omni and Qwen3-ASR through their family objects, fast: the tokenizer files of each
family (real Qwen BPE, the released added-token ids) read as that family, each checkpoint
format naming its family, the prompts (chat templates, default system prompts, ASR prompts),
Qwen3-ASR's transcript parsing, the audio window of windowed encoders and training items
sized by the model's own audio rows."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from conftest import SHARED_FIXTURES

from lalm.checkpoint.formats import FORMATS, detect_format
from lalm.data.dataset import AudioTextDataset
from lalm.data.manifest import AudioRef, Example, ExampleTask
from lalm.errors import PromptError, TokenizerError
from lalm.generation import Pipeline
from lalm.prompt import (
    QWEN2_5_OMNI,
    QWEN2_AUDIO,
    QWEN3_ASR,
    AudioPart,
    Message,
    ParsedOutput,
    build_chat_prompt,
    family_spec,
    user_message,
)
from lalm.testing.family_checkpoints import write_family_tokenizer
from lalm.testing.models import random_model
from lalm.tokenizer import load_tokenizer

TOKENIZER_DIR = SHARED_FIXTURES / "qwen2_audio_tokenizer"
pytestmark = pytest.mark.skipif(not TOKENIZER_DIR.is_dir(),
                                reason=f"shared tokenizer fixture missing: {TOKENIZER_DIR}")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """{format name: its family's tokenizer folder}."""
    out = {}
    for name in ("qwen2_5_omni", "qwen3_asr"):
        folder = tmp_path_factory.mktemp(name)
        write_family_tokenizer(folder, TOKENIZER_DIR, name)
        out[name] = folder
    return out


def test_each_familys_tokenizer_files_load_as_that_family(tokenizers) -> None:
    omni = load_tokenizer(tokenizers["qwen2_5_omni"])
    asr = load_tokenizer(tokenizers["qwen3_asr"])
    # Omni's table holds Qwen2-Audio's <|AUDIO|> too: its larger signature wins
    assert omni.family is QWEN2_5_OMNI and asr.family is QWEN3_ASR
    assert (omni.audio_start_id, omni.audio_pad_id, omni.audio_end_id) == (151647, 151646, 151648)
    assert (asr.audio_start_id, asr.audio_pad_id, asr.audio_end_id) == (151669, 151676, 151670)
    assert asr.encode("language English<asr_text>hi") == [11528, 6364, 151704, 6023]
    assert asr.stop_ids == omni.stop_ids == (151643, 151645)
    # the family a checkpoint format names is checked against the tokenizer's tokens
    assert load_tokenizer(tokenizers["qwen2_5_omni"], "qwen2.5-omni").family is QWEN2_5_OMNI
    with pytest.raises(TokenizerError, match="lacks Qwen2-Audio's tokens <\\|AUDIO\\|>"):
        load_tokenizer(tokenizers["qwen3_asr"], QWEN2_AUDIO)


def test_each_checkpoint_format_names_its_family() -> None:
    named = {name: family_spec(fmt.family) for name, fmt in FORMATS.items()}
    assert named["qwen2_5_omni"] is QWEN2_5_OMNI and named["qwen3_asr"] is QWEN3_ASR
    assert named["qwen2_audio"] is QWEN2_AUDIO and named["qwen_audio_v1"].boundary_rows == 2
    assert detect_format({"model_type": "qwen2_5_omni"}, "x").family == "qwen2.5-omni"


def test_chat_templates_and_default_system_prompts() -> None:
    a, b = AudioPart("a.wav"), AudioPart("b.wav")
    omni = build_chat_prompt([user_message("Compare <audio> and <audio>.", [a, b])], QWEN2_5_OMNI)
    assert omni.text == (
        "<|im_start|>system\nYou are Qwen, a virtual human developed by the Qwen Team, Alibaba "
        "Group, capable of perceiving auditory and visual inputs, as well as generating text and "
        "speech.<|im_end|>\n<|im_start|>user\nCompare <|audio_bos|><|AUDIO|><|audio_eos|> and "
        "<|audio_bos|><|AUDIO|><|audio_eos|>.<|im_end|>\n<|im_start|>assistant\n")
    asr = build_chat_prompt([Message("system", "hot words: lalm"), user_message("", [a])],
                            QWEN3_ASR)
    assert asr.text == ("<|im_start|>system\nhot words: lalm<|im_end|>\n<|im_start|>user\n"
                        "<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
                        "<|im_start|>assistant\n")
    with pytest.raises(PromptError, match="special token '<\\|audio_pad\\|>'"):
        build_chat_prompt([Message("user", "<|audio_pad|>")], QWEN3_ASR)


def test_asr_prompts() -> None:
    clip = AudioPart("a.wav")
    prompt, spec = QWEN3_ASR.asr_prompt(clip, "de")
    assert spec is None and prompt.text == (
        "<|im_start|>system\n<|im_end|>\n<|im_start|>user\n<|audio_start|><|audio_pad|>"
        "<|audio_end|><|im_end|>\n<|im_start|>assistant\nlanguage German<asr_text>")
    prompt, _ = QWEN2_5_OMNI.asr_prompt(clip, "en")
    assert prompt.text == (
        "<|im_start|>system\nYou are a speech recognition model.<|im_end|>\n<|im_start|>user\n"
        "<|audio_bos|><|AUDIO|><|audio_eos|>Transcribe the English audio into text without any "
        "punctuation marks.<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(PromptError, match="unknown language 'xx'"):
        QWEN3_ASR.asr_prompt(clip, "xx")
    with pytest.raises(PromptError, match="word timestamps"):
        QWEN3_ASR.asr_prompt(clip, "en", timestamps=True)
    # an instruction asks in the family's chat instead
    prompt, _ = QWEN3_ASR.asr_prompt(clip, "en", instruction="Transcribe.")
    assert prompt.text.endswith("<|audio_end|>Transcribe.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("text", "expected"), [
    ("language English<asr_text>Hello world.<|im_end|>", ParsedOutput("Hello world.", "en")),
    ("language Cantonese<asr_text>早晨", ParsedOutput("早晨", "yue")),
    ("language Klingon<asr_text>Qapla'", ParsedOutput("Qapla'", "Klingon")),
    ("language None<asr_text>", ParsedOutput("", None)),
    ("just the transcript<|endoftext|>junk", ParsedOutput("just the transcript", None)),
])
def test_qwen3_asr_transcripts_parse_into_language_and_text(text, expected) -> None:
    assert QWEN3_ASR.parse(text, None) == expected


def test_windowed_encoders_take_30_s_windows(tokenizers) -> None:
    """Qwen3-ASR's n_ctx counts positions per chunk (13): 0.26 s was its window before."""
    for preset, folder in (("tiny-random-asr", "qwen3_asr"), ("tiny-random-omni", "qwen2_5_omni")):
        pipe = Pipeline(random_model(preset), load_tokenizer(tokenizers[folder]))
        assert pipe.model.encoder.max_frames is None and pipe.window_s == 30.0
    assert Pipeline(random_model("tiny-random"),
                    load_tokenizer(TOKENIZER_DIR)).window_s == 30.0


def test_training_items_take_the_models_audio_rows(tokenizers, tmp_path) -> None:
    """A Qwen3-ASR item has as many audio slots as its encoder gives rows (about 13 per
    second); the 25-per-second Whisper rule would leave twice too many."""
    model = random_model("tiny-random-asr")
    sf.write(tmp_path / "a.wav", np.zeros(16000 * 2, np.float32) + 0.01, 16000)
    example = Example(id="a", audios=(AudioRef("a.wav"),), target="hi",
                      task=ExampleTask("asr", instruction="Transcribe."), split="train")
    dataset = AudioTextDataset([example], load_tokenizer(tokenizers["qwen3_asr"]), 128,
                               tmp_path, row_counts=model.audio_row_counts)
    item = dataset[0]
    rows = model.audio_row_counts(item["feature_lens"])
    assert int(item["audio_slot_mask"].sum()) == int(rows.sum()) == 26
    rows_out = model.embed_audio(item["features"][0][None], item["feature_lens"])
    assert rows_out[0].shape[0] == 26  # what the model splices into those slots
    whisper_rule = AudioTextDataset([example], dataset.tokenizer, 128, tmp_path)[0]
    assert int(whisper_rule["audio_slot_mask"].sum()) == 50


def test_server_prompt_budget_counts_the_models_audio_rows(tokenizers) -> None:
    """The server's exact prompt length (context and max_tokens checks) of a Qwen3-ASR chat
    equals the prepared prompt's: the model's ~13 rows per second, not the 25 of Whisper."""
    from lalm.config import ModelConfig
    from lalm.serve.budget import PromptBudget

    config = ModelConfig.from_name("tiny-random-asr", decoder={"vocab_size": 151936})
    pipe = Pipeline(random_model(config), load_tokenizer(tokenizers["qwen3_asr"]))
    budget = PromptBudget(pipe)
    for seconds in (0.3, 2.0, 31.0):  # the last one in two windows
        request = pipe.chat_request("Hi", [np.zeros(int(16000 * seconds), np.float32)])
        assert budget.exact(request) == int(pipe.prepare([request]).lengths[0])
        assert budget.lower_bound(request) <= budget.exact(request)


def test_preference_pairs_take_the_models_audio_rows(tokenizers, tmp_path) -> None:
    """DPO's data (built as the stage builds it) gives both answers of a Qwen3-ASR pair the
    model's audio rows per clip, as SFT's items have them."""
    from lalm.training.build import build_dataset
    from lalm.training.dpo import PreferencePair, write_pairs
    from lalm.training.stages import TrainConfig

    model = random_model("tiny-random-asr")
    sf.write(tmp_path / "a.wav", np.zeros(16000 * 2, np.float32) + 0.01, 16000)
    prompt = Example(id="a", audios=(AudioRef(str(tmp_path / "a.wav")),), target="",
                     task=ExampleTask("asr", instruction="Transcribe."), split="train")
    write_pairs(tmp_path / "pairs.jsonl", [PreferencePair("p", prompt, "hi", "ho")])
    config = TrainConfig.from_file("dpo", [f"data.train=[{{manifest: {tmp_path / 'pairs.jsonl'}}}]",
                                           "data.valid=null"])
    dataset, skipped = build_dataset(config.data.train, config, load_tokenizer(
        tokenizers["qwen3_asr"]), 128, seed=0, row_counts=model.audio_row_counts)
    assert skipped == 0 and len(dataset) == 1
    chosen, rejected = dataset[0]
    assert int(chosen["audio_slot_mask"].sum()) == int(rejected["audio_slot_mask"].sum()) == 26
