"""The GPU path in one command: real Qwen2-Audio-7B shapes on CUDA, fp32 vs bf16 parity, and
prefill / decode throughput of lalm vs transformers' Qwen2-Audio in the same run.

The model (7B widths, 32 decoder + 32 encoder blocks, random weights) is built on the device
itself: float32 (33.6 GB) and a bf16 copy (16.8 GB); transformers'
`Qwen2AudioForConditionalGeneration` (SDPA attention) is given the bf16 copy's tensors (shared,
no third copy). Input: a 10-s synthetic clip through lalm's front end and encoder, its audio rows
spliced into a short text prompt. Then:

1. parity on the device: relative L2 error of the bf16 last-position logits against fp32;
   greedy agreement: fp32's greedy tokens fed to bf16 (teacher forcing) and the fraction of
   steps where bf16's argmax agrees, plus how many leading free-running greedy tokens match;
2. lalm bf16 runs under `sdpa_kernel` restricted to the flash / efficient / cuDNN kernels, so a
   fallback to the math kernel fails loudly instead of running slowly;
3. throughput at batch 1: encoder on the 10-s clip (lalm real length; transformers its 30-s
   window), decoder prefill, and decode tokens/s over a static KV cache (lalm's own; optional
   `torch.compile` of the decoder blocks with --compile) vs transformers' `generate`.

Runs in < 8 min on an H200 (the model build and transformers' import dominate). On CPU it is a
smoke test of the same logic (``--device cpu --layers 1 --small``: tiny widths).

Run:  PYTHONPATH=. python bench/gpu_check.py [--device cuda] [--layers 32] [--steps 64] [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realshape import realshape_config  # noqa: E402

from lalm.audio import batch_log_mel  # noqa: E402
from lalm.checkpoint import qwen2_audio  # noqa: E402
from lalm.config import ModelConfig  # noqa: E402
from lalm.model import AudioLanguageModel  # noqa: E402

AUDIO_TOKEN = qwen2_audio.AUDIO_TOKEN_ID


def build_config(layers: int, small: bool) -> ModelConfig:
    """The 7B shapes with `layers` blocks each, or (``small``) the tiny test widths."""
    if small:
        return ModelConfig.from_name("tiny-random", decoder={"n_layer": layers},
                                     encoder={"n_layer": layers})
    return realshape_config(layers, layers)


def random_model(config: ModelConfig, device: torch.device, seed: int = 0) -> AudioLanguageModel:
    """float32 model with N(0, 0.02) weights (norm weights 1 + N(0, 0.1)), made on `device`."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = AudioLanguageModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 2)[-2].endswith(("norm", "_ln", "ln_post")) and \
                    name.endswith("weight"):
                param.normal_(1.0, 0.1)
            else:
                param.normal_(0.0, 0.02)
    return model.eval()


def clip_features(n_mels: int, seconds: float = 10.0) -> tuple[Tensor, Tensor]:
    """A 10-s tone + noise clip through lalm's front end: ([1, M, T] float32, [1] lens)."""
    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    clip = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(t.size))
    return batch_log_mel([clip.astype(np.float32)], n_mels)


def prompt_ids(model: AudioLanguageModel, n_audio: int) -> Tensor:
    """[1, S] text ids around a run of `n_audio` audio slots (ids as in Qwen2-Audio)."""
    vocab = model.config.decoder.vocab_size
    gen = torch.Generator().manual_seed(1)
    text = torch.randint(0, min(vocab - 1, 150000), (2, 12), generator=gen)
    audio = torch.full((n_audio,), _audio_id(model))
    return torch.cat([text[0], audio, text[1]])[None]


def _audio_id(model: AudioLanguageModel) -> int:
    vocab = model.config.decoder.vocab_size
    return AUDIO_TOKEN if vocab > AUDIO_TOKEN else vocab - 1


def copy_bandwidth(device: torch.device, n_bytes: int = 1 << 30) -> float:
    """Bytes per second one device copy moves (read + write), best of 5."""
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    best = min(timed(device, lambda: dst.copy_(src))[0] for _ in range(5))
    return 2 * n_bytes / best


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[], object]) -> tuple[float, object]:
    sync(device)
    start = time.perf_counter()
    out = run()
    sync(device)
    return time.perf_counter() - start, out


