"""Training throughput by torch thread count: the real loop (`lalm.training.train`) on a small
random model over tone clips, run at 1 thread (the reference), at every other count up to the
CPUs, and with the automatic choice (`choose_threads`), one after another in this process.

Prints tokens/s of each run and its ratio to the 1-thread run, with the load average before each
run (other work on the machine is what makes more threads slower). Same data, seed and steps
in every run, so the losses agree too.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_train_threads.py [--steps 20] [--dim 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from lalm.testing.training import tiny_stage, write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training import TrainConfig, train
from lalm.training.distributed import choose_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128, help="encoder and decoder width")
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    counts: list[int | None] = [1, *range(2, cpus + 1), None]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        manifest = write_tone_dataset(folder / "data", args.items)
        tokenizer = write_tiny_tokenizer(folder / "tokenizer", manifest)
        size = {"dim": args.dim, "n_layer": args.layers, "hidden_dim": 4 * args.dim}
        rows = []
        for threads in counts:
            stage = tiny_stage(folder / f"run-{threads}", manifest, tokenizer,
                               len(load_tokenizer(tokenizer)),
                               data={"max_items": 4},
                               run={"max_steps": args.steps, "save_every": 0, "threads": threads,
                                    "log_every": args.steps})
            stage["model"]["overrides"]["encoder"].update({**size, "n_head": 4})
            stage["model"]["overrides"]["decoder"].update({**size, "n_head": 4, "n_kv_head": 2})
            load = os.getloadavg()[0]
            chosen = choose_threads(threads)[0]
            result = train(TrainConfig.from_dict(stage))
            rows.append((threads, chosen, load, result.tokens_per_s, result.losses[-1]))
    print(f"{args.items} tone items, batches of 4, {args.steps} steps; encoder and decoder "
          f"{args.layers}x{args.dim}; {cpus} CPUs; torch {torch.__version__}")
    print(f"{'threads':>10s} {'load':>5s} {'tokens/s':>9s} {'ratio':>6s} {'last loss':>10s}")
    base = rows[0][3]
    for threads, chosen, load, tps, loss in rows:
        name = f"auto={chosen}" if threads is None else str(threads)
        print(f"{name:>10s} {load:5.1f} {tps:9.1f} {tps / base:5.2f}x {loss:10.6f}")


if __name__ == "__main__":
    main()
