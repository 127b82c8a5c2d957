"""Sequence packing on the default recipe: padding waste and training-step time, packed vs not.

The data, tokenizer, initial weights and stage config are the default model's own (`lalm.demo`:
lalm-synth small, the ``default_model`` recipe: Whisper tiny.en frozen with its outputs cached,
a 4 x 192 decoder and the projector training, fp32, ``data.max_tokens`` 4096 with bucketing at
``bucket_ratio`` 1.1). The sampler makes one epoch of batches; each batch is collated both ways
from the same items: one item per row (the recipe), and packed into rows of at most
``--pack-tokens`` tokens (``data.pack_tokens``; segment ids keep the items apart: the same loss
and gradients, `tests/unit/test_train_packing.py`).

Printed: the share of padding in the decoder's token positions over the whole epoch both ways
(the encoder-state rows, one per clip, are the same both ways), then for ``--batches`` batches
spread over the epoch the time of the training step (the loop's loss, backward, AdamW step),
the two ways alternating per batch so that load from other jobs hits both alike; the ratio is
the sum of the per-batch medians of ``--repeats`` steps. The loss of each batch is compared
between the two ways (same weights: they agree to float rounding).

Run (after ``lalm demo`` made the default model once; its work folder holds the data):
    PYTHONPATH=. nice -n 19 .venv/bin/python bench/bench_packing.py \
        --work ~/.cache/lalm/default-model.work [--pack-tokens 1024] [--batches 12] \
        [--bucket-ratio 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from lalm.assets import default_model_dir
from lalm.data.collate import Collator
from lalm.data.sampler import BucketBatchSampler
from lalm.demo import DefaultModelSpec, prepare, recipe_config
from lalm.training.build import build_dataset, build_model, load_stage_tokenizer
from lalm.training.encoder_cache import EncodedDataset
from lalm.training.loop import count_targets, loss_sum
from lalm.training.optim import build_optimizer


def waste(batches: list[dict]) -> tuple[float, int, int]:
    """(padding share of the [B, S] token positions, positions, rows) over `batches`."""
    real = sum(int(b["token_lens"].sum()) for b in batches)
    cells = sum(b["ids"].numel() for b in batches)
    return 1 - real / cells, cells, sum(b["ids"].shape[0] for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path,
                        default=default_model_dir().with_name("default-model.work"))
    parser.add_argument("--pack-tokens", default="512,1024,2048",
                        help="row lengths to compare (comma-separated)")
    parser.add_argument("--batches", type=int, default=12, help="timed batches")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per batch and way")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (lalm demo: 1)")
    parser.add_argument("--bucket-ratio", type=float, default=None,
                        help="instead of the recipe's data.bucket_ratio (wider buckets: batches "
                             "of more mixed lengths)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    spec = DefaultModelSpec()
    prepared = prepare(spec, args.work, log=lambda m: None)  # resumes: the data is there
    config = recipe_config(spec, prepared, args.work / "bench-packing")
    tokenizer = load_stage_tokenizer(config)
    model = build_model(config, tokenizer).train()
    # the items without the encoder cache (log-mel only: quick); the timed batches' clips are
    # encoded below, as the recipe's cache (data.encoder_cache) would serve them
    dataset, _ = build_dataset(config.data.train, config, tokenizer,
                               model.config.encoder.n_mels, config.run.seed)
    d = config.data
    if args.bucket_ratio is not None:
        d = dataclasses.replace(d, bucket_ratio=args.bucket_ratio)
    tokens, frames = dataset.lengths
    sampler = BucketBatchSampler(tokens, frames, d.max_tokens, d.max_frames,
                                 max_items=d.max_items, seed=config.run.seed,
                                 bucket_ratio=d.bucket_ratio, rank=0, world_size=1)
    groups = sampler.epoch_batches()
    items = {i: dataset[i] for g in groups for i in g}
    picks = np.linspace(0, len(groups) - 1, min(args.batches, len(groups))).round().astype(int)
    t = time.perf_counter()
    model.encoder.eval()
    for p in picks:
        for i in groups[p]:
            items[i] = EncodedDataset._encode(items[i], model.encoder)
    encode_s = time.perf_counter() - t
    sizes = [int(n) for n in tokens]
    print(f"default recipe: {len(dataset)} items ({min(sizes)}-{max(sizes)} tokens, mean "
          f"{np.mean(sizes):.0f}), {len(groups)} batches an epoch (max_tokens {d.max_tokens}, "
          f"bucket_ratio {d.bucket_ratio}; {np.mean([len(g) for g in groups]):.1f} items a "
          f"batch); {args.threads} torch thread(s); the timed batches' clips encoded in "
          f"{encode_s:.0f} s")

    plain = Collator(tokenizer.eod_id)
    ways = {"unpacked": plain} | {f"packed {n}": Collator(tokenizer.eod_id, int(n))
                                  for n in args.pack_tokens.split(",")}
    print("decoder token positions of the epoch (padding share; the encoder rows are one clip "
          "each, the same both ways):")
    for name, collator in ways.items():
        share, cells, rows = waste([collator([items[i] for i in g]) for g in groups])
        print(f"  {name:12s} {share:6.1%} of {cells} positions in {rows} rows")
    timed = {name: [c([items[i] for i in groups[p]]) for p in picks] for name, c in ways.items()}

    optimizer = build_optimizer(model, config.optim)

    def step(batch: dict) -> tuple[float, float]:
        start = time.perf_counter()
        loss = loss_sum(model, batch, "lm", 0.0, None) / count_targets(batch, "lm")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach()), time.perf_counter() - start

    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    times = {name: [] for name in ways}
    gaps = []
    for k in range(len(picks)):
        runs = {name: [] for name in ways}
        losses = {}
        for r in range(args.repeats + 1):  # the first round warms up
            for name in ways:
                model.load_state_dict(state)  # every step from the same weights
                optimizer.load_state_dict(opt_state)
                losses[name], seconds = step(timed[name][k])
                if r:
                    runs[name].append(seconds)
        for name in ways:
            times[name].append(float(np.median(runs[name])))
        gaps.append(max(abs(v - losses["unpacked"]) / abs(losses["unpacked"])
                        for v in losses.values()))
    base = sum(times["unpacked"])
    print(f"training step (loss, backward, AdamW) over {len(picks)} batches, median of "
          f"{args.repeats}:")
    for name in ways:
        total = sum(times[name])
        print(f"  {name:12s} {total / len(picks):7.3f} s/step  ratio {total / base:5.2f}")
    print(f"largest relative loss difference packed vs unpacked: {max(gaps):.1e}")


if __name__ == "__main__":
    main()
