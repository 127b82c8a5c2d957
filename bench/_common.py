"""Helpers shared by the bench scripts (not part of the lalm package)."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def alternating_rounds(runs: dict[str, Callable[[], object]], repeats: int, calls: int = 1
                       ) -> dict[str, list[float]]:
    """Each ``run()``'s mean wall seconds over ``calls`` calls in each of ``repeats`` rounds
    (in order), after one warm-up round.

    The runs alternate within each round, so load from other jobs on a shared machine (and the
    host's memory traffic) hits every implementation alike, and the figures of one round are
    taken at one moment of the machine.
    """
    for run in runs.values():
        run()
    rounds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(calls):
                run()
            rounds[name].append((time.perf_counter() - start) / calls)
    return rounds


def best_alternating(runs: dict[str, Callable[[], object]], repeats: int, calls: int = 1
                     ) -> dict[str, float]:
    """Best over ``repeats`` rounds of each ``run()``'s mean wall seconds over ``calls``
    calls (`alternating_rounds`): the least disturbed figure of each."""
    return {name: min(times) for name, times in alternating_rounds(runs, repeats, calls).items()}


def decode_step_seconds(run: Callable[[int], object], steps: int) -> float:
    """Wall seconds of one decode step: ``(run(steps) - run(1)) / (steps - 1)``, `run(n)`
    decoding n new tokens from the same prompt (the difference takes the prefill out)."""
    start = time.perf_counter()
    run(1)
    one = time.perf_counter() - start
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start - one) / (steps - 1)


def clips(seconds: list[float], seed: int = 0) -> list[np.ndarray]:
    """Tone + noise clips of the given durations, lengths not multiples of 160 samples."""
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        n = int(s * 16000) + int(rng.integers(1, 159))
        t = np.arange(n) / 16000
        out.append((0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
                    + 0.05 * rng.standard_normal(n)).astype(np.float32))
    return out


def librispeech_like(n: int, seed: int = 0) -> list[float]:
    """Durations of a LibriSpeech-like utterance mix: 2-20 s, most between 10 and 16 s."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(12.5, 4.0, n), 2.0, 20.0).round(2).tolist()


def _rss(pid: int) -> int:
    """Resident bytes of a running process (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_guarded(cmd: Sequence[str], max_rss: int, poll_s: float = 0.1) -> tuple[int, str, int]:
    """Run ``cmd`` under a memory guard: its RSS is polled and it is killed past ``max_rss``
    bytes (a bench case that would swap the shared machine stops instead).

    Returns:
        (exit code, -9 when killed by the guard; its stdout; the largest RSS polled).
    """
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(list(cmd), stdout=out)
        seen = 0
        while proc.poll() is None:
            seen = max(seen, _rss(proc.pid))
            if seen > max_rss:
                proc.kill()
                proc.wait()
                return -9, "", seen
            time.sleep(poll_s)
        out.seek(0)
        return proc.returncode, out.read(), seen
