"""bf16 weights on a CPU without bf16 units: lalm's just-in-time upcast product vs float32.

One 7B-shaped MLP weight (11008 x 4096). Rows of input: 1 (a decode step) and 300 (a 10-s
prefill). Cases, alternating within each round, best of the rounds:

* float32 weight, `F.linear` (the reference: what an `fp32` load computes);
* bf16 weight, `UpcastLinear` (what `auto` / `bf16` compute without bf16 units), at several
  `BLOCK_BYTES`;
* bf16 weight and input, `F.linear` (bf16 products without the units: what `resolve_precision`
  avoids).

Run:  PYTHONPATH=. nice -n 19 .venv/bin/python bench/bench_upcast.py [--threads 1] [--rounds 5]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import lalm.model.upcast as upcast
from _common import best_alternating


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    weight = torch.randn(11008, 4096) * 0.02
    layer = upcast.UpcastLinear(4096, 11008, bias=False)
    layer.weight.data = weight.bfloat16()
    print(f"bf16 units: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; "
          f"{args.threads} threads, best of {args.rounds}")
    for rows in (1, 300):
        x = torch.randn(1, rows, 4096)
        runs = {"float32": lambda x=x: F.linear(x, weight)}
        for block in (1 << 20, 1 << 22, 1 << 24, 1 << 30):
            def run(x=x, block=block):
                upcast.BLOCK_BYTES = block
                return layer(x)
            runs[f"upcast {block >> 20} MiB blocks"] = run
        runs["bf16 products"] = lambda x=x: F.linear(x.bfloat16(), layer.weight)
        with torch.inference_mode():
            best = best_alternating(runs, args.rounds if rows == 1 else max(1, args.rounds // 2))
        for name, seconds in best.items():
            print(f"rows {rows:3d}  {name:24s} {seconds * 1e3:8.1f} ms  "
                  f"{seconds / best['float32']:5.2f}x float32")


if __name__ == "__main__":
    main()
