"""Self-distilled text chat for the SmolLM2 model's LoRA recipe (smollm_model_lora.yaml).

    python scripts/smollm_chat_distill.py --model INIT --out CHAT.jsonl [--count N]

Draws `--count` prompts (default: the whole template pool, 274; `lalm.smollm_chat.chat_prompts`,
seed 0) that are none of the 50 evaluation questions of scripts/smollm_eval.py
(`lalm.smollm_chat.EVAL_QUESTIONS`), answers them greedily with the model at INIT (the untrained
decoder: SmolLM2-135M-Instruct's own answers) and writes the finished answers as text_chat
items at CHAT.jsonl (`lalm.smollm_chat.distill_chat`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from lalm.smollm_chat import EVAL_QUESTIONS, chat_prompts, distill_chat, prompt_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="the untrained model (lalm from-parts)")
    ap.add_argument("--out", required=True, help="the manifest to write")
    ap.add_argument("--count", type=int, default=None, help="prompts (default: the whole pool)")
    ap.add_argument("--max-new-tokens", type=int, default=128, help="answers cut here are dropped")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    count = len(prompt_pool(EVAL_QUESTIONS)) if args.count is None else args.count
    t = time.perf_counter()
    facts = distill_chat(Path(args.model), Path(args.out),
                         chat_prompts(count, args.seed, EVAL_QUESTIONS), args.max_new_tokens)
    print(f"{facts['kept']} of {facts['prompts']} answers kept ({facts['cut']} cut at "
          f"{args.max_new_tokens} tokens) in {time.perf_counter() - t:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
