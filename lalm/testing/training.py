"""Builders for training tests: a hand-made tone dataset, a tokenizer sized for it and a tiny
stage config around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from lalm.audio import SAMPLE_RATE
from lalm.data.manifest import AudioRef, Example, ExampleTask, read_manifest, write_manifest
from lalm.prompt import QWEN2_AUDIO_SPECIAL_TOKENS
from lalm.tokenizer import load_tokenizer
from lalm.training.bpe import corpus, train_tokenizer
from lalm.training.stages import TrainConfig

NOTES = {"A3": 220.0, "C4": 261.63, "E4": 329.63, "A4": 440.0, "C5": 523.25, "E5": 659.26}


def write_tone_dataset(folder: str | Path, n: int, split: str = "train",
                       seed: int = 0) -> Path:
    """`n` pitch-question items over sine tones of 0.2-0.6 s (one WAV each) and their manifest.

    Returns:
        The manifest path (``folder/<split>.jsonl``; audio paths relative to `folder`).
    """
    folder = Path(folder)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, n])
    names = sorted(NOTES)
    examples = []
    for i in range(n):
        note = names[int(rng.integers(len(names)))]
        seconds = float(rng.uniform(0.2, 0.6))
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * NOTES[note] * t).astype(np.float32)
        rel = f"audio/{split}-{i:03d}.wav"
        sf.write(folder / rel, wave, SAMPLE_RATE, subtype="PCM_16")
        examples.append(Example(
            id=f"{split}-{i:03d}", audios=(AudioRef(rel),), target=note, answer=note,
            task=ExampleTask("music_pitch", instruction="Which note is played?"), split=split))
    path = folder / f"{split}.jsonl"
    write_manifest(path, examples)
    return path


def write_tiny_tokenizer(folder: str | Path, *manifests: str | Path) -> Path:
    """A Qwen2-Audio-family byte-level BPE of about 300 ids learned on the manifests' text
    (`lalm.training.bpe`; specials: ChatML and the audio tokens only), for tests that are not
    about the tokenizer: a tiny model's embedding and lm_head then stay tiny too, instead of
    carrying the 151k Qwen vocabulary.

    Returns:
        The tokenizer folder (``tokenizer.json``; ``len(load_tokenizer(folder))`` ids).
    """
    examples = [e for m in manifests for e in read_manifest(m)]
    train_tokenizer(corpus(examples), folder, vocab_size=300, min_frequency=1,
                    specials=QWEN2_AUDIO_SPECIAL_TOKENS)
    return Path(folder)


def tiny_stage(out_dir: str | Path, train_manifest: str | Path, tokenizer: str | Path,
               vocab_size: int, **sections: dict[str, Any]) -> dict[str, Any]:
    """A stage config (YAML form) training a tiny random model on `train_manifest`.

    Args:
        out_dir: run folder.
        train_manifest: training manifest.
        tokenizer: tokenizer folder.
        vocab_size: decoder rows (at least the tokenizer's size).
        sections: per-section updates merged into the result (e.g. ``run={"max_steps": 3}``).
    """
    config: dict[str, Any] = {
        "stage": "tiny",
        "model": {"preset": "tiny-random", "overrides": {
            "encoder": {"dim": 32, "n_head": 2, "n_layer": 1, "hidden_dim": 64},
            "decoder": {"vocab_size": vocab_size, "dim": 32, "n_head": 4, "n_kv_head": 2,
                        "n_layer": 2, "hidden_dim": 64}}},
        "data": {"tokenizer": str(tokenizer), "train": [{"manifest": str(train_manifest)}],
                 "max_items": 1},
        "parts": {"encoder": "full", "projector": "full", "decoder": "full"},
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "run": {"out_dir": str(out_dir), "max_steps": 4, "save_every": 2, "log_every": 1,
                "progress": False, "export": False, "metric_items": 0},
    }
    for section, values in sections.items():
        if isinstance(config.get(section), dict) and isinstance(values, dict):
            config[section].update(values)
        else:
            config[section] = values
    return config


def tiny_config(out_dir: str | Path, train_manifest: str | Path, tokenizer: str | Path,
                **sections: dict[str, Any]) -> TrainConfig:
    """`tiny_stage` as a `TrainConfig`, its decoder rows the tokenizer's size."""
    return TrainConfig.from_dict(tiny_stage(out_dir, train_manifest, tokenizer,
                                            len(load_tokenizer(tokenizer)), **sections))
