"""Training throughput: lalm's loop step vs a straightforward transformers Qwen2-Audio loop.

One checkpoint directory saved by transformers (random weights, encoder and decoder shrunk by
the flags, the released 156,032-row vocabulary) beside the real Qwen2-Audio tokenizer/processor
files; both sides load the same weights. The data: ASR-style chat items over a LibriSpeech-like
2-20 s duration mix (real-length WAV files), about 2.5 target words per second, in consecutive
batches of `--batch-size`; every side sees the same items in the same batches.

* transformers: its processor builds each batch as people train with it (30-s padded log-mel,
  right-padded ids), labels on the answer only; ``model(**inputs, labels=labels).loss``.
* lalm: `AudioTextDataset` + `collate` (real-length features, the same ids and labels) and the
  loop's own `loss_sum` (lm_head only at target positions), and once more with the loss taken
  from the full [B, S, V] logits (``output="logits"``) to show what that costs.

Each step is forward, backward, gradient clipping (1.0) and an AdamW step on every parameter,
fp32. Timed steps follow one warm-up step per side; the warm-up step's losses are compared
(same weights, same batch: they agree to float rounding). Also printed: the padding each side
computes (mel frames through the encoder, token positions, vocabulary-projection rows).

Run:  PYTHONPATH=. .venv/bin/python bench/bench_train.py [--items 8] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import transformers
from _common import clips, librispeech_like

from lalm.checkpoint import load_model
from lalm.data.collate import collate, model_inputs
from lalm.data.dataset import AudioTextDataset
from lalm.data.manifest import AudioRef, Example, ExampleTask
from lalm.data.render import render_prompt
from lalm.prompt import QWEN2_AUDIO
from lalm.testing.checkpoints import reference_config, save_reference_checkpoint
from lalm.tokenizer import load_tokenizer
from lalm.training.loop import count_targets, loss_sum

TOKENIZER_DIR = "../shared/fixtures/qwen2_audio_tokenizer"
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
         "bright", "stars", "shine", "above", "our", "quiet", "little", "town", "near", "river")
REFERENCE_FRAMES = 3000  # the processor pads every clip to 30 s


def make_examples(folder: Path, seconds: list[float], seed: int) -> list[Example]:
    """ASR chat items over tone clips of `seconds`, written as WAV files into `folder`."""
    rng = np.random.default_rng(seed)
    out = []
    for i, wave in enumerate(clips(seconds, seed)):
        sf.write(folder / f"{i}.wav", wave, 16000, subtype="FLOAT")
        target = " ".join(rng.choice(WORDS, max(1, round(2.5 * seconds[i]))))
        out.append(Example(f"item-{i}", (AudioRef(f"{i}.wav"),),
                           ExampleTask("asr", "en", instruction="Transcribe the audio."), target))
    return out


def reference_batch(processor: object, examples: list[Example], folder: Path,
                    lalm_batch: dict) -> dict:
    """The processor's batch of the same items; ids must equal lalm's, labels are lalm's."""
    texts = [render_prompt(e, QWEN2_AUDIO).text + e.target + "<|im_end|>"
             for e in examples]
    audio = [sf.read(folder / e.audios[0].path, dtype="float32")[0] for e in examples]
    inputs = processor(text=texts, audio=audio, sampling_rate=16000, padding=True,
                       return_tensors="pt")
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    assert ids.shape == lalm_batch["ids"].shape, (ids.shape, lalm_batch["ids"].shape)
    assert torch.equal(ids[mask], lalm_batch["ids"][lalm_batch["token_mask"]]), "ids differ"
    return {**inputs, "labels": lalm_batch["labels"]}


