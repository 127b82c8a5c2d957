"""Shared test fixtures: the team's fixtures folder (../shared/fixtures), seeds, real assets."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = Path(os.environ.get("LALM_SHARED_FIXTURES", REPO.parent / "shared" / "fixtures"))


def shared_fixture(name: str) -> Path:
    """Path of a folder under ../shared/fixtures, or skip the test with the reason."""
    path = SHARED_FIXTURES / name
    if not path.exists():
        pytest.skip(f"shared fixture {name!r} not found at {path} (CI always has ../shared)")
    return path


@pytest.fixture
def v1_fixture() -> Path:
    """The tiny Qwen-Audio v1 checkpoint with goldens from the official reference code."""
    return shared_fixture("qwen_audio_v1_tiny_A")


@pytest.fixture
def qwen2_tokenizer_dir() -> Path:
    """Qwen2-Audio-7B-Instruct tokenizer and processor files rebuilt from the real BPE."""
    return shared_fixture("qwen2_audio_tokenizer")


@pytest.fixture(scope="session")
def qwen_tiktoken() -> Path:
    """The real Qwen BPE ranks: the shared fixture's copy, else fetched from the dashscope wheel."""
    local = SHARED_FIXTURES / "qwen_audio_v1_tiny_A" / "qwen.tiktoken"
    if local.exists():
        return local
    from lalm.assets import asset_path

    return asset_path("qwen.tiktoken")


@pytest.fixture(scope="session")
def v1_tokenizer(qwen_tiktoken: Path):
    """The Qwen-Audio (v1) tokenizer over the real Qwen BPE."""
    from lalm.tokenizer import Tokenizer

    return Tokenizer.from_tiktoken(qwen_tiktoken)


@pytest.fixture(scope="session")
def v2_tokenizer():
    """The Qwen2-Audio tokenizer from the shared fixture's tokenizer files."""
    from lalm.tokenizer import Tokenizer

    return Tokenizer.from_hf(shared_fixture("qwen2_audio_tokenizer"))


@pytest.fixture(scope="session")
def peaked_model():
    """tiny-random (seed 3) with its lm_head scaled by 10: peaked next-token distributions, so
    greedy and beam choices are not near-ties (decode-loop tests)."""
    import torch

    from lalm.testing.models import random_model

    model = random_model("tiny-random", seed=3)
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(10.0)
    return model


def tone_clip(seconds: float, seed: int):
    """[N] float32 16-kHz samples: a tone at a seeded pitch plus a little noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)
            + 0.05 * rng.standard_normal(t.shape[0])).astype(np.float32)


@pytest.fixture
def seed():
    import torch

    torch.manual_seed(0)
    return 0


@contextmanager
def loopback_server(handler: type) -> Iterator[str]:
    """A stdlib HTTP server with ``handler`` on a free 127.0.0.1 port; yields its ``/v1`` root
    (tests use it as a stand-in for an OpenAI-compatible judge or embedding model)."""
    from http.server import HTTPServer

    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
