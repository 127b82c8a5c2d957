"""A decode step's attention with the real Qwen2-Audio-7B shapes (32 heads of 128, no grouping,
batch 1): lalm's kernel (`lalm.kernels.decode_attention`, what `Attention` takes on the CPU)
vs torch's `F.scaled_dot_product_attention` on the same operands, per layer, in float32 and
bf16, and as a rate of cache bytes read.

The caches of 32 layers are allocated and attended one layer after another, as a decode step
does, so each layer's keys and values come from memory (at context 280 a layer's float32
cache is 9.2 MB and the 32 of them 294 MB, past the L3): attending one layer's cache over and
over would time it from the cache. The two implementations take turns within every round
(`best_alternating`: the host's memory traffic varies from minute to minute).

Run:  PYTHONPATH=. .venv/bin/python bench/bench_decode_attention.py [--contexts 280,1000,4000]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from _common import best_alternating

from lalm import kernels

HEADS, HEAD_DIM, LAYERS = 32, 128, 32


def time_layer(dtype: torch.dtype, context: int, rounds: int, gen: torch.Generator
               ) -> tuple[float, float, int]:
    """(torch's seconds, lalm's seconds, cache bytes) of one layer's attention at `context`
    keys: the best of `rounds` alternating rounds over `LAYERS` layers' caches, per layer."""
    shape = (LAYERS, 1, HEADS, context, HEAD_DIM)
    k = torch.randn(shape, generator=gen).to(dtype)
    v = torch.randn(shape, generator=gen).to(dtype)
    q = torch.randn(1, HEADS, 1, HEAD_DIM, generator=gen).to(dtype)
    mask = torch.ones(1, 1, 1, context, dtype=torch.bool)
    assert kernels.attends(q, k[0], v[0], mask)

    def torchs() -> None:
        for layer in range(LAYERS):
            F.scaled_dot_product_attention(q, k[layer], v[layer], attn_mask=mask)

    def lalms() -> None:
        for layer in range(LAYERS):
            kernels.decode_attention(q, k[layer], v[layer], mask)

    with torch.inference_mode():
        best = best_alternating({"torch": torchs, "lalm": lalms}, rounds)
    return best["torch"] / LAYERS, best["lalm"] / LAYERS, 2 * k[0].numel() * k.element_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="280,1000,4000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not kernels.available():
        raise SystemExit("lalm's kernels are unavailable here: nothing to compare")
    print(f"attention of one query, {HEADS} heads x {HEAD_DIM}, {LAYERS} layers' caches in "
          f"turn, {args.threads} threads, kernels {kernels.isa()}, best of {args.rounds} "
          f"rounds (ms a layer)")
    print(f"{'dtype':8s} {'context':>7s} {'torch':>7s} {'lalm':>7s} {'faster':>6s} "
          f"{'lalm GB/s':>9s}")
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for context in (int(c) for c in args.contexts.split(",")):
            t_torch, t_lalm, layer_bytes = time_layer(dtype, context, args.rounds, gen)
            print(f"{str(dtype).removeprefix('torch.'):8s} {context:7d} {t_torch * 1e3:7.3f} "
                  f"{t_lalm * 1e3:7.3f} {t_torch / t_lalm:5.2f}x {layer_bytes / t_lalm / 1e9:9.1f}")


if __name__ == "__main__":
    main()
