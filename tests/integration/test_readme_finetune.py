"""The README's LoRA fine-tuning commands, as a user types them (only the sizes of a test run
added), on a tiny transformers-saved Qwen2-Audio checkpoint and a messages JSONL: training by
the shipped ``sft`` name, chat on the export, and the export loading in transformers (14.5)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from lalm.cli import main
from lalm.testing.checkpoints import reference_config, save_reference_checkpoint
from lalm.testing.training import write_tone_dataset

pytestmark = [pytest.mark.slow, pytest.mark.integration]
README = Path(__file__).resolve().parents[2] / "README.md"
TEST_SIZE = ["--set", "run.max_steps=2", "--set", "optim.warmup_steps=1", "--set",
             "optim.grad_accum=1", "--set", "run.precision=fp32", "--set", "run.metric_items=0",
             "--set", "run.eval_batches=1", "--set", "run.progress=false"]


def _readme_command(start: str) -> list[str]:
    """The README's command line beginning with `start` (continuation lines joined)."""
    text = README.read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith(start))
    return shlex.split(line.split("#")[0])[1:]


def test_readme_lora_finetune_then_chat_and_transformers(qwen2_tokenizer_dir, tmp_path,
                                                         monkeypatch, capsys):
    transformers = pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)
    save_reference_checkpoint(tmp_path / "path/to/Qwen2-Audio-7B-Instruct", qwen2_tokenizer_dir,
                              reference_config(n_layer=1), std=0.02)
    tones = write_tone_dataset(tmp_path, 3)
    for name in ("my_train.jsonl", "my_valid.jsonl"):  # messages JSONL (ms-swift's layout)
        with open(name, "w") as f:
            for line in tones.read_text().splitlines():
                item = json.loads(line)
                f.write(json.dumps({"messages": [
                    {"role": "user", "content": "<audio>Which note is played?"},
                    {"role": "assistant", "content": item["target"]}],
                    "audios": [item["audios"][0]["path"]]}) + "\n")

    argv = _readme_command("lalm train sft --set model.checkpoint=")
    assert "parts.decoder=lora" in argv and "data.train=my_train.jsonl" in argv
    assert main([*argv, *TEST_SIZE]) == 0
    out = capsys.readouterr()
    assert "exported to runs/my_sft/export" in out.out
    assert re.search(r"[\d,]+ of [\d,]+ parameters train", out.err)

    chat = _readme_command("lalm chat --model runs/my_sft/export")
    chat[chat.index("--audio") + 1] = str(tmp_path / "audio" / "train-000.wav")
    assert main([*chat, "--max-new-tokens", "2"]) == 0
    model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained("runs/my_sft/export")
    assert not any("lora" in name for name, _ in model.named_parameters())
