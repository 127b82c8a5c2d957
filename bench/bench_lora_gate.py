"""Decode step of a decoder with gated LoRA adapters (`lalm.model.lora.gate_adapters`) vs the
same decoder with the adapters merged into its weights, at batch 1, same weights.

A gated adapter cannot be merged (text-only sequences must run the base weights), so a model
saved with ``lora.applies_to: audio`` decodes with its factors unmerged: every adapted Linear
adds two thin products (x @ A^T @ B^T, rank r) per token. This measures what that costs. The
decoder is SmolLM2-135M-shaped (30 x 576, GQA 9/3, SwiGLU 1536, vocab 49,152, tied
embeddings: the shape of lalm's SmolLM2 audio model) with random weights; the adapters are
rank 8 on the seven projections of every block (the ``smollm_model_audio_lora`` recipe's).
Rows: merged (the reference: what an ungated adapter ships as), gated acting (a sequence
holding audio) and gated shut (a text-only sequence). Greedy tokens of "merged" and "gated,
acting" are checked identical (the merged weight is W + B A scaled: equal up to rounding, so
a differing token is reported, not hidden).

Run:  PYTHONPATH=. .venv/bin/python bench/bench_lora_gate.py [--steps 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import copy

import torch
from _common import decode_step_seconds

from lalm.config import ModelConfig
from lalm.generation import GenerationOptions, PromptBatch, generate, left_pad
from lalm.model import AudioLanguageModel
from lalm.model.lora import LoRALinear, gate_adapters, merge_lora
from lalm.testing.models import randomize_, randomize_adapters_
from lalm.training.lora import apply_lora
from lalm.training.stages import LoraConfig

TARGETS = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rank", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.from_name("qwen2-audio-7b", encoder={"dim": 64, "n_head": 4,
                                   "n_layer": 1, "hidden_dim": 128},
                                   decoder={"dim": 576, "n_layer": 30, "n_head": 9,
                                            "n_kv_head": 3, "hidden_dim": 1536,
                                            "vocab_size": 49152, "qkv_bias": False,
                                            "tie_embeddings": True, "max_seq_len": 512})
    base = AudioLanguageModel(config)
    randomize_(base, seed=0)
    gated = copy.deepcopy(base)
    apply_lora(gated.decoder, LoraConfig(rank=args.rank, alpha=2.0 * args.rank,
                                         targets=TARGETS, applies_to="audio"), prefix="decoder")
    randomize_adapters_(gated, seed=1)
    merged = copy.deepcopy(gated)
    merge_lora(merged)
    gate_adapters(gated.decoder)
    for model in (merged, gated):
        model.eval()

    prompt = torch.randint(0, 49000, (1, 64), generator=torch.Generator().manual_seed(0))
    ids, mask = left_pad(prompt.tolist(), 0)
    with torch.inference_mode():
        embeds = merged.decoder.embed(ids)

    def run(model: AudioLanguageModel, adapted: bool | None, n: int) -> list[int]:
        flag = None if adapted is None else torch.tensor([adapted])
        batch = PromptBatch(ids, mask, embeds, flag)
        return generate(model, batch, GenerationOptions(max_new_tokens=n), ())[0].tokens

    runs = {"merged (reference)": lambda n: run(merged, None, n),
            "gated, acting (audio)": lambda n: run(gated, True, n),
            "gated, shut (text only)": lambda n: run(gated, False, n)}
    tokens = {name: run_(args.steps) for name, run_ in runs.items()}  # also the warm-up
    same = tokens["merged (reference)"] == tokens["gated, acting (audio)"]
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(args.rounds):  # alternating rounds, best of them (see _common)
        for name, run_ in runs.items():
            best[name] = min(best[name], decode_step_seconds(run_, args.steps))
    adapters = sum(m.lora_a.numel() + m.lora_b.numel() for m in gated.modules()
                   if isinstance(m, LoRALinear))
    print(f"decoder 30 x 576 (SmolLM2-135M shape), LoRA rank {args.rank} on {len(TARGETS)} "
          f"projections x 30 blocks ({adapters / 1e6:.2f}M adapter parameters); "
          f"{args.threads} thread(s), best of {args.rounds} rounds, {args.steps} tokens; greedy "
          f"tokens merged vs gated-acting: {'identical' if same else 'DIFFER'}")
    ref = best["merged (reference)"]
    for name, step in best.items():
        print(f"{name:26s} {step * 1e3:7.2f} ms/token = {step / ref:.2f}x merged")


if __name__ == "__main__":
    main()
