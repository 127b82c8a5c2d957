"""Step cost of the SmolLM2 default model's training, measured before choosing its recipe.

Times forward + backward of Whisper tiny.en -> projector -> SmolLM2-135M-Instruct per example,
with the frozen encoder's outputs precomputed (as ``data.encoder_cache`` serves them, so the
encoder costs nothing per step), for: the decoder frozen (gradients still flow through it to the
projector) or with LoRA adapters (rank 8, attention and MLP); clips of a few lengths; and the
projector's stride-2 pool (25 audio tokens per second, the Qwen2-Audio layout) against a pool
`k` times coarser (the decoder then sees 1/k of the audio rows: what a longer pool would save).

    python scripts/default_model_cost.py --model INIT_DIR [--seconds 3,6] [--pool 1,4]
        [--precision fp32,bf16] [--modes frozen,lora]

``--precision bf16`` times the step under bf16 autocast, as ``run.precision: bf16`` trains
(`lalm.config.resolve_dtype`: a CPU without bf16 units falls back to fp32, with a warning).

INIT_DIR is ``lalm from-parts --encoder WHISPER --decoder SmolLM2.gguf INIT_DIR``. Prints one
line per setting: ms per example (median of the repeats), sequence length, audio rows.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from lalm.checkpoint.load import load_model
from lalm.config import resolve_dtype
from lalm.training.lora import apply_lora
from lalm.training.stages import LoraConfig


def step_ms(model: torch.nn.Module, batch: int, seconds: float, pool: int, text: int,
            repeats: int, dtype: torch.dtype = torch.float32) -> tuple[float, int, int]:
    """Median ms per example of forward + backward (under `dtype` autocast unless float32);
    the sequence length; the audio rows."""
    n_enc = int(seconds * 50) // pool  # encoder positions (50 per second) seen by the pool
    rows = n_enc // 2
    seq = rows + text
    audio_id = model.config.decoder.vocab_size - 3
    ids = torch.randint(0, audio_id, (batch, seq))
    ids[:, 5:5 + rows] = audio_id
    slots = ids == audio_id
    labels = ids.clone()
    labels[:, : 5 + rows + text // 2] = -100  # loss on the answer half of the text
    states = torch.randn(batch, n_enc, model.config.encoder.dim)
    lens = torch.full((batch,), n_enc)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        with (contextlib.nullcontext() if dtype == torch.float32
              else torch.autocast("cpu", dtype=dtype)):
            out = model(ids, audio_slot_mask=slots, labels=labels, output="targets",
                        encoder_states=states, encoder_state_lens=lens)
        out.loss.backward()
        times.append(time.perf_counter() - t)
        model.zero_grad(set_to_none=True)
    return 1000 * statistics.median(times[1:]) / batch, seq, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", default="3,6")
    ap.add_argument("--pool", default="1,4", help="extra pooling factors to time (1: stride 2)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text", type=int, default=40, help="prompt + answer tokens per example")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="fp32", help="fp32 and/or bf16 (autocast)")
    ap.add_argument("--modes", default="frozen,lora", help="decoder frozen and/or LoRA r8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    model.train()
    model.requires_grad_(False)
    model.projector.requires_grad_(True)
    for mode in args.modes.split(","):
        if mode == "lora":
            apply_lora(model.decoder, LoraConfig(rank=8, targets=("attn.q", "attn.k", "attn.v",
                       "attn.o", "mlp.gate", "mlp.up", "mlp.down")), prefix="decoder")
        for seconds in (float(s) for s in args.seconds.split(",")):
            for pool in (int(p) for p in args.pool.split(",")):
                for precision in args.precision.split(","):
                    dtype = resolve_dtype(precision)
                    ms, seq, rows = step_ms(model, args.batch, seconds, pool, args.text,
                                            args.repeats, dtype)
                    print(f"decoder {mode:<6} {precision:<4} ({str(dtype)[6:]})  clip "
                          f"{seconds:4.1f} s  pool x{2 * pool:<2} "
                          f"audio rows {rows:4d}  seq {seq:4d}  {ms:7.0f} ms/example",
                          flush=True)


if __name__ == "__main__":
    main()
