"""Peak memory of loading + one chat turn, by precision, on the real Qwen2-Audio-7B shapes.

The checkpoint is `realshape.build_realshape_checkpoint` (7B widths, 2 + 2 layers, bf16 on disk,
3.47 GB). Each case runs in its own subprocess, one at a time, under a memory guard (the
parent polls the child's RSS and kills it past --max-rss-gib): load, a 10-s prefill (one
token: the KV cache is allocated for the whole turn up front, so later tokens add no memory;
--new-tokens N > 1 times a second turn of N tokens). The child reports its peak RSS (ru_maxrss)
and the times. Cases:

* lalm fp32 / bf16 / auto / int8 / int4 (`Pipeline.from_pretrained(dir, precision)`);
* transformers `Qwen2AudioForConditionalGeneration.from_pretrained(dir, dtype=bfloat16)` with
  its processor, `generate()` on the same clip and prompt.

fp32 needs ~2 bytes of memory per bf16 file byte, past the guard for this file: it runs on a
smaller real-shape file (vocab cut to 32,768, below the real tokenizer's ids, so this case's
turn runs on the model's protocol with `gpu_check`'s prompt instead of the pipeline; the figure
per file byte is what carries over).
Peak RSS is extrapolated to the 16.8 GB file by the bytes each case holds in memory per file
byte (1 for bf16 weights, 2 for float32; for int8 / int4 the bytes the model holds):
``peak_32 = peak + (file_32 - file) * held / file``.
Every added block's weights count as resident (each token reads them); the embedding table is
not scaled, and a chat turn touches only its prompt's rows of it, which is why the measured
peak can be below the file size.

Run:  PYTHONPATH=. nice -n 19 .venv/bin/python bench/bench_load.py [--dir /tmp/rs] [--new-tokens 4]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from _common import clips, run_guarded
from realshape import build_realshape_checkpoint, file_bytes

GIB = 1 << 30
QUESTION = "What can you hear in this clip?"
CASES = ("lalm-fp32", "lalm-bf16", "lalm-auto", "lalm-int8", "lalm-int4", "transformers-bf16")


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _weight_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def child(case: str, directory: Path, new_tokens: int) -> dict:
    """One case in this process; returns its figures."""
    import torch

    clip = clips([10.0], seed=1)[0]
    if case == "lalm-fp32":  # the small-vocab file: the model's protocol, no tokenizer
        from gpu_check import clip_features, embed, greedy

        from lalm.checkpoint import load_model

        base = _peak_rss()
        start = time.perf_counter()
        held = model = load_model(directory, "fp32")
        loaded = time.perf_counter() - start
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        features, lens = clip_features(model.config.encoder.n_mels)

        def turn(n: int) -> list[int]:
            with torch.inference_mode():
                return greedy(model, embed(model, features, lens), n)[0]
    elif case.startswith("lalm"):
        from lalm.generation import GenerationOptions, Pipeline

        base = _peak_rss()
        start = time.perf_counter()
        pipe = Pipeline.from_pretrained(directory, case.removeprefix("lalm-"))
        held = pipe.model
        loaded = time.perf_counter() - start
        dtypes = sorted({str(p.dtype) for p in pipe.model.parameters()})

        def turn(n: int) -> list[int]:
            request = pipe.chat_request(QUESTION, [clip])
            options = GenerationOptions(max_new_tokens=n, temperature=0.0, stop_token_ids=())
            return pipe.generate([request], options)[0].tokens
    else:
        import transformers

        base = _peak_rss()
        start = time.perf_counter()
        model = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
            directory, dtype=torch.bfloat16).eval()
        held = model
        processor = transformers.AutoProcessor.from_pretrained(directory)
        loaded = time.perf_counter() - start
        dtypes = sorted({str(p.dtype) for p in model.parameters()})
        messages = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                                 {"type": "text", "text": QUESTION}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False)

        def turn(n: int) -> list[int]:
            inputs = processor(text=[text], audio=[clip], sampling_rate=16000,
                               return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False)
            return out[0, inputs["input_ids"].shape[1]:].tolist()

    start = time.perf_counter()
    tokens = turn(1)
    prefill = time.perf_counter() - start
    chat = prefill
    if new_tokens > 1:
        start = time.perf_counter()
        tokens = turn(new_tokens)
        chat = time.perf_counter() - start
    # the saved tensors, plus int4's kernel copies of its codes (buffers not saved)
    weight_bytes = sum(t.nbytes for t in held.state_dict().values()) + sum(
        b.nbytes for name, b in held.named_buffers()
        if name.endswith((".packed", ".scales_and_zeros")))
    return {"case": case, "peak_rss": _peak_rss(), "rss_after_imports": base,
            "weight_bytes_in_memory": weight_bytes,
            "load_s": loaded, "prefill_10s_s": prefill, "chat_turn_s": chat,
            "tokens": len(tokens), "param_dtypes": dtypes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None,
                        help="folder for the two real-shape checkpoints (kept; reused if "
                             "there); default: a temporary folder")
    parser.add_argument("--new-tokens", type=int, default=1,
                        help="tokens of the chat turn (1: the turn is the prefill; more: a "
                             "second turn of that many tokens)")
    parser.add_argument("--max-rss-gib", type=float, default=6.0, help="memory guard per case")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.dir, args.new_tokens)))
        return

    root = args.dir or Path(tempfile.mkdtemp(prefix="realshape-"))
    folders = {"full": root / "bf16", "small": root / "bf16-vocab32k"}
    for kind, folder in folders.items():
        if not (folder / "config.json").is_file():
            print(f"building {folder} ...", file=sys.stderr)
            build_realshape_checkpoint(folder, vocab_size=156032 if kind == "full" else 32768)
    full_file = file_bytes(32, 32)
    print(f"real-shape checkpoint: {_weight_bytes(folders['full']) / 1e9:.2f} GB on disk "
          f"(7B: {full_file / 1e9:.2f} GB); threads {os.cpu_count()}; "
          f"target peak <= 1.05 x file + 1 GiB = {(1.05 * full_file + GIB) / GIB:.1f} GiB")
    print("| case | file GB | peak RSS GiB | RSS / file | 7B peak GiB (extrapolated) | "
          "load s | 10-s prefill s | chat turn s | weights |")
    print("|---|---|---|---|---|---|---|---|---|")
    results = {}
    for case in args.cases:
        folder = folders["small" if case == "lalm-fp32" else "full"]
        cmd = [sys.executable, __file__, "--child", case, "--dir", str(folder),
               "--new-tokens", str(args.new_tokens)]
        code, out, polled = run_guarded(cmd, int(args.max_rss_gib * GIB))
        if code != 0:
            print(f"| {case} | | killed or failed (exit {code}, RSS seen {polled / GIB:.1f} "
                  f"GiB) | | | | | | |")
            continue
        r = json.loads(out.strip().splitlines()[-1])
        results[case] = r
        size = _weight_bytes(folder)
        full_peak = r["peak_rss"] + (full_file - size) * r["weight_bytes_in_memory"] / size
        print(f"| {case} | {size / 1e9:.2f} | {r['peak_rss'] / GIB:.2f} | "
              f"{r['peak_rss'] / size:.2f} | {full_peak / GIB:.1f} | {r['load_s']:.1f} | "
              f"{r['prefill_10s_s']:.2f} | {r['chat_turn_s']:.2f} | "
              f"{','.join(d.removeprefix('torch.') for d in r['param_dtypes'])} |", flush=True)
    if "transformers-bf16" in results:
        ref = results["transformers-bf16"]["prefill_10s_s"]
        for case in ("lalm-auto", "lalm-bf16"):
            if case in results:
                print(f"10-s prefill, transformers / {case}: "
                      f"{ref / results[case]['prefill_10s_s']:.1f}x")


if __name__ == "__main__":
    main()
