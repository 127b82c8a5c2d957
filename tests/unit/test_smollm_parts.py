"""The SmolLM2 audio model's shipped parts: their layout, digest and recipe (lalm.smollm_model);
the model itself is assembled from the real parts by tests/integration/test_smollm_model.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lalm import smollm_model as sm
from lalm.errors import CheckpointError, ConfigError
from lalm.model.lora import LoRALinear, merge_lora
from lalm.testing.models import random_model
from lalm.training import TrainConfig
from lalm.training.lora import apply_lora
from lalm.training.stages import LoraConfig


def test_parts_round_trip_into_another_model() -> None:
    trained, fresh = random_model(seed=1), random_model(seed=2)
    parts = sm.extract_parts(trained.state_dict())
    assert {k for k in parts if not k.endswith(".new_rows")} == {
        k for k in trained.state_dict() if k.startswith("projector.")}
    assert parts["decoder.embed.weight.new_rows"].shape[0] == sm.NEW_ROWS
    sm.apply_parts(fresh, parts, "test")
    for key, value in trained.state_dict().items():
        got = fresh.state_dict()[key]
        if key.startswith("projector."):
            assert torch.equal(got, value)
        elif key in ("decoder.embed.weight", "decoder.lm_head.weight"):
            assert torch.equal(got[-sm.NEW_ROWS:], value[-sm.NEW_ROWS:])
            assert not torch.equal(got[:-sm.NEW_ROWS], value[:-sm.NEW_ROWS])  # rest untouched


def test_parts_that_do_not_fit_are_refused() -> None:
    model = random_model()
    parts = sm.extract_parts(model.state_dict())
    with pytest.raises(CheckpointError, match="do not fit"):
        sm.apply_parts(model, {**parts, "decoder.norm.weight": torch.ones(1)}, "extra.st")
    bad = dict(parts)
    bad["projector.proj.bias"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match="shape"):
        sm.apply_parts(model, bad, "bad.st")


def test_a_parts_file_with_another_digest_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "parts.safetensors"
    parts = sm.extract_parts(random_model().state_dict())
    save_file(parts, str(path))
    assert set(sm.read_parts(path, sm.file_sha256(path))) == set(parts)
    with pytest.raises(CheckpointError, match="sha256"):
        sm.read_parts(path, "0" * 64)
    with pytest.raises(CheckpointError, match="missing"):
        sm.read_parts(tmp_path / "none.safetensors")


def test_saved_parts_are_the_same_bytes_every_time(tmp_path: Path) -> None:
    # safetensors' own writer orders the metadata differently from call to call; a retrained
    # LoRA stage's sha256 could then never equal the shipped one
    parts = sm.extract_parts(random_model().state_dict())
    meta = {"lora_alpha": "16.0", "lora_applies_to": "audio", "c": "3", "d": "4", "e": "5"}
    digests = set()
    for i in range(8):
        sm.save_parts(parts, tmp_path / f"{i}.safetensors", meta)
        digests.add(sm.file_sha256(tmp_path / f"{i}.safetensors"))
    assert len(digests) == 1
    assert sm._parts_meta(tmp_path / "0.safetensors") == meta
    back = sm.read_parts(tmp_path / "0.safetensors", None)
    assert set(back) == set(parts) and all(torch.equal(back[k], parts[k]) for k in parts)
    assert not list(tmp_path.glob("*.partial"))

def test_the_shipped_parts_match_their_digest_and_card() -> None:
    tensors = sm.read_parts()  # checks PARTS_SHA256
    assert tensors["projector.proj.weight"].shape == (576, 384)  # Whisper tiny -> SmolLM2 width
    card = json.loads(sm.PARTS_CARD.read_text())
    assert card["sha256"] == sm.PARTS_SHA256
    # two stages: the projector alone (RECIPE), then the gated decoder adapters with it
    stage1, stage2 = (TrainConfig.from_file(r) for r in sm.SHIPPED_RECIPES)
    assert card["stage1"]["steps"] == stage1.run.max_steps
    assert card["steps"] == stage2.run.max_steps
    lora = sm.parts_lora(tensors, sm.read_parts_alpha(sm.PARTS), "parts",
                         sm.read_parts_applies_to(sm.PARTS))
    assert lora is not None and lora.applies_to == "audio" == stage2.lora.applies_to
    assert (lora.rank, lora.alpha, lora.targets) == (
        stage2.lora.rank, stage2.lora.alpha, tuple(sorted(stage2.lora.targets)))
    assert "lalm demo --model smollm --retrain" in card["command"]
    assert sm.PARTS.stat().st_size < 12_000_000  # fp32 factors of 2.44 M parameters: 10.7 MB


def test_recipe_trains_the_projector_only() -> None:
    config = TrainConfig.from_file(sm.RECIPE)
    assert (config.parts.encoder, config.parts.projector, config.parts.decoder) == (
        "frozen", "full", "frozen")
    assert config.run.seed == 0 and config.optim.min_lr_ratio == 1.0
    assert config.run.export


def test_audio_manifest_leaves_out_the_tasks_without_gradient(tmp_path: Path) -> None:
    rows = [{"id": f"{t}-0", "task": {"name": t}} for t in ("asr", "text_chat", "s2tt", "tempo")]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = sm.audio_manifest(tmp_path)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        "asr-0", "tempo-0"]


def test_test_manifest_keeps_the_first_items_of_every_task(tmp_path: Path) -> None:
    rows = [{"id": f"{t}-{i}", "task": {"name": t}} for t in ("asr", "tempo") for i in range(3)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert sm.test_manifest(tmp_path, None) == tmp_path / "test.jsonl"
    out = sm.test_manifest(tmp_path, 2)
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [
        "asr-0", "asr-1", "tempo-0", "tempo-1"]


def _speech_item(task: str, split: str, i: int, language: str = "en") -> dict:
    return {"id": f"{task}-{split}-{i}", "target": f"sentence {i}", "words": [{"word": "w"}],
            "audios": [{"path": f"audio/{split}/{task}/{i}.wav"}],
            "task": {"name": task, "audio_language": language, "timestamps": task == "srwt",
                     "instruction": "Transcribe." if task == "asr" else "With times."}}


def test_audio_manifest_takes_the_english_speech_of_the_speech_set(tmp_path: Path) -> None:
    data, speech = tmp_path / "small", tmp_path / "small-speech"
    data.mkdir()
    speech.mkdir()
    rows = [{"id": f"{t}-0", "task": {"name": t}} for t in ("asr", "srwt", "text_chat", "tempo")]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = [_speech_item("asr", "train", 0, "de"), _speech_item("srwt", "train", 1)]
    (speech / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    out = [json.loads(line) for line in sm.audio_manifest(data, speech).read_text().splitlines()]
    # small's asr/srwt give way to the speech set's; each srwt clip also comes as plain ASR
    assert [r["id"] for r in out] == ["tempo-0", "asr-train-0", "srwt-train-1",
                                      "srwt-train-1-asr"]
    plain = out[-1]
    assert plain["task"]["name"] == "asr" and not plain["task"]["timestamps"]
    assert plain["task"]["instruction"] == "Transcribe the speech." and plain["words"] == []
    assert plain["target"] == "sentence 1"
    assert plain["audios"][0]["path"] == "../small-speech/audio/train/srwt/1.wav"
    assert (data / plain["audios"][0]["path"]).resolve() == (
        speech / "audio/train/srwt/1.wav").resolve()


def test_english_asr_manifest_holds_the_english_test_speech_only(tmp_path: Path) -> None:
    items = [_speech_item("asr", "test", 0, "fr"), _speech_item("asr", "test", 1),
             _speech_item("srwt", "test", 2)]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    out = [json.loads(line) for line in sm.english_asr_manifest(tmp_path).read_text().splitlines()]
    assert [(r["id"], r["task"]["name"]) for r in out] == [
        ("asr-test-1", "asr"), ("srwt-test-2-asr", "asr")]
    assert out[1]["audios"][0]["path"] == "audio/test/srwt/2.wav"


#: LoRA layouts of the parts files: the decoder's (the LoRA stage), the encoder's (the encoder
#: stage) and both at once; the targets of each part, as `sm.parts_lora` reports them.
ADAPTED = {"decoder": {"decoder": ("attn.q", "mlp.down")},
           "encoder": {"encoder": ("attn.query", "mlp.2")},
           "both": {"decoder": ("attn.q", "mlp.down"), "encoder": ("attn.query", "mlp.2")}}


def _adapted(seed: int, layout: str = "decoder") -> torch.nn.Module:
    """A random model whose parts of `layout` (`ADAPTED`) carry trained-looking (non-zero)
    LoRA adapters."""
    model = random_model(seed=seed)
    for part, targets in ADAPTED[layout].items():
        apply_lora(getattr(model, part), LoraConfig(rank=4, alpha=8.0, targets=targets),
                   prefix=part)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".lora_b"):
                p.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model


@pytest.mark.parametrize("layout", sorted(ADAPTED))
def test_lora_parts_install_as_the_merged_parts_of_the_trained_model(layout: str) -> None:
    trained, fresh = _adapted(seed=1, layout=layout), random_model(seed=1)
    parts = sm.extract_parts(trained.state_dict())
    adapters = {k for k in parts if k.endswith((".lora_a", ".lora_b"))}
    n_layer = {"decoder": trained.config.decoder.n_layer,
               "encoder": trained.config.encoder.n_layer}
    assert len(adapters) == sum(2 * 2 * n_layer[part] for part in ADAPTED[layout])
    targets = sorted({t for names in ADAPTED[layout].values() for t in names})
    assert sm.parts_lora(parts, 8.0, "t") == LoraConfig(rank=4, alpha=8.0,
                                                       targets=tuple(targets))
    sm.install_parts(fresh, parts, 8.0, "t")
    merge_lora(trained)
    assert set(fresh.state_dict()) == set(trained.state_dict())  # plain layers, plain names
    for key, value in trained.state_dict().items():
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-6), key
    # the adapters did change each adapted part, and only its targeted layers
    base = random_model(seed=1).state_dict()
    changed = {k for k, v in fresh.state_dict().items() if not torch.equal(v, base[k])}
    stack = {"decoder": "layers", "encoder": "blocks"}
    assert {k for k in changed if not k.startswith(("projector.", "decoder.embed.",
                                                    "decoder.lm_head."))} == {
        f"{part}.{stack[part]}.{i}.{t}.weight" for part, names in ADAPTED[layout].items()
        for i in range(n_layer[part]) for t in names}


def test_audio_gated_parts_install_with_the_decoder_adapters_gated(tmp_path: Path) -> None:
    trained = _adapted(seed=1, layout="both")
    parts = sm.extract_parts(trained.state_dict())
    fresh = random_model(seed=1)
    sm.install_parts(fresh, parts, 8.0, "t", "audio")
    kept = [m for m in fresh.modules() if isinstance(m, LoRALinear)]
    assert len(kept) == 2 * fresh.config.decoder.n_layer  # the decoder's, unmerged
    assert fresh.decoder.adapter_gate is not None and all(m.gate is not None for m in kept)
    assert not any(isinstance(m, LoRALinear) for m in fresh.encoder.modules())  # merged
    merge_lora(trained.encoder)
    assert fresh.state_dict().keys() == trained.state_dict().keys()
    for key, value in trained.state_dict().items():
        assert torch.allclose(fresh.state_dict()[key], value, atol=1e-6), key
    encoder_only = sm.extract_parts(_adapted(seed=1, layout="encoder").state_dict())
    with pytest.raises(CheckpointError, match="has none"):
        sm.parts_lora(encoder_only, 8.0, "p.st", "audio")
    path = tmp_path / "parts.safetensors"
    save_file(parts, str(path), {"lora_alpha": "8.0", "lora_applies_to": "audio"})
    assert sm.read_parts_applies_to(path) == "audio"
    save_file(parts, str(path), {"lora_alpha": "8.0"})
    assert sm.read_parts_applies_to(path) == "all"


def test_lora_parts_need_their_alpha_and_an_adapted_model(tmp_path: Path) -> None:
    parts = sm.extract_parts(_adapted(seed=1).state_dict())
    with pytest.raises(CheckpointError, match="lora_alpha"):
        sm.parts_lora(parts, None, "p.st")
    with pytest.raises(CheckpointError, match="do not fit"):  # LoRA factors, a plain decoder
        sm.apply_parts(random_model(), parts, "p.st")
    path = tmp_path / "parts.safetensors"
    save_file(parts, str(path), {"lora_alpha": "8.0"})
    assert sm.read_parts_alpha(path) == 8.0
    save_file(sm.extract_parts(random_model().state_dict()), str(path))
    assert sm.read_parts_alpha(path) is None
    assert sm.parts_lora(sm.read_parts(path, None), None, "p.st") is None


def test_only_one_second_stage_can_be_asked_for(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one"):
        sm.build_smollm_model(tmp_path / "m", retrain=True, sentence_stage=True,
                              encoder_stage=True, data=tmp_path / "data")
    assert not (tmp_path / "data").exists()  # refused before any work
