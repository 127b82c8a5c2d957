"""Peak memory of decoding one file: lalm's block decoding vs the whole-file decode it replaced.

The reference, measured in the same run, is what `lalm.audio.load_audio` did before (issue
13.4): read every frame at the source rate and channel count, average the channels, resample in
one shot. lalm's `load_audio` reads blocks of 2**18 samples, mixes and resamples each
(`lalm.audio.stream_audio`), and `stream_audio` alone (how `lalm data check` and long-form
transcription consume a file) never holds more than a block. Peaks are numpy's allocations as
tracemalloc sees them; the ratio is lalm / reference.

    .venv/bin/python bench/bench_audio_load.py --seconds 60 --rate 96000 --channels 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from lalm.audio import SAMPLE_RATE, load_audio, stream_audio


def whole_file(path: Path) -> int:
    """The replaced decode: everything at once (samples at 16 kHz)."""
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1, dtype=np.float32)
    return soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").shape[0]


def peak(fn: Callable[[], int]) -> tuple[int, float, float]:
    """(result, peak MiB of traced allocations, seconds)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1] / 2**20, time.perf_counter() - t0
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=int, default=96000)
    parser.add_argument("--channels", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "clip.wav"
        rng = np.random.default_rng(0)
        with sf.SoundFile(path, "w", args.rate, args.channels, subtype="PCM_16") as f:
            for _ in range(int(args.seconds)):
                f.write((0.1 * rng.standard_normal((args.rate, args.channels))).astype(np.float32))
        print(f"{args.seconds:g} s, {args.rate} Hz, {args.channels} channels: "
              f"{path.stat().st_size / 2**20:.0f} MiB of WAV")
        n_ref, ref, t_ref = peak(lambda: whole_file(path))
        rows = [("whole-file decode (reference)", n_ref, ref, t_ref),
                ("lalm load_audio", *peak(lambda: load_audio(path).shape[0])),
                ("lalm stream_audio (counted)",
                 *peak(lambda: sum(b.shape[0] for b in stream_audio(path))))]
    print(f"{'case':32s} {'samples':>10s} {'peak MiB':>9s} {'ratio':>6s} {'s':>6s}")
    for name, n, mib, seconds in rows:
        assert n == n_ref, f"{name}: {n} samples vs {n_ref}"
        print(f"{name:32s} {n:10d} {mib:9.1f} {mib / ref:6.3f} {seconds:6.2f}")


if __name__ == "__main__":
    main()
