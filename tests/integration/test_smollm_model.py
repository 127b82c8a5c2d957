"""The SmolLM2 audio model end to end on its real parts (Whisper tiny.en from its PyPI package,
SmolLM2-135M-Instruct's GGUF from its wheel), scaled down: `build_smollm_model` with
``retrain`` on a tiny lalm-synth set (and tiny extra English speech, then four spoken
sentences) for one step a stage (train_parts of both stages,
assembly with the digest checked, evaluation, the card, the demo's three turns), and the
shipped parts' assembly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lalm import cli
from lalm import smollm_model as sm
from lalm.demo import CARD, describe, run_demo
from lalm.generation import Pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]
pytest.importorskip("gguf")


def _build_tiny(tmp_path_factory: pytest.TempPathFactory, name: str, steps: int,
                **stage: object) -> Path:
    """`build_smollm_model` retraining on tiny lalm-synth data for `steps` steps a stage,
    `stage` choosing the second stage."""
    root = tmp_path_factory.mktemp(name)
    return sm.build_smollm_model(
        root / "smollm-model", retrain=True, log=lambda _: None, data=root / "lalm-synth",
        synth_size="tiny", synth_tasks=("asr", "sound_event"), speech_size="tiny",
        sentences=(4, 2), overrides=(f"run.max_steps={steps}", "optim.warmup_steps=1"),
        **stage)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny(tmp_path_factory, "smollm", 1, sentence_stage=True)


def test_the_card_says_what_was_trained_and_scored(built: Path) -> None:
    card = json.loads((built / CARD).read_text())
    assert card["name"] == sm.NAME and "SmolLM2-135M-Instruct" in card["what"]
    assert card["training"]["steps"] == 1 and card["training"]["stage1"]["steps"] == 1
    assert "trained 1 + 1 steps" in describe(card)  # both stages
    assert card["spec"]["recipe"] == [str(sm.RECIPE), str(sm.SENTENCE_RECIPE)]
    assert card["spec"]["parts_sha256"] == card["training"]["sha256"]
    assert card["parameters"]["decoder"] > 100e6 and card["parameters"]["projector"] < 1e6
    assert set(card["scores"]["tasks"]) == {"asr", "sound_event"}
    assert [t["audio"] is None for t in card["demo"]] == [False, False, True]


def test_text_only_answers_are_smollm2s_own(built: Path, tmp_path: Path) -> None:
    # the decoder is frozen: a text-only prompt never meets the trained parts
    question = "What is the capital of France?"
    ours = Pipeline.from_pretrained(built).chat(question, [], max_new_tokens=12).text
    own = Pipeline.from_pretrained(sm.init_from_parts(tmp_path / "init")).chat(
        question, [], max_new_tokens=12).text
    assert ours == own and "Paris" in ours


def test_demo_answers_its_three_turns(built: Path) -> None:
    lines: list[str] = []
    run_demo(built, out=lines.append)
    text = "\n".join(lines)
    assert "lalm smollm model" in text and "sha256" in text
    assert sum(line.startswith("model: ") for line in lines) == 3
    assert "(text only) What is the capital of France?" in text


def test_assembly_refuses_parts_with_another_digest(built: Path, tmp_path: Path) -> None:
    card = json.loads((built / CARD).read_text())
    parts = Path(card["spec"]["parts"])
    with pytest.raises(Exception, match="sha256"):
        sm.assemble(tmp_path / "m", parts, "0" * 64)
    assert not (tmp_path / "m").exists()


def test_cli_demo_takes_the_model_name(monkeypatch: pytest.MonkeyPatch, built: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sm, "smollm_model_dir", lambda: built)  # the built one is "cached"
    assert cli.main(["demo", "--model", "smollm", "--question", "Say hi.",
                     "--audio", str(built / json.loads((built / CARD).read_text())["demo"][0][
                         "audio"])]) == 0
    assert "Say hi." in capsys.readouterr().out


@pytest.fixture(scope="module")
def built_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny(tmp_path_factory, "smollm-lora", 2, lora_stage=True, chat_size=4)


def test_the_lora_stage_ships_its_adapters_merged(built_lora: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    card = json.loads((built_lora / CARD).read_text())
    assert card["spec"]["recipe"] == [str(sm.RECIPE), str(sm.LORA_RECIPE)]
    assert "LoRA" in card["what"] and card["training"]["steps"] == 2
    parts = sm.read_parts(Path(card["spec"]["parts"]), card["spec"]["parts_sha256"])
    lora = sm.parts_lora(parts, sm.read_parts_alpha(Path(card["spec"]["parts"])), "parts")
    assert lora is not None and lora.rank == 8 and len(lora.targets) == 7
    # the published model has the plain architecture, its decoder weights moved by the LoRA
    merged = load_file(str(built_lora / "model.safetensors"))
    base = load_file(str(sm.init_from_parts(tmp_path / "init") / "model.safetensors"))
    assert set(merged) == set(base)
    key = "language_model.model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[key], base[key])
    assert torch.equal(merged["audio_tower.conv1.weight"], base["audio_tower.conv1.weight"])


@pytest.fixture(scope="module")
def built_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny(tmp_path_factory, "smollm-encoder", 2, encoder_stage=True)


def test_the_encoder_stage_ships_its_adapters_merged_into_the_encoder(
        built_encoder: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    card = json.loads((built_encoder / CARD).read_text())
    assert card["spec"]["recipe"] == [str(sm.RECIPE), str(sm.ENCODER_RECIPE)]
    assert "encoder (LoRA-adapted, merged)" in card["what"]
    assert "GGUF file; frozen" in card["what"]
    parts = sm.read_parts(Path(card["spec"]["parts"]), card["spec"]["parts_sha256"])
    assert all(k.startswith(("encoder.", "projector.")) or k.endswith(".new_rows")
               for k in parts)
    lora = sm.parts_lora(parts, sm.read_parts_alpha(Path(card["spec"]["parts"])), "parts")
    assert lora is not None and lora.rank == 16 and len(lora.targets) == 6
    # the plain architecture; the encoder's weights moved, the decoder's are SmolLM2's own
    merged = load_file(str(built_encoder / "model.safetensors"))
    base = load_file(str(sm.init_from_parts(tmp_path / "init") / "model.safetensors"))
    assert set(merged) == set(base)
    assert not torch.equal(merged["audio_tower.layers.0.self_attn.q_proj.weight"],
                           base["audio_tower.layers.0.self_attn.q_proj.weight"])
    assert all(torch.equal(merged[k], base[k]) for k in base
               if k.startswith("language_model.") and "embed_tokens" not in k
               and "lm_head" not in k)


@pytest.fixture(scope="module")
def built_audio_lora(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_tiny(tmp_path_factory, "smollm-audio-lora", 2, audio_lora_stage=True)


def test_the_audio_gated_stage_ships_base_weights_and_a_gated_adapter(
        built_audio_lora: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from lalm.checkpoint.peft import AUDIO_ADAPTER, CONFIG_FILE

    card = json.loads((built_audio_lora / CARD).read_text())
    assert card["spec"]["recipe"] == [str(sm.RECIPE), str(sm.AUDIO_LORA_RECIPE)]
    assert "conversations that hold audio" in card["what"]
    parts_file = Path(card["spec"]["parts"])
    assert sm.read_parts_applies_to(parts_file) == "audio"
    # the weights are SmolLM2's own; the adapter lies beside them in PEFT's format
    assert (built_audio_lora / AUDIO_ADAPTER / CONFIG_FILE).is_file()
    ours = load_file(str(built_audio_lora / "model.safetensors"))
    init = sm.init_from_parts(tmp_path / "init")
    base = load_file(str(init / "model.safetensors"))
    assert set(ours) == set(base)
    assert all(torch.equal(ours[k], base[k]) for k in base
               if k.startswith("language_model.") and "embed_tokens" not in k
               and "lm_head" not in k)
    pipe = Pipeline.from_pretrained(built_audio_lora)
    assert pipe.model.decoder.adapter_gate is not None
    # a text-only conversation runs SmolLM2-Instruct as it is
    question = "What is the capital of France?"
    own = Pipeline.from_pretrained(init).chat(question, [], max_new_tokens=12).text
    assert pipe.chat(question, [], max_new_tokens=12).text == own


def test_the_shipped_parts_assemble_into_the_gated_model(tmp_path: Path) -> None:
    model_dir = sm.assemble(tmp_path / "m")  # the shipped parts, their sha256 checked
    pipe = Pipeline.from_pretrained(model_dir)
    assert pipe.model.decoder.adapter_gate is not None
    shipped = sm.read_parts()
    assert torch.equal(pipe.model.projector.proj.weight.float(),
                       shipped["projector.proj.weight"].float())
    question = "What is the capital of France?"
    own = Pipeline.from_pretrained(sm.init_from_parts(tmp_path / "init")).chat(
        question, [], max_new_tokens=12).text
    assert pipe.chat(question, [], max_new_tokens=12).text == own and "Paris" in own
