"""The default model's recipe end to end, scaled down: the code path of ``lalm demo`` (data,
tokenizer, real Whisper tiny.en + fresh decoder, training with the encoder cache, evaluation,
publication, chat turn) on a tiny lalm-synth set, a tiny decoder and a few steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lalm
from lalm import cli
from lalm.assets import default_model_dir
from lalm.checkpoint import load_model
from lalm.checkpoint.load import load_config
from lalm.demo import (
    CARD,
    DEFAULT_DECODER,
    DEMO_CLIP,
    RECIPE,
    DefaultModelSpec,
    build_default_model,
    ensure_default_model,
    run_demo,
)
from lalm.errors import CheckpointError
from lalm.prompt import tag
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TASKS = ("asr", "sound_event", "speaker_gender")
TINY = DefaultModelSpec(
    synth_size="tiny", synth_tasks=TASKS, bpe_vocab=400,
    decoder={"dim": 64, "n_layer": 1, "n_head": 2, "n_kv_head": 1, "hidden_dim": 128,
             "max_seq_len": 512},
    overrides=("run.max_steps=3", "optim.warmup_steps=1", "run.progress=false"),
    eval_batch_size=4, max_new_tokens=8)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The scaled-down default model, built once for the module."""
    target = tmp_path_factory.mktemp("cache") / "default-model"
    assert build_default_model(TINY, target, log=lambda _: None) == target
    return target


def test_recipe_is_the_documented_stage() -> None:
    config = TrainConfig.from_file(RECIPE)
    assert config.parts.encoder == "frozen" and config.parts.decoder == "full"
    assert config.data.encoder_cache and config.data.bucket_ratio == 1.1
    assert config.run.export and config.run.precision == "fp32"
    assert f"{DEFAULT_DECODER['n_layer']} layers x {DEFAULT_DECODER['dim']}" in RECIPE.read_text()


def test_build_publishes_a_qwen2_audio_checkpoint_with_its_card(built: Path) -> None:
    work = built.with_name(built.name + ".work")
    assert not (work / "run").exists() and not (work / "init").exists()  # cleaned up
    assert (work / "lalm-synth" / "test.jsonl").is_file()  # kept: a rebuild resumes it
    config, fmt = load_config(built)
    tokenizer = load_tokenizer(built)
    assert fmt.name == "qwen2_audio"
    assert config.decoder.dim == 64 and config.decoder.vocab_size >= len(tokenizer)
    assert config.decoder.vocab_size % 64 == 0
    assert config.encoder.dim == 384 and config.encoder.n_layer == 4  # real Whisper tiny.en
    card = json.loads((built / CARD).read_text())
    assert card["training"]["steps"] == 3
    assert card["tokenizer_size"] == len(tokenizer)
    assert set(card["scores"]["tasks"]) == set(TASKS)
    asr = card["scores"]["tasks"]["asr"]
    assert asr["metric"] == "error rate" and asr["per_language"]
    assert card["parameters"]["total"] == sum(card["parameters"][p] for p in
                                              ("encoder", "projector", "decoder"))
    assert (built / DEMO_CLIP).is_file() and card["demo"]["question"]


def test_transformers_loads_the_published_model(built: Path) -> None:
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
        built, dtype=torch.float32).eval()
    ours = load_model(built, dtype="fp32").eval()
    ids = torch.tensor([load_tokenizer(built).encode(f"{tag('im_start')}user\nWhich language is "
                                                     f"spoken?{tag('im_end')}")])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-4)


def test_demo_answers_a_chat_turn_from_the_folder(built: Path) -> None:
    lines: list[str] = []
    assert run_demo(built, out=lines.append) == built
    text = "\n".join(lines)
    assert "lalm default model" in text and "asr" in text
    assert any(line.startswith("model: ") for line in lines)
    assert "(reference answer: " in text


def test_cli_demo_with_own_audio_and_question(built: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    clip = built / DEMO_CLIP
    assert cli.main(["demo", "--model", str(built), "--audio", str(clip),
                     "--question", "What is in the clip?"]) == 0
    out = capsys.readouterr().out
    assert "What is in the clip?" in out and "model: " in out
    assert "reference answer" not in out


def test_default_name_resolves_to_the_cache(built: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LALM_CACHE", str(built.parent))
    assert default_model_dir() == built
    assert ensure_default_model() == built  # cached: nothing is built
    pipe = lalm.load_model("default")
    assert pipe.model.config.decoder.dim == TINY.decoder["dim"]
    monkeypatch.setenv("LALM_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="lalm demo"):
        lalm.load_model("default")
