"""One-row products of the real Qwen2-Audio-7B decoder shapes by weight format (fp32, bf16,
int8, int4 at several group sizes), as GB/s of weight bytes read and as a ratio to a
memory-read probe measured in the same run.

Shapes: [1, 4096] x [4096, 4096] (attention), [1, 4096] x [11008, 4096] (MLP gate/up) and
[1, 4096] x [156032, 4096] (the lm_head). Formats, each the path lalm's decoder takes:
- fp32: the weight [in, out]-major (`TextDecoder.use_decode_layout`), `F.linear`;
- bf16: the weight [out, in], bf16 activations: `F.linear` (torch's product, "bf16-torch")
  and `StreamLinear` (lalm's, `lalm.kernels.bf16_linear`, what a bf16 CPU decoder takes);
- int8: `Int8Linear` (per-channel scales): lalm's kernel (`lalm.kernels.int8_linear`) and,
  as "int8-torch", `torch._weight_int8pack_mm` on bf16 activations
  (`lalm.kernels.torch_kernels`);
- int4-gG: `Int4Linear` with group size G (`torch._weight_int4pack_mm_for_cpu`, bf16
  activations).
Weights are random codes/values (the kernels' speed does not depend on them). Each product
is timed as the best of `--rounds` means of enough calls to read ~1 GB; the rounds alternate
formats so load from other jobs hits all alike. Bytes read = the weight (codes + scales).

Run:  PYTHONPATH=. .venv/bin/python bench/bench_quant_kernels.py [--threads 1,2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_decode_7b import read_bandwidth

from lalm import kernels
from lalm.model.quant import Int4Linear, Int8Linear
from lalm.model.upcast import StreamLinear

SHAPES = {"attn 4096x4096": (4096, 4096), "mlp 11008x4096": (11008, 4096),
          "lm_head 156032x4096": (156032, 4096)}


def products(out_dim: int, in_dim: int, groups: list[int]
             ) -> dict[str, tuple[Callable[[], object], int]]:
    """Each format's one-row product over an [out_dim, in_dim] weight and its bytes."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_dim, generator=gen)
    runs: dict[str, tuple[Callable[[], object], int]] = {}
    w32 = torch.empty(in_dim, out_dim).normal_(0, 0.02, generator=gen).t()  # [in, out]-major
    runs["fp32"] = (lambda: F.linear(x, w32), w32.numel() * 4)
    w16 = w32.to(torch.bfloat16).contiguous()
    xb = x.to(torch.bfloat16)
    runs["bf16-torch"] = (lambda: F.linear(xb, w16), w16.numel() * 2)
    linear = torch.nn.Linear(in_dim, out_dim, bias=False, dtype=torch.bfloat16)
    linear.weight.data = w16
    stream = StreamLinear(in_dim, out_dim, bias=False, device="meta")
    stream.weight = torch.nn.Parameter(w16, requires_grad=False)
    runs["bf16"] = (lambda: stream(xb), w16.numel() * 2)
    int8 = Int8Linear.from_linear(linear)
    runs["int8"] = (lambda: int8(xb), _bytes(int8))

    def int8_torch() -> object:
        with kernels.torch_kernels():
            return int8(xb)

    runs["int8-torch"] = (int8_torch, _bytes(int8))
    for group in groups:
        int4 = Int4Linear.from_linear(linear, group)
        runs[f"int4-g{group}"] = (lambda m=int4: m(xb), _bytes(int4))
    return runs


def _bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's tensors (what its product reads)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def best_seconds(runs: dict[str, tuple[Callable[[], object], int]], rounds: int
                 ) -> dict[str, float]:
    """Best over `rounds` of the mean seconds per call, formats alternating within a round."""
    calls = {name: max(3, int(1e9 // n_bytes)) for name, (_, n_bytes) in runs.items()}
    best = dict.fromkeys(runs, float("inf"))
    with torch.inference_mode():
        for run, _ in runs.values():
            run()
        for _ in range(rounds):
            for name, (run, _) in runs.items():
                start = time.perf_counter()
                for _ in range(calls[name]):
                    run()
                best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--groups", default="32,64,128")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    groups = [int(g) for g in args.groups.split(",")]
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}, best of "
          f"{args.rounds} rounds")
    for shape in args.shapes.split(","):
        runs = products(*SHAPES[shape], groups)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            probe = read_bandwidth()
            best = best_seconds(runs, args.rounds)
            probe = max(probe, read_bandwidth())
            print(f"{shape}, {threads} thread(s), read probe {probe / 1e9:.1f} GB/s")
            base = best["int8"]
            for name, (_, n_bytes) in runs.items():
                rate = n_bytes / best[name]
                print(f"  {name:9s} {best[name] * 1e3:8.2f} ms  {n_bytes / 1e6:7.1f} MB  "
                      f"{rate / 1e9:5.1f} GB/s  {rate / probe:4.2f}x probe  "
                      f"{base / best[name]:4.2f}x int8's speed")
        del runs


if __name__ == "__main__":
    main()
