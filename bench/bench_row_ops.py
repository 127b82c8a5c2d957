"""A decode step's row-wise steps, lalm's kernels vs torch's ops: RMSNorm and RoPE
(`lalm.kernels.rms_norm`, `lalm.kernels.rope`, what `RMSNorm` and `apply_rope` take on the
CPU in inference) against the same formulas as torch ops, in the decode step of real shapes.

A decode step streams every weight through the caches (hundreds of MiB), so each small op after
a product finds torch's code and data cold (bench/README.md: an RMSNorm of 4096 floats, six
torch ops, several times slower right after a large product than alone); the kernels do each
step in one call. Two decoders, int8 weights (`bench_decode_7b.build`), float32
activations, KV context 280, two threads by default: the Qwen2-Audio-7B decoder's shapes with
`--layers` layers and its head, and SmolLM2-135M's (576 wide, 9/3 heads of 64, MLP 1536, 30
layers, vocab 49,152), whose small products leave the row-wise steps a large share. The two
ways take turns within every round (the host's memory traffic moves from minute to minute);
a round is the mean of `--repeat` steps, timed whole and outside the int8 products (a timer
around `kernels.int8_linear` and `kernels.int8_linear_many`: what the row-wise steps change,
without the products' noise, which is most of a 7B step); the medians of the rounds are
printed. The logits of the two ways are compared: RoPE has torch's bits; RMSNorm sums its
squares in float64.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_row_ops.py [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from _common import alternating_rounds
from bench_decode_7b import build, step_timer

from lalm import kernels
from lalm.config import ModelConfig

SMOLLM2 = {"dim": 576, "n_head": 9, "n_kv_head": 3, "hidden_dim": 1536, "vocab_size": 49152,
           "qkv_bias": False, "n_layer": 30}


@contextlib.contextmanager
def torch_row_ops() -> Iterator[None]:
    """Inside the block RMSNorm and RoPE take torch's ops (`kernels.normalizes` and
    `kernels.rotates` answer False); the products and the attention stay lalm's."""
    normalizes, rotates = kernels.normalizes, kernels.rotates
    kernels.normalizes = kernels.rotates = lambda *operands: False
    try:
        yield
    finally:
        kernels.normalizes, kernels.rotates = normalizes, rotates


@contextlib.contextmanager
def timed_products(seconds: list[float]) -> Iterator[None]:
    """Inside the block, the wall seconds of every int8 product call are added to
    `seconds[0]`."""
    one, many = kernels.int8_linear, kernels.int8_linear_many

    def timed(product: Callable[..., object]) -> Callable[..., object]:
        def run(*args: object, **kwargs: object) -> object:
            start = time.perf_counter()
            try:
                return product(*args, **kwargs)
            finally:
                seconds[0] += time.perf_counter() - start
        return run

    kernels.int8_linear, kernels.int8_linear_many = timed(one), timed(many)
    try:
        yield
    finally:
        kernels.int8_linear, kernels.int8_linear_many = one, many


def rounds_of(ways: dict[str, Callable[[], object]], rounds: int, repeat: int
              ) -> dict[str, list[tuple[float, float]]]:
    """Per way, every round's (mean step seconds, mean seconds outside the int8 products):
    `alternating_rounds` with each call's product seconds kept beside it."""
    products = [0.0]
    spent: dict[str, list[float]] = {name: [] for name in ways}

    def counted(name: str, run: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            products[0] = 0.0
            out = run()
            spent[name].append(products[0])
            return out
        return call

    with timed_products(products):
        times = alternating_rounds({name: counted(name, run) for name, run in ways.items()},
                                   rounds, repeat)
    # spent[name][0] is the warm-up call; then `repeat` calls a round
    return {name: [(t, t - sum(spent[name][1 + r * repeat:1 + (r + 1) * repeat]) / repeat)
                   for r, t in enumerate(times[name])] for name in ways}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="layers of the 7B shapes built")
    parser.add_argument("--context", type=int, default=280)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("lalm's kernels did not build here: nothing to compare")
    print(f"int8 decoders, float32 activations, context {args.context}, {args.threads} "
          f"threads, {args.rounds} rounds x {args.repeat} steps (medians of the rounds)")
    shapes = {f"Qwen2-Audio-7B, {args.layers} layers": {"n_layer": args.layers},
              "SmolLM2-135M, 30 layers": SMOLLM2}
    for name, overrides in shapes.items():
        config = ModelConfig.from_name("qwen2-audio-7b", decoder={
            **overrides, "max_seq_len": args.context + 1}).decoder
        decoder = build(config, "int8", compute=torch.float32)
        step = step_timer(decoder, args.context)

        def with_torch_ops() -> object:
            with torch_row_ops():
                return step()

        difference = (step() - with_torch_ops()).abs().max().item()
        rounds = rounds_of({"lalm": step, "torch": with_torch_ops}, args.rounds, args.repeat)
        (ours, ours_rest), (theirs, theirs_rest) = (
            (statistics.median(t for t, _ in rounds[way]),
             statistics.median(r for _, r in rounds[way])) for way in ("lalm", "torch"))
        per_layer = (theirs_rest - ours_rest) / config.n_layer
        print(f"{name}: step {ours * 1e3:.2f} ms with lalm's row kernels, {theirs * 1e3:.2f} "
              f"ms with torch's ops ({theirs / ours:.3f}x); outside the int8 products "
              f"{ours_rest * 1e3:.2f} vs {theirs_rest * 1e3:.2f} ms "
              f"({theirs_rest / ours_rest:.2f}x, {per_layer * 1e3:.3f} ms a layer, the final "
              f"norm counted in); logits max |difference| {difference:.1e}")


if __name__ == "__main__":
    main()
