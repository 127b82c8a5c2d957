"""Every shipped stage config (package data, `lalm/training/configs/`) loads into its dataclass,
its header says how to run it by name, and names, `lalm config` and ``data.train=FILE`` work
from any folder (issue 14.5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lalm.cli import main
from lalm.errors import ConfigError
from lalm.training.stages import CONFIG_DIR, TrainConfig, stage_configs

REPO = Path(__file__).resolve().parents[2]
YAMLS = sorted(CONFIG_DIR.glob("*.yaml"))


def test_there_are_stage_configs():
    names = {p.stem for p in YAMLS}
    assert {"stage1_pretrain", "stage2_sft", "stage3_dpo", "default_model"} <= names
    assert not (REPO / "configs").exists()  # one copy: the package data


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_loads_into_its_dataclass(path):
    config = TrainConfig.from_file(path)
    assert config.stage == path.stem
    text = path.read_text()
    assert text.startswith("#")
    names = [name for name, p in stage_configs().items() if p == path]
    assert any(f"lalm train {name} " in text for name in names), names


def test_paper_recipes_freeze_what_the_paper_freezes():
    stage1 = TrainConfig.from_file("pretrain")
    assert (stage1.parts.encoder, stage1.parts.projector, stage1.parts.decoder) == (
        "full", "full", "frozen")
    stage2 = TrainConfig.from_file("stage2_sft")
    assert stage2.parts.encoder == "frozen" and stage2.parts.decoder == "full"
    assert len(stage2.data.train) == 2 and stage2.data.train[1].weight == 0.5
    stage3 = TrainConfig.from_file("dpo")
    assert stage3.objective == "dpo" and stage3.parts.decoder == "lora"


def test_a_manifest_path_replaces_the_whole_mix():
    config = TrainConfig.from_file("sft", ["data.train=my.jsonl", "data.valid=held.jsonl"])
    assert [s.manifest for s in config.data.train] == ["my.jsonl"]
    assert config.data.train[0].weight == 1.0 and config.data.valid.manifest == "held.jsonl"
    config = TrainConfig.from_file("sft", ["data.train=[a.jsonl, b.jsonl]", "data.valid=null"])
    assert [s.manifest for s in config.data.train] == ["a.jsonl", "b.jsonl"]
    assert config.data.valid is None


def test_an_unknown_name_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match=r"nope.*sft.*lalm config list"):
        TrainConfig.from_file("nope")
    with pytest.raises(ConfigError, match=r"did you mean 'stage2_sft'"):  # the old repo path
        TrainConfig.from_file("configs/train/stage2_sft.yaml")


def test_a_warmup_covering_most_of_the_run_warns():
    with pytest.warns(UserWarning, match=r"warmup_steps=200.*max_steps=100.*never reaches"):
        TrainConfig.from_file("sft", ["run.max_steps=100"])


def test_config_list_and_show(capsys):
    assert main(["config", "list"]) == 0
    listing = capsys.readouterr().out
    assert "sft" in listing and "stage2_sft.yaml" in listing and "dpo" in listing
    assert main(["config", "show", "sft"]) == 0
    assert capsys.readouterr().out == (CONFIG_DIR / "stage2_sft.yaml").read_text()
    assert main(["config", "show", "nope"]) == 2


def test_train_help_documents_lora_and_names(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "parts.decoder=lora" in out and "data.train=" in out and "lalm config list" in out


def test_shipped_configs_work_outside_the_repository(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a folder with no configs/ in it: names reach the package data
    assert main(["config", "show", "dpo"]) == 0
    assert capsys.readouterr().out.startswith("# Stage 3")
    assert TrainConfig.from_file("sft").stage == "stage2_sft"