def timed(step: Callable[[dict], float], batches: list[dict], steps: int) -> tuple[float, float]:
    """(warm-up loss on batches[0], median seconds of `steps` more steps cycling the batches)."""
    first = step(batches[0])
    times = []
    for i in range(steps):
        start = time.perf_counter()
        step(batches[(i + 1) % len(batches)])
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side")
    parser.add_argument("--encoder-dim", type=int, default=256)
    parser.add_argument("--decoder-dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokenizer-dir", default=TOKENIZER_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = librispeech_like(args.items)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = reference_config(n_kv_head=4, encoder_dim=args.encoder_dim,
                                  decoder_dim=args.decoder_dim, n_layer=args.layers)
        save_reference_checkpoint(folder / "ckpt", args.tokenizer_dir, config, std=0.05)
        reference = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
            folder / "ckpt").train()
        processor = transformers.AutoProcessor.from_pretrained(folder / "ckpt")
        processor.tokenizer.padding_side = "right"
        ours = load_model(folder / "ckpt", dtype="fp32").train()
        tokenizer = load_tokenizer(folder / "ckpt")
        examples = make_examples(folder, seconds, seed=1)
        dataset = AudioTextDataset(examples, tokenizer, 128, audio_root=folder)
        groups = [list(range(i, min(i + args.batch_size, len(examples))))
                  for i in range(0, len(examples), args.batch_size)]
        lalm_batches = [collate([dataset[i] for i in g], tokenizer.eod_id) for g in groups]
        ref_batches = [reference_batch(processor, [examples[i] for i in g], folder, b)
                       for g, b in zip(groups, lalm_batches)]

    def optimizer_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-5)
    our_opt = torch.optim.AdamW(ours.parameters(), lr=1e-5)

    def reference_step(batch: dict) -> float:
        loss = reference(**batch).loss
        loss.backward()
        optimizer_step(reference, ref_opt)
        return float(loss.detach())

    def lalm_step(batch: dict) -> float:  # the loop's loss: lm_head at target positions only
        n = count_targets(batch, "lm")
        loss = loss_sum(ours, batch, "lm", 0.0, None) / n
        loss.backward()
        optimizer_step(ours, our_opt)
        return float(loss.detach())

    def lalm_full_logits_step(batch: dict) -> float:
        loss = ours(**model_inputs(batch)).loss
        loss.backward()
        optimizer_step(ours, our_opt)
        return float(loss.detach())

    results = {"transformers": timed(reference_step, ref_batches, args.steps),
               "lalm": timed(lalm_step, lalm_batches, args.steps),
               "lalm, full logits": timed(lalm_full_logits_step, lalm_batches, args.steps)}

    n_items = [len(g) for g in groups]
    real_frames = [int(b["feature_lens"].sum()) for b in lalm_batches]
    lalm_frames = [b["features"].shape[0] * b["features"].shape[2] for b in lalm_batches]
    positions = [b["ids"].numel() for b in lalm_batches]
    real_tokens = [int(b["token_lens"].sum()) for b in lalm_batches]
    targets = [count_targets(b, "lm") for b in lalm_batches]
    per_step = sum(n_items) / len(groups), sum(real_tokens) / len(groups)
    print(f"{args.items} items ({sum(seconds):.0f} s of audio, {min(seconds):.1f}-"
          f"{max(seconds):.1f} s), batches of {args.batch_size}; encoder {args.layers}x"
          f"{args.encoder_dim}, decoder {args.layers}x{args.decoder_dim}, vocab "
          f"{config.text_config.vocab_size}; {args.threads} threads; AdamW fp32")
    print(f"warm-up loss: transformers {results['transformers'][0]:.6f}, lalm "
          f"{results['lalm'][0]:.6f} (|diff| "
          f"{abs(results['transformers'][0] - results['lalm'][0]):.1e})")
    print(f"{'':18s} {'s/step':>8s} {'examples/s':>11s} {'tokens/s':>9s} {'ratio':>6s}")
    base = results["transformers"][1]
    for name, (_, seconds_per_step) in results.items():
        print(f"{name:18s} {seconds_per_step:8.3f} {per_step[0] / seconds_per_step:11.2f} "
              f"{per_step[1] / seconds_per_step:9.1f} {base / seconds_per_step:5.2f}x")
    ref_frames = REFERENCE_FRAMES * sum(n_items)
    print("padding waste (share of computed positions that are padding):")
    print(f"  encoder mel frames: transformers {1 - sum(real_frames) / ref_frames:.1%} "
          f"({ref_frames} frames), lalm {1 - sum(real_frames) / sum(lalm_frames):.1%} "
          f"({sum(lalm_frames)} frames)")
    print(f"  decoder token positions (both): {1 - sum(real_tokens) / sum(positions):.1%}")
    print(f"  vocabulary-projection rows: transformers {sum(positions)}, lalm "
          f"{sum(targets)} (the {sum(targets)} target positions)")


if __name__ == "__main__":
    main()
