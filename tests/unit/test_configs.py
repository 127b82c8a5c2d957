"""Every YAML under configs/ loads into its dataclass, and its first line says how to run it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lalm.training.stages import TrainConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
LOADERS = {"train": TrainConfig.from_file}
YAMLS = sorted(CONFIGS.rglob("*.yaml"))


def test_there_are_stage_configs():
    names = {p.stem for p in YAMLS}
    assert {"stage1_pretrain", "stage2_sft", "stage3_dpo", "default_model"} <= names


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads_into_its_dataclass(path):
    folder = path.relative_to(CONFIGS).parts[0]
    assert folder in LOADERS, f"no dataclass known for configs/{folder}"
    config = LOADERS[folder](path)
    assert config.stage == path.stem
    assert path.read_text().startswith("#")
    assert "lalm train configs/train/" in path.read_text()


def test_paper_recipes_freeze_what_the_paper_freezes():
    stage1 = TrainConfig.from_file(CONFIGS / "train" / "stage1_pretrain.yaml")
    assert (stage1.parts.encoder, stage1.parts.projector, stage1.parts.decoder) == (
        "full", "full", "frozen")
    stage2 = TrainConfig.from_file(CONFIGS / "train" / "stage2_sft.yaml")
    assert stage2.parts.encoder == "frozen" and stage2.parts.decoder == "full"
    assert len(stage2.data.train) == 2 and stage2.data.train[1].weight == 0.5
    stage3 = TrainConfig.from_file(CONFIGS / "train" / "stage3_dpo.yaml")
    assert stage3.objective == "dpo" and stage3.parts.decoder == "lora"
