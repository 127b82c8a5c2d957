"""End-to-end batched inference in audio-seconds per second: lalm's pipeline vs transformers.

One checkpoint directory saved by transformers (random weights; encoder and decoder shrunk by
the flags) beside the real Qwen2-Audio tokenizer/processor files. Both sides run the same chat
prompts over a LibriSpeech-like 2-20 s duration mix in batches, greedy, a fixed number of new
tokens: transformers through its processor (30 s padded features, left-padded ids) and
`generate`; lalm through `Pipeline.generate` (real-length features, its decode loop). The
timed part includes feature extraction. Tokens are checked identical.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_e2e.py [--clips 8] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
import transformers
from _common import clips, librispeech_like

from lalm.generation import GenerationOptions, Pipeline
from lalm.testing.checkpoints import reference_config, save_reference_checkpoint

TOKENIZER_DIR = "../shared/fixtures/qwen2_audio_tokenizer"
STOP = (151643, 151645)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--encoder-dim", type=int, default=512)
    parser.add_argument("--decoder-dim", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer-dir", default=TOKENIZER_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = librispeech_like(args.clips)
    audio = clips(seconds, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        config = reference_config(n_kv_head=4, encoder_dim=args.encoder_dim,
                                  decoder_dim=args.decoder_dim, n_layer=args.layers)
        reference = save_reference_checkpoint(tmp, args.tokenizer_dir, config, std=0.05)
        processor = transformers.AutoProcessor.from_pretrained(tmp)
        pipe = Pipeline.from_pretrained(tmp)
    processor.tokenizer.padding_side = "left"
    options = GenerationOptions(max_new_tokens=args.new_tokens, stop_token_ids=STOP)
    requests = [pipe.chat_request("Transcribe the audio.", [a]) for a in audio]
    batches = [range(i, min(i + args.batch_size, len(audio)))
               for i in range(0, len(audio), args.batch_size)]

    def run_reference() -> list[list[int]]:
        out = []
        for idx in batches:
            inputs = processor(text=[requests[i].prompt.text for i in idx],
                               audio=[audio[i] for i in idx], sampling_rate=16000,
                               padding=True, return_tensors="pt")
            with torch.inference_mode():
                gen = reference.generate(**inputs, max_new_tokens=args.new_tokens,
                                         do_sample=False, eos_token_id=list(STOP),
                                         pad_token_id=STOP[0])
            for row in gen[:, inputs["input_ids"].shape[1]:].tolist():
                ends = [j for j, t in enumerate(row) if t in STOP]
                out.append(row[: ends[0] + 1] if ends else row)
        return out

    def run_lalm() -> list[list[int]]:
        return [r.tokens for r in pipe.generate(requests, options, args.batch_size)]

    timings = {}
    outputs = {}
    for name, run in (("transformers", run_reference), ("lalm", run_lalm)):
        run()  # warm-up
        start = time.perf_counter()
        outputs[name] = run()
        timings[name] = time.perf_counter() - start
    assert outputs["lalm"] == outputs["transformers"], "tokens differ"
    total = sum(seconds)
    print(f"{args.clips} clips, {total:.0f} s of audio, batch {args.batch_size}, "
          f"{args.new_tokens} new tokens, encoder {args.layers}x{args.encoder_dim}, "
          f"decoder {args.layers}x{args.decoder_dim}; tokens identical")
    for name in ("transformers", "lalm"):
        print(f"{name:12s} {timings[name]:7.2f} s = {total / timings[name]:6.1f} audio-s/s")
    print(f"ratio lalm / transformers: {timings['transformers'] / timings['lalm']:.2f}x")


if __name__ == "__main__":
    main()
