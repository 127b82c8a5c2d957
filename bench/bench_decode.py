"""Decode step at batch 1 vs the memory-bandwidth floor, lalm and transformers, same weights.

A decode step reads every decoder weight once (the embedding contributes one row), so its floor
is weight bytes / memory bandwidth; the bandwidth is measured here as the copy rate of a large
tensor (bytes read + bytes written per second). The config is Qwen2-shaped with >= 200M
parameters (default: width 1024, 8 layers, vocab 156,032, untied head: ~440M parameters).
Both implementations decode greedily from the same prompt; tokens are checked identical.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_decode.py [--layers 8] [--steps 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch
import transformers
from _common import decode_step_seconds

from lalm.checkpoint.qwen2_audio import from_lalm
from lalm.config import ModelConfig
from lalm.generation import GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel
from lalm.testing.models import randomize_


def copy_bandwidth(n_bytes: int = 1 << 28) -> float:
    """Bytes per second moved by one copy of a large buffer (read + write), the faster of
    torch's and numpy's copy (torch's `copy_` was the slower one on the development CPU)."""
    src = torch.ones(n_bytes // 4)
    dst = torch.zeros_like(src)
    a, b = src.numpy(), dst.numpy()
    best = float("inf")
    for run in (lambda: dst.copy_(src), lambda: np.copyto(b, a)):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.from_name("qwen2-audio-7b", encoder={"dim": 64, "n_head": 4,
                                   "n_layer": 1, "hidden_dim": 128},
                                   decoder={"dim": args.dim, "n_layer": args.layers,
                                            "n_head": args.dim // 64, "n_kv_head": args.dim // 64,
                                            "hidden_dim": 11 * args.dim // 4, "max_seq_len": 512})
    model = AudioLanguageModel(config)
    randomize_(model, seed=0)
    model.eval()
    decoder = model.decoder
    n_params = sum(p.numel() for p in decoder.parameters())
    step_bytes = 4 * (n_params - decoder.embed.weight.numel())  # fp32, one embedding row
    reference = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=config.decoder.vocab_size, hidden_size=args.dim,
        intermediate_size=config.decoder.hidden_dim, num_hidden_layers=args.layers,
        num_attention_heads=args.dim // 64, num_key_value_heads=args.dim // 64,
        rms_norm_eps=1e-5, tie_word_embeddings=False)).eval()
    # language_model.model.* -> model.*, language_model.lm_head.* -> lm_head.*
    hf_state = {k.removeprefix("language_model."): v
                for k, v in from_lalm(model.state_dict()).items() if "language_model" in k}
    reference.load_state_dict(hf_state, strict=True)

    prompt_ids = torch.randint(0, 150000, (1, 32), generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad(prompt_ids.tolist(), 0)
    with torch.inference_mode():
        batch = PromptBatch(ids, mask, decoder.embed(ids))
    plain = copy.deepcopy(model)  # stays [out, in]: the layout's own effect, same weights
    plain.decoder.use_decode_layout = lambda: None  # type: ignore[method-assign]

    def run_lalm(n: int, which: AudioLanguageModel = model) -> list[int]:
        return generate(which, batch, GenerationOptions(max_new_tokens=n), ())[0].tokens

    def run_reference(n: int) -> list[int]:
        with torch.inference_mode():
            out = reference.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=n, min_new_tokens=n, pad_token_id=0)
        return out[0, ids.shape[1]:].tolist()

    runs = {"lalm": run_lalm, "lalm [out, in] layout": lambda n: run_lalm(n, plain),
            "transformers": run_reference}
    tokens = {name: run(args.steps) for name, run in runs.items()}  # also the warm-up
    assert len(set(map(tuple, tokens.values()))) == 1, f"greedy tokens differ: {tokens}"
    # per decode step: (time for `steps` new tokens - time for 1) / (steps - 1); rounds
    # alternate the implementations and the bandwidth probe; best of the rounds
    best = dict.fromkeys(runs, float("inf"))
    bandwidth = 0.0
    for _ in range(args.rounds):
        bandwidth = max(bandwidth, copy_bandwidth())
        for name, run in runs.items():
            best[name] = min(best[name], decode_step_seconds(run, args.steps))
    floor = step_bytes / bandwidth
    print(f"decoder {args.layers} x {args.dim}, vocab {config.decoder.vocab_size}: "
          f"{n_params / 1e6:.0f}M parameters, {step_bytes / 1e9:.2f} GB read per step (fp32); "
          f"{args.threads} threads, best of {args.rounds} rounds; greedy tokens identical")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s -> floor {floor * 1e3:.1f} ms/step")
    for name, step in best.items():
        print(f"{name:22s} {step * 1e3:7.1f} ms/step = {step / floor:.2f}x floor "
              f"(transformers / this: {best['transformers'] / step:.2f}x)")


if __name__ == "__main__":
    main()
