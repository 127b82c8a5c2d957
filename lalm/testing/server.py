"""A real `lalm serve` process on a tiny random checkpoint, for tests and benchmarks.

`save_tiny_checkpoint` writes a Qwen2-Audio checkpoint directory with lalm's own writer
(random tiny weights, the real Qwen2-Audio tokenizer files beside them); `running_server`
starts ``python -m lalm serve`` on a free loopback port, waits for ``/health`` and stops it
afterwards. The server's output goes to a log file, never to a pipe nobody reads.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from lalm.config import ModelConfig
from lalm.testing.checkpoints import TOKENIZER_FILES
from lalm.testing.models import random_model


def save_tiny_checkpoint(directory: str | Path, tokenizer_dir: str | Path, seed: int = 0,
                         max_seq_len: int | None = None) -> Path:
    """A "tiny-random" Qwen2-Audio checkpoint (full 156,032-token vocabulary) in ``directory``.

    Args:
        directory: target folder (created).
        tokenizer_dir: folder with the Qwen2-Audio tokenizer files.
        seed: weight seed.
        max_seq_len: decoder positions (default: the preset's 512, room for about 18 s of
            audio at 25 audio tokens per second).
    """
    from lalm.checkpoint import save_model

    directory = Path(directory)
    decoder: dict[str, int] = {"vocab_size": 156032}
    if max_seq_len is not None:
        decoder["max_seq_len"] = max_seq_len
    config = ModelConfig.from_name("tiny-random", decoder=decoder)
    save_model(random_model(config, seed=seed), directory)
    for name in TOKENIZER_FILES:
        if (Path(tokenizer_dir) / name).is_file():
            shutil.copy(Path(tokenizer_dir) / name, directory / name)
    return directory


def wav_bytes(seconds: float, freq: float = 440.0, seed: int = 0) -> bytes:
    """A 16 kHz 16-bit mono WAV file: a tone plus a little noise."""
    n = int(seconds * 16000)
    rng = np.random.default_rng(seed)
    samples = 0.3 * np.sin(2 * np.pi * freq * np.arange(n) / 16000) + 0.02 * rng.standard_normal(n)
    return encode_wav(samples)


def encode_wav(samples: np.ndarray) -> bytes:
    """float [N] samples at 16 kHz as a 16-bit mono WAV file."""
    buffer = io.BytesIO()
    sf.write(buffer, samples.astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def chat_body(content: list[dict], model: str = "tiny", **extra: object) -> bytes:
    """A chat completion body with one user turn of ``content`` parts, ``max_tokens`` 1."""
    body = {"model": model, "max_tokens": 1, **extra,
            "messages": [{"role": "user", "content": content}]}
    return json.dumps(body).encode()


def audio_part(data: bytes) -> dict:
    """An ``input_audio`` content part of WAV file bytes."""
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}


def mixed_chat_bodies(model: str = "tiny") -> tuple[list[bytes], list[tuple[str, bytes, int]]]:
    """Chat bodies for load runs: 8 valid ones (clips of different lengths, one answer token)
    and 10 malformed ones as (kind, body, expected status) for a server with
    ``--max-audio-seconds 30`` and the default limits."""
    valid = [chat_body([audio_part(wav_bytes(0.3 + 0.1 * i, 300 + 50 * i, seed=i)),
                        {"type": "text", "text": f"What is clip {i}?"}], model)
             for i in range(8)]
    clip = audio_part(wav_bytes(0.5))
    bad = [
        ("malformed JSON", b'{"model": "tiny", "messages": [', 400),
        ("bad base64", chat_body([{"type": "input_audio", "input_audio": {
            "data": "%%%not base64%%%", "format": "wav"}}], model), 400),
        ("undecodable audio", chat_body([audio_part(b"RIFF but not really a wave file" * 10)],
                                        model), 400),
        ("unknown model", chat_body([clip], "gpt-4o"), 404),
        ("max_tokens over the limit", chat_body([clip], model, max_tokens=10**6), 400),
        ("too many audios", chat_body([clip] * 9, model), 400),
        ("audio too long", chat_body([audio_part(wav_bytes(31.0))], model), 400),
        ("no messages", json.dumps({"model": model, "messages": []}).encode(), 400),
        ("unknown part type", chat_body([{"type": "image_url", "image_url": {"url": "x"}}],
                                        model), 400),
        ("prompt too long", chat_body([{"type": "text", "text": "word " * 600}], model), 400),
    ]
    return valid, bad


def post_json(url: str, body: bytes, timeout: float = 120.0) -> tuple[int, dict]:
    """POST a JSON body: (status, parsed reply), error statuses included."""
    request = urllib.request.Request(url, body, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A running server: its base URL, process and log file."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        """The TCP port it listens on."""
        return int(self.url.rsplit(":", 1)[1])

    def metrics(self, api_key: str | None = None) -> dict[str, float]:
        """The unlabelled series of ``/metrics`` (``lalm_batches_total`` ...); a series the
        server does not export is absent."""
        headers = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
        request = urllib.request.Request(f"{self.url}/metrics", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
        return {name: float(value) for name, value in
                (line.split() for line in text.splitlines()
                 if line and not line.startswith("#") and "{" not in line)}

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024


@contextmanager
def running_server(model_dir: str | Path, *args: str, log: str | Path,
                   startup_s: float = 120.0, api_key: str | None = None) -> Iterator[Server]:
    """Run ``lalm serve --model model_dir *args`` on a free loopback port.

    Args:
        model_dir: checkpoint directory.
        *args: more ``lalm serve`` flags.
        log: file that receives the server's stdout and stderr.
        startup_s: seconds to wait for ``/health``.
        api_key: sent with the ``/health`` polls (for a server run with ``--protect-all``).

    Raises:
        RuntimeError: the server exits or does not answer in time (its log attached).
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "lalm", "serve", "--model", str(model_dir), "--port",
             str(port), *args], stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(url, process, Path(log))
    try:
        deadline = time.monotonic() + startup_s
        headers = {} if api_key is None else {"authorization": f"Bearer {api_key}"}
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"lalm serve did not start:\n{Path(log).read_text()[-4000:]}")
            try:
                health = urllib.request.Request(f"{url}/health", headers=headers)
                with urllib.request.urlopen(health, timeout=1) as response:
                    if json.load(response)["status"] == "ok":
                        break
            except OSError:
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