def fast_attention(device: torch.device) -> contextlib.AbstractContextManager:
    """On CUDA: SDPA limited to its fused kernels (a math-kernel fallback raises)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                        SDPBackend.CUDNN_ATTENTION])


def embed(model: AudioLanguageModel, features: Tensor, lens: Tensor) -> Tensor:
    """[1, S, D] prompt embeddings (audio rows spliced in) in the model dtype."""
    device = model.decoder.norm.weight.device
    rows = model.embed_audio(features.to(device, model.encoder.conv1.weight.dtype),
                             lens.to(device))
    ids = prompt_ids(model, rows[0].shape[0]).to(device)
    return model.embed_prompt(ids, rows, ids == _audio_id(model))


def greedy(model: AudioLanguageModel, embeds: Tensor, steps: int,
           forced: list[int] | None = None) -> tuple[list[int], Tensor, list[float]]:
    """Greedy decoding over lalm's static KV cache (the model's narrow protocol).

    Args:
        model: the model.
        embeds: [1, S, D] prompt embeddings.
        steps: tokens to generate.
        forced: feed these tokens instead of the model's own (teacher forcing).

    Returns:
        (argmax token of every step, [V] float32 last-position logits of the prompt,
        seconds of each decode step after the prefill).
    """
    device, length = embeds.device, embeds.shape[1]
    decoder = model.decoder
    decoder.setup_caches(1, length + steps + 1)
    try:
        pos = torch.arange(length, device=device)[None]
        logits = decoder(embeds, pos, output="last_logits")
        first = logits[0].float()
        tokens, times = [], []
        for step in range(steps):
            tokens.append(int(logits.argmax(-1)))
            fed = tokens[-1] if forced is None else forced[step]
            ids = torch.tensor([[fed]], device=device)
            seconds, logits = timed(device, lambda ids=ids, step=step: decoder(
                decoder.embed(ids), torch.tensor([[length + step]], device=device),
                output="last_logits"))
            times.append(seconds)
        return tokens, first, times
    finally:
        decoder.clear_caches()


def reference_model(model: AudioLanguageModel) -> torch.nn.Module | None:
    """transformers' Qwen2-Audio holding the same tensors as `model` (None without it)."""
    try:
        import transformers
    except ImportError:
        return None
    hf = qwen2_audio.config_to_hf(model.config, "bfloat16")
    config = transformers.Qwen2AudioConfig(**{k: v for k, v in hf.items()
                                              if k not in ("architectures", "model_type")})
    config._attn_implementation = "sdpa"
    with torch.device(model.decoder.norm.weight.device):  # its own init, then our tensors
        reference = transformers.Qwen2AudioForConditionalGeneration._from_config(
            config, dtype=torch.bfloat16)
    state = {qwen2_audio.memory_name(k): v
             for k, v in qwen2_audio.from_lalm(model.state_dict()).items()}
    reference.load_state_dict(state, strict=True, assign=True)
    return reference.eval()


