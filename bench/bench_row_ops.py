"""A decode step's steps beside its products, three ways in the decode step of real shapes: all
layers in one call of lalm's kernels (`lalm.kernels.DecodeLayers`, what `TextDecoder` takes on
the CPU in inference), the modules with lalm's row-wise kernels (`rms_norm`, `rope`, `silu_mul`,
what `RMSNorm`, `apply_rope` and `SwiGLU` take in inference), and the modules with torch's ops
for those steps.

A decode step streams every weight through the caches (hundreds of MiB), so each small op after
a product finds torch's code and data cold (bench/README.md: an RMSNorm of 4096 floats, six
torch ops, several times slower right after a large product than alone); the row kernels do each
step in one call, the fused layers take the Python and torch ops of a layer out. Two decoders
per precision (`--precisions`: int8, bf16 or fp32 weights, `bench_decode_7b.build`), float32
activations, KV context 280, two threads by default: the Qwen2-Audio-7B decoder's shapes with
`--layers` layers and its head, and SmolLM2-135M's (576 wide, 9/3 heads of 64, MLP 1536, 30
layers, vocab 49,152), whose small products leave the rest a large share. The ways take turns
within every round (the host's memory traffic moves from minute to minute); a round is the mean
of `--repeat` steps, timed whole and, for the modules' ways of int8 weights, outside the int8
products (a timer around `kernels.int8_linear` and `kernels.int8_linear_many`, their Python
wrappers counted in: what the row-wise steps change, without the products' noise, which is most
of a 7B step; the fused way's products run inside its one call, untimed). The medians of the
rounds are printed. The logits are compared: the fused layers have the modules' bits (fp32: the
modules' products are MKL's, the fused step's `f32_linear`); RoPE has torch's bits; RMSNorm sums
its squares in float64 and silu's exponential is lalm's.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_row_ops.py [--precisions int8,bf16,fp32]
      [--rounds 9] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from _common import alternating_rounds
from bench_decode_7b import build, step_timer

from lalm import kernels
from lalm.config import ModelConfig
from lalm.model.decoder import TextDecoder

SMOLLM2 = {"dim": 576, "n_head": 9, "n_kv_head": 3, "hidden_dim": 1536, "vocab_size": 49152,
           "qkv_bias": False, "n_layer": 30}


@contextlib.contextmanager
def module_path() -> Iterator[None]:
    """Inside the block a decode step runs the layers' modules (no fused step)."""
    fused = TextDecoder._decode_step
    TextDecoder._decode_step = lambda self, *step: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        TextDecoder._decode_step = fused  # type: ignore[method-assign]


@contextlib.contextmanager
def torch_row_ops() -> Iterator[None]:
    """Inside the block the modules run with torch's ops for RMSNorm, RoPE and silu * up
    (`kernels.normalizes`, `rotates` and `activates` answer False); the products and the
    attention stay lalm's."""
    checks = kernels.normalizes, kernels.rotates, kernels.activates
    kernels.normalizes = kernels.rotates = kernels.activates = lambda *operands: False
    try:
        with module_path():
            yield
    finally:
        kernels.normalizes, kernels.rotates, kernels.activates = checks


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
    parser.add_argument("--precisions", default="int8",
                        help="comma-separated weight precisions: int8, bf16, fp32 (the times "
                             "outside the products are int8's only)")
    parser.add_argument("--layers", type=int, default=2, help="layers of the 7B shapes built")
    parser.add_argument("--context", type=int, default=280)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("lalm's kernels did not build here: nothing to compare")
    print(f"float32 activations, context {args.context}, {args.threads} threads, "
          f"{args.rounds} rounds x {args.repeat} steps (medians of the rounds)")
    shapes = {f"Qwen2-Audio-7B, {args.layers} layers": {"n_layer": args.layers},
              "SmolLM2-135M, 30 layers": SMOLLM2}
    for precision, (name, overrides) in itertools.product(args.precisions.split(","),
                                                          shapes.items()):
        config = ModelConfig.from_name("qwen2-audio-7b", decoder={
            **overrides, "max_seq_len": args.context + 1}).decoder
        decoder = build(config, precision, compute=torch.float32)
        step = step_timer(decoder, args.context)

        def in_(context: Callable[[], contextlib.AbstractContextManager[None]]
                ) -> Callable[[], object]:
            def run() -> object:
                with context():
                    return step()
            return run

        ways = {"fused": step, "modules": in_(module_path), "torch": in_(torch_row_ops)}
        fused_logits = step()
        differences = {way: (fused_logits - ways[way]()).abs().max().item()
                       for way in ("modules", "torch")}
        rounds = rounds_of(ways, args.rounds, args.repeat)
        whole = {way: statistics.median(t for t, _ in rounds[way]) for way in ways}
        line = (f"{precision} {name}: step {whole['fused'] * 1e3:.2f} ms fused, "
                f"{whole['modules'] * 1e3:.2f} modules with lalm's row kernels "
                f"({whole['modules'] / whole['fused']:.3f}x), {whole['torch'] * 1e3:.2f} with "
                f"torch's ops ({whole['torch'] / whole['modules']:.3f}x the modules)")
        if precision == "int8":
            rest = {way: statistics.median(r for _, r in rounds[way]) for way in ways}
            line += (f"; the modules outside the int8 products {rest['modules'] * 1e3:.2f} "
                     f"ms with the row kernels, {rest['torch'] * 1e3:.2f} with torch's ops "
                     f"({(rest['torch'] - rest['modules']) / config.n_layer * 1e3:.3f} ms a "
                     f"layer; the final norm counted in)")
        print(f"{line}; logits max |difference| from the fused: modules "
              f"{differences['modules']:.1e}, torch's ops {differences['torch']:.1e}",
              flush=True)


if __name__ == "__main__":
    main()
