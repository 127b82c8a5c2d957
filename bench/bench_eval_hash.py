"""What identifying an evaluation run costs: `weights_sha256` (the run key's content hash of the
loaded weights) against one plain SHA-256 pass over the same bytes, and against loading the
checkpoint it hashes.

    .venv/bin/python bench/bench_eval_hash.py --dim 512 --layers 4 --repeats 3

Prints MB/s of each and the ratios (weights hash / plain SHA-256, weights hash / load).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import best_alternating  # noqa: E402

from lalm.checkpoint import load_model, save_model  # noqa: E402
from lalm.config import ModelConfig  # noqa: E402
from lalm.eval.report import weights_sha256  # noqa: E402
from lalm.testing.models import random_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512, help="decoder width")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = ModelConfig.from_name("tiny-random", decoder={
        "vocab_size": 156032, "dim": args.dim, "n_layer": args.layers,
        "hidden_dim": 3 * args.dim, "n_head": 8, "n_kv_head": 8})
    model = random_model(config, seed=0)
    state = model.state_dict()
    size = sum(t.numel() * t.element_size() for t in state.values())
    flat = b"".join(t.reshape(-1).view(torch.uint8).numpy().tobytes() for t in state.values())
    with tempfile.TemporaryDirectory() as folder:
        save_model(model, folder)
        best = best_alternating({
            "weights_sha256": lambda: weights_sha256(model),
            "plain sha256": lambda: hashlib.sha256(flat).hexdigest(),
            "load checkpoint": lambda: load_model(folder),
        }, args.repeats)
    print(f"weights: {size / 1e6:.0f} MB ({len(state)} tensors)")
    for name, seconds in best.items():
        print(f"{name:16s} {seconds:7.3f} s  {size / 1e6 / seconds:8.0f} MB/s")
    print(f"ratio weights_sha256 / plain sha256: "
          f"{best['weights_sha256'] / best['plain sha256']:.2f}")
    print(f"ratio weights_sha256 / load checkpoint: "
          f"{best['weights_sha256'] / best['load checkpoint']:.2f}")


if __name__ == "__main__":
    main()