def reference_runs(reference: torch.nn.Module, embeds: Tensor, features: Tensor,
                   steps: int, device: torch.device) -> dict[str, object]:
    """transformers: encoder on its 30-s window, generate() of 1 and of `steps` tokens (their
    greedy tokens returned too, to check it holds the same weights)."""
    dtype = embeds.dtype
    n_frames = 3000  # its processor pads every clip to 30 s
    padded = torch.zeros(1, features.shape[1], n_frames)
    padded[:, :, :features.shape[2]] = features[:, :, :n_frames]
    padded = padded.to(device, dtype)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=device)

    def gen(n: int) -> Tensor:
        return reference.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n,
                                  min_new_tokens=n, do_sample=False, pad_token_id=0)

    gen(2)  # warm-up
    encoder_s, _ = timed(device, lambda: reference.model.audio_tower(padded))
    one, _ = timed(device, lambda: gen(1))
    full, out = timed(device, lambda: gen(steps))
    return {"encoder_s": encoder_s, "prefill_s": one, "decode_tok_s": (steps - 1) / (full - one),
            "tokens": out[0, -steps:].tolist()}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--layers", type=int, default=32, help="decoder and encoder blocks")
    parser.add_argument("--small", action="store_true", help="tiny widths (CPU smoke test)")
    parser.add_argument("--steps", type=int, default=64, help="decode steps timed")
    parser.add_argument("--parity-steps", type=int, default=32, help="greedy steps compared")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the decoder blocks (dynamic shapes) for lalm bf16")
    parser.add_argument("--no-reference", action="store_true", help="skip transformers")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = build_config(args.layers, args.small)
    report: dict[str, object] = {"device": str(torch.cuda.get_device_name(device))
                                 if device.type == "cuda" else "cpu",
                                 "layers": args.layers, "small": args.small,
                                 "torch": torch.__version__}
    features, lens = clip_features(config.encoder.n_mels)
    # built outside inference mode: the model's own layout changes (use_decode_layout) and
    # transformers' weight assignment need ordinary tensors
    build_s, fp32 = timed(device, lambda: random_model(config, device))
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    report["build_s"] = build_s
    with torch.no_grad():
        # 1. parity: fp32 vs bf16 on the device
        e32 = embed(fp32, features, lens)
        tokens32, logits32, _ = greedy(fp32, e32, args.parity_steps)
        e16 = embed(bf16, features, lens)
        with fast_attention(device):
            forced16, logits16, _ = greedy(bf16, e16, args.parity_steps, forced=tokens32)
            free16, _, _ = greedy(bf16, e16, args.parity_steps)
        rel = float((logits16 - logits32).norm() / logits32.norm())
        agree = sum(a == b for a, b in zip(forced16, tokens32)) / len(tokens32)
        prefix = next((i for i, (a, b) in enumerate(zip(free16, tokens32)) if a != b),
                      len(tokens32))
        report["parity"] = {"prompt_tokens": e32.shape[1], "logits_rel_err": rel,
                            "teacher_forced_agreement": agree,
                            "free_running_prefix": f"{prefix}/{len(tokens32)}"}
        del fp32, e32
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # 2-3. lalm bf16 throughput (fused attention kernels only on CUDA)
        if args.compile:
            for layer in bf16.decoder.layers:
                layer.compile(dynamic=True)
        with fast_attention(device):
            embed(bf16, features, lens)  # warm-up
            encoder_s, _ = timed(device, lambda: bf16.embed_audio(
                features.to(device, torch.bfloat16), lens.to(device)))
            greedy(bf16, e16, 2)  # warm-up (and compilation)
            prefill_s, _ = timed(device, lambda: greedy(bf16, e16, 0))
            _, _, times = greedy(bf16, e16, args.steps)
        step_s = sum(times) / len(times)
        decoder = bf16.decoder
        step_bytes = sum(p.numel() * p.itemsize for p in decoder.parameters()) - \
            decoder.embed.weight.numel() * decoder.embed.weight.itemsize  # one embedding row
        floor_s = step_bytes / copy_bandwidth(device, (1 << 26) if args.small else (1 << 30))
        lalm = {"encoder_s": encoder_s, "prefill_s": prefill_s, "decode_tok_s": 1 / step_s,
                "decode_x_floor": step_s / floor_s, "floor_ms": 1e3 * floor_s}
        report["lalm_bf16"] = lalm
        reference = None if args.no_reference else reference_model(bf16)
        if reference is not None:
            ref = reference_runs(reference, e16, features, args.steps, device)
            tokens = ref.pop("tokens")
            ours, _, _ = greedy(bf16, e16, args.steps)
            same = next((i for i, (a, b) in enumerate(zip(ours, tokens)) if a != b), len(ours))
            ref["same_greedy_prefix_as_lalm_bf16"] = f"{same}/{len(ours)}"
            report["transformers_bf16"] = ref
            report["ratio_lalm_over_transformers"] = {
                "encoder_speed": ref["encoder_s"] / lalm["encoder_s"],
                "prefill_speed": ref["prefill_s"] / lalm["prefill_s"],
                "decode_speed": lalm["decode_tok_s"] / ref["decode_tok_s"]}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
