"""Log-mel speed: lalm's real-length front end against transformers' WhisperFeatureExtractor.

    .venv/bin/python bench/bench_logmel.py [--n-mels 128] [--repeats 30] [--threads 1 2]

For 5, 10 and 30 s clips and a batch of 8 x 10 s clips, times both front ends in the same
process on the same audio (the extractor with its defaults: 30-s padding, torch on CPU, the
path Qwen2-Audio's processor takes), checks that the features agree on every real frame, and
prints the time ratio of the best runs. The two front ends run alternately, ``--repeats`` times
each after a warm-up; the best run is the least disturbed one on a shared machine, and the
median is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from lalm.audio import SAMPLE_RATE, batch_log_mel, log_mel_spectrogram

CASES = [("5 s", [5.0]), ("10 s", [10.0]), ("30 s", [30.0]), ("8 x 10 s", [10.0] * 8)]


def clip(seconds: float, seed: int) -> np.ndarray:
    """A harmonic glide plus noise: float32 [seconds * 16000]."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(150 + 50 * np.sin(2 * np.pi * 0.5 * t)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.shape[0])
    return (0.2 * np.sin(phase) + 0.1 * np.sin(3 * phase) + 0.02 * noise).astype(np.float32)


def interleaved_times(runs: list[Callable[[], object]], repeats: int) -> list[list[float]]:
    """Seconds per call of each function, calls interleaved so that both see the same load."""
    times: list[list[float]] = [[] for _ in runs]
    for run in runs:  # warm-up
        run()
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            start = time.perf_counter()
            run()
            spent.append(time.perf_counter() - start)
    return times


def front_ends(extractor, clips: list[np.ndarray], n_mels: int
               ) -> tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]]:
    """The reference's and lalm's features of ``clips``, each as a [B, n_mels, T] tensor."""
    def reference() -> torch.Tensor:
        inputs = clips if len(clips) > 1 else clips[0]
        return extractor(inputs, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features

    def ours() -> torch.Tensor:
        if len(clips) > 1:
            return batch_log_mel(clips, n_mels)[0]
        return log_mel_spectrogram(clips[0], n_mels)[None]

    return reference, ours


def bench(n_mels: int, repeats: int) -> None:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    print(f"{'case':>10} {'reference ms':>16} {'lalm ms':>16} {'ratio':>6} {'max |diff|':>11}")
    for name, seconds in CASES:
        clips = [clip(s, seed) for seed, s in enumerate(seconds)]
        reference, ours = front_ends(extractor, clips, n_mels)
        ref_features, our_features = reference(), ours()
        diff = max((our_features[b, :, : c.shape[0] // 160]
                    - ref_features[b, :, : c.shape[0] // 160]).abs().max().item()
                   for b, c in enumerate(clips))
        ref_times, our_times = interleaved_times([reference, ours], repeats)
        ref_best, ref_median = min(ref_times), statistics.median(ref_times)
        our_best, our_median = min(our_times), statistics.median(our_times)
        print(f"{name:>10} {ref_best * 1e3:7.2f} ({ref_median * 1e3:6.2f}) "
              f"{our_best * 1e3:7.2f} ({our_median * 1e3:6.2f}) {ref_best / our_best:6.2f} "
              f"{diff:11.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-mels", type=int, nargs="+", default=[128, 80])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()])
    args = parser.parse_args()
    for threads in dict.fromkeys(args.threads):
        torch.set_num_threads(threads)
        for n_mels in args.n_mels:
            print(f"\n== n_mels {n_mels}, torch threads {threads} "
                  f"(best of {args.repeats}, median in brackets) ==")
            bench(n_mels, args.repeats)


if __name__ == "__main__":
    main()
