"""Decode step at batch 1 with the real Qwen2-Audio-7B decoder shapes, by precision, vs the
memory-bandwidth floor measured in the same run, extrapolated to 32 layers + lm_head.

The decoder is built in memory with the real shapes (width 4096, MLP 11008, 32/32 heads,
vocab 156,032) but `--layers` (2) layers, random weights; the embedding shares the lm_head's
matrix (a step reads one embedding row, so this only saves memory). For each precision
(fp32, bf16, int8 / int4 = `quantize_model` of the bf16 weights, lm_head included: int8 for
int4 models, `HEAD_SCHEMES`; int4 in groups of `INT4_GROUP_SIZE` columns; the activations
in the dtype `load_model` would compute in on this machine, `resolve_precision`: float32 on a
CPU without bf16 units, or with `--compute storage` the weights' own): time decode steps
over a KV context of `--context` positions (best of `--rounds`), and time the final norm +
lm_head product alone (and with `--prefill` a prefill of `--context` positions: 280 is about
a 10 s clip's prompt). Per layer = (step - head - base) / layers, base being the same step
with the layers and the lm_head taken out (what a step does once whatever its depth: masks,
RoPE tables, the final norm: ~0.3 ms, which the earlier (step - head) / layers counted 16
times over); the 7B step = base + head + 32 x per layer. The context's keys/values are written
into the cache directly (no prefill). The floor of a step = bytes it must read (every weight
once, plus the KV cache) / read bandwidth, the bandwidth being the fastest of three probes
over 1 GiB (`probes`: a sum, a copy, MKL's fp32 matrix-vector product), which take turns
with the steps within every round (the host's memory traffic moves the bandwidth by ±15 %
from minute to minute, so a probe taken apart from the steps measures another moment).
"x floor" takes the best probe of the whole run; "paired" each round's 7B step against the
floor at that round's own fastest probe, taken seconds apart (median and min over the rounds:
the best probe catches the host's fastest moment, a round's mean step does not).
transformers' Qwen2 decode on the same bf16 tensors (shared, not copied; a bf16 decoder of
its own where lalm's computes in float32) is the reference where `--reference` is given;
`--torch-kernels` also times the bf16 and int8 decoders with torch's products instead of
lalm's (`lalm.kernels.torch_kernels`), on the same decoder, the two taking turns within every
round (the host's memory traffic varies from minute to minute).
One thread by default: on a shared machine two-thread kernels wait at OpenMP barriers.

Run:  PYTHONPATH=. .venv/bin/python bench/bench_decode_7b.py [--precisions fp32,bf16,int8,int4]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time
import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch
from _common import alternating_rounds

from lalm import kernels
from lalm.config import DecoderConfig, ModelConfig, resolve_precision
from lalm.model.decoder import TextDecoder
from lalm.model.quant import quantize_model
from lalm.model.upcast import upcast_compute

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "int8": torch.bfloat16,
          "int4": torch.bfloat16}
REAL_LAYERS = 32


def probes(n_bytes: int = 1 << 30) -> dict[str, tuple[Callable[[], object], int]]:
    """Read-bandwidth probes over `n_bytes` (past a 260 MiB L3) of float32: a sum, a copy of
    half of it (read + written counted) and MKL's matrix-vector product over it as a
    [rows, 4096] matrix (the stream an fp32 decode step reads): {name: (run, bytes moved)}."""
    src = torch.ones(n_bytes // 4)
    half = torch.empty(n_bytes // 8)
    matrix, vector = src.view(-1, 4096), torch.ones(4096)
    return {"sum": (src.sum, n_bytes),
            "copy": (lambda: half.copy_(src[:half.numel()]), n_bytes),
            "mv": (lambda: torch.mv(matrix, vector), n_bytes)}


def read_bandwidth(n_bytes: int = 1 << 30) -> float:
    """Bytes per second of the fastest of `probes`, best of 3 calls each: the floor uses
    the highest rate the machine shows."""
    best = 0.0
    for run, moved in probes(n_bytes).values():
        run()
        for _ in range(3):
            start = time.perf_counter()
            run()
            best = max(best, moved / (time.perf_counter() - start))
    return best


def compute_dtype(precision: str, compute: str) -> torch.dtype:
    """The activations' dtype of a `precision` decoder: "auto" as `load_model` picks it for a
    bf16 checkpoint on this machine (`resolve_precision`: a CPU without bf16 units computes in
    float32 over the narrow weights), "storage" the weights' own dtype whatever the machine."""
    if compute == "storage":
        return DTYPES[precision]
    with warnings.catch_warnings():  # the warning that it computes in float32 (printed later)
        warnings.simplefilter("ignore")
        return resolve_precision(precision, "cpu", DTYPES[precision]).compute


def activations(decoder: TextDecoder) -> torch.dtype:
    """The dtype `decoder` computes in (its norms are cast to it, `upcast_compute`)."""
    return decoder.norm.weight.dtype


def build(config: DecoderConfig, precision: str, seed: int = 0,
          compute: torch.dtype | None = None) -> TextDecoder:
    """The real-shape decoder in `precision`: N(0, 0.02) weights, norms 1, biases 0.01;
    computing in `compute` (default: the weights' dtype) over its narrow weights, as
    `load_model` makes it (`upcast_compute`)."""
    with torch.device("meta"):
        decoder = TextDecoder(config).to(DTYPES[precision])  # allocated in its dtype below
    decoder.embed.weight = decoder.lm_head.weight  # one [V, D] matrix (module docstring)
    if precision == "fp32":  # fp32 matrices laid out as `setup_caches` will want them
        # (TextDecoder.use_decode_layout), so that re-laying copies no 2.5 GB head
        for module in decoder.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.data = torch.empty(module.weight.shape[::-1], device="meta").t()
    decoder.to_empty(device="cpu")  # empty_like keeps those strides
    # one block of N(0, 0.02) values tiled over every matrix: random enough for timing,
    # and quick to write on a busy machine (no fresh random number per weight)
    block = torch.randn(1 << 24, generator=torch.Generator().manual_seed(seed)).mul_(0.02)
    with torch.no_grad():
        for name, param in decoder.named_parameters():
            if param.ndim == 2:
                flat = (param if param.is_contiguous() else param.t()).view(-1)
                for start in range(0, flat.numel(), block.numel()):
                    chunk = flat[start:start + block.numel()]
                    chunk.copy_(block[:chunk.numel()])
            else:
                param.fill_(1.0 if name.endswith("norm.weight") else 0.01)
    decoder.eval()
    if precision in ("int8", "int4"):
        quantize_model(decoder, precision)
    if compute is not None and compute != DTYPES[precision]:
        upcast_compute(decoder, compute)
    return decoder


def best_time(run: Callable[[], object], rounds: int, repeat: int) -> float:
    """Best over `rounds` of the mean seconds of `repeat` calls (after one warm-up call)."""
    run()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            run()
        best = min(best, (time.perf_counter() - start) / repeat)
    return best


def step_timer(decoder: TextDecoder, context: int) -> Callable[[], object]:
    """A callable running one decode step at KV length `context` (the cache is rewound after
    each step, so every call attends over the same context)."""
    dim, dtype = decoder.config.dim, activations(decoder)
    cache = decoder.setup_caches(1, context + 1)
    gen = torch.Generator().manual_seed(1)
    # the context's keys/values written directly (a bf16 prefill is slow on CPUs without
    # bf16 units, and its values do not change the cost of a step)
    for buffer in (cache.k, cache.v):
        buffer[:, :, :, :context] = torch.randn(buffer[:, :, :, :context].shape, generator=gen)
    cache.key_mask[:, :context] = True
    cache.length = context
    embeds, pos = torch.randn(1, 1, dim, generator=gen).to(dtype), torch.tensor([[context]])

    def step() -> object:
        with torch.inference_mode():
            logits = decoder(embeds, pos, output="last_logits")
        cache.length = context
        return logits

    return step


def prefill_timer(decoder: TextDecoder, context: int) -> Callable[[], object]:
    """A callable running the prefill of `context` positions into an empty cache (the last
    position's logits, as generation asks), rewound after each call."""
    dim, dtype = decoder.config.dim, activations(decoder)
    cache = decoder.setup_caches(1, context + 1)
    gen = torch.Generator().manual_seed(2)
    embeds = torch.randn(1, context, dim, generator=gen).to(dtype)
    pos = torch.arange(context)[None]

    def prefill() -> object:
        cache.length = 0
        cache.key_mask.zero_()
        with torch.inference_mode():
            return decoder(embeds, pos, output="last_logits")

    return prefill


def head_timer(decoder: TextDecoder) -> Callable[[], object]:
    """A callable running the final norm + lm_head of one position (what a step adds to its
    layers: `TextDecoder.decode_head`, a float32 head through lalm's kernel as the fused step
    runs it, torch's inside `kernels.torch_kernels`)."""
    x = torch.randn(1, decoder.config.dim).to(activations(decoder))

    def head() -> object:
        with torch.inference_mode():
            return decoder.decode_head(decoder.norm(x)).float()

    return head


def reference_timer(decoder: TextDecoder, context: int) -> Callable[[], object]:
    """transformers' Qwen2 decode step on the decoder's own tensors (a bf16 decoder: fp32
    decoders are re-laid by `use_decode_layout`, int8 ones have no transformers form)."""
    import transformers

    from lalm.checkpoint.qwen2_audio import from_lalm

    cfg = decoder.config
    hf_config = transformers.Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.hidden_dim,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head, rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta,
        tie_word_embeddings=False, dtype=decoder.embed.weight.dtype)
    with torch.device("meta"):
        reference = transformers.Qwen2ForCausalLM(hf_config)
    state = {k.removeprefix("language_model."): v for k, v in from_lalm(
        {f"decoder.{k}": v for k, v in decoder.state_dict().items()}).items()}
    reference.load_state_dict(state, assign=True, strict=True)
    reference.model.rotary_emb = type(reference.model.rotary_emb)(hf_config)  # off meta
    reference.eval()
    cache = transformers.DynamicCache(config=hf_config)
    gen = torch.Generator().manual_seed(1)
    shape = (1, cfg.n_kv_head, context, cfg.head_dim)
    for layer in range(cfg.n_layer):  # the context written directly, as in `step_timer`
        cache.update(torch.randn(shape, generator=gen).to(hf_config.dtype),
                     torch.randn(shape, generator=gen).to(hf_config.dtype), layer)
    nxt = torch.zeros(1, 1, dtype=torch.long)

    def step() -> object:
        with torch.inference_mode():
            out = reference(nxt, past_key_values=cache, use_cache=True,
                            logits_to_keep=1).logits
        cache.crop(-1)  # back to the context
        return out

    return step


def bare(decoder: TextDecoder, step: Callable[[], object]) -> Callable[[], object]:
    """`step` with the decoder's layers and lm_head taken out: the work a step does once
    whatever its depth (masks, RoPE tables, the final norm). The layers are skipped where a
    fused step would run them (`TextDecoder._decode_step` answers its input), so the decoder's
    layers, and the fused step's plan of them, stay as they are."""
    def run() -> object:
        head = decoder.lm_head
        decoder.lm_head = torch.nn.Identity()
        decoder._decode_step = lambda x, *step_operands: x  # type: ignore[method-assign]
        try:
            return step()
        finally:
            decoder.lm_head = head
            del decoder._decode_step

    return run


class Round(NamedTuple):
    """One round of `time_precision` for one way: seconds of its step, its `bare` step and
    its head, and the bytes per second of the round's fastest probe."""

    step: float
    base: float
    head: float
    bandwidth: float


def extrapolate(step: float, base: float, head: float, layer_bytes: int, head_bytes: int,
                bandwidth: float, layers: int) -> tuple[float, float, float]:
    """(seconds a layer takes, the 7B step's seconds, the 7B step's floor in seconds) from a
    `layers`-layer step's timings, each layer reading `layer_bytes` and the head `head_bytes`
    at `bandwidth` bytes per second."""
    per_layer = (step - head - base) / layers
    floor_7b = (REAL_LAYERS * layer_bytes + head_bytes) / bandwidth
    return per_layer, base + head + REAL_LAYERS * per_layer, floor_7b


def time_precision(config: DecoderConfig, precision: str, args: argparse.Namespace,
                   reference: bool = False, torch_too: bool = False
                   ) -> tuple[list[tuple[str, float, float, float, list[Round]]], int, int,
                              float | None, float]:
    """The real-shape decoder in `precision`: ([(label, step seconds, seconds of the step
    without its layers and head (`bare`), head seconds, the bests of the rounds; every
    round's `Round`)] for lalm's products and, with `torch_too`, torch's
    (`lalm.kernels.torch_kernels`) on the same decoder, timed in turns with the bandwidth
    `probes`; bytes a layer reads, bytes the head reads; transformers' step seconds on the
    same tensors where `reference`, else None; the best probe's bytes per second)."""
    decoder = build(config, precision, compute=compute_dtype(precision, args.compute))
    # the saved tensors: for int4 as many bytes as the kernel's packed copy it reads
    layer_bytes = sum(t.numel() * t.element_size()
                      for t in decoder.layers[0].state_dict().values())
    head_bytes = sum(t.numel() * t.element_size() for t in
                     (*decoder.lm_head.state_dict().values(), decoder.norm.weight))
    kv_bytes = 2 * args.context * config.n_kv_head * config.head_dim * activations(
        decoder).itemsize  # one layer's keys + values read per step (the compute dtype)
    step, head = step_timer(decoder, args.context), head_timer(decoder)
    ways = {precision: contextlib.nullcontext}
    if torch_too:
        ways[f"{precision}/torch"] = kernels.torch_kernels

    def under(way: Callable[[], contextlib.AbstractContextManager], run: Callable[[], object]
              ) -> Callable[[], object]:
        def wrapped() -> object:
            with way():
                return run()
        return wrapped

    runs = {(label, part): under(way, run) for label, way in ways.items()
            for part, run in (("step", step), ("base", bare(decoder, step)), ("head", head))}
    probe = probes()
    runs.update({("probe", name): run for name, (run, _) in probe.items()})
    rounds = alternating_rounds(runs, args.rounds, args.repeat)
    best = {key: min(times) for key, times in rounds.items()}
    # each round's bandwidth: its fastest probe, taken seconds from that round's steps
    bandwidths = [max(moved / rounds["probe", name][r] for name, (_, moved) in probe.items())
                  for r in range(args.rounds)]
    rows = [(label, best[label, "step"], best[label, "base"], best[label, "head"],
             [Round(*times, bandwidth) for *times, bandwidth in zip(
                 rounds[label, "step"], rounds[label, "base"], rounds[label, "head"],
                 bandwidths)])
            for label in ways]
    bandwidth = max(bandwidths)
    del probe
    if args.prefill:
        prefill = prefill_timer(decoder, args.context)
        for label, way in ways.items():
            t_prefill, t_head = best_time(under(way, prefill), 1, 1), best[label, "head"]
            print(f"  {label}: prefill of {args.context} positions {t_prefill:.2f} s for "
                  f"{args.layers} layers + head, "
                  f"{(t_prefill - t_head) / args.layers * REAL_LAYERS + t_head:.1f} s for the 7B")
    if reference and activations(decoder) != DTYPES[precision]:
        decoder = build(config, precision)  # transformers computes in the weights' dtype
    t_reference = best_time(reference_timer(decoder, args.context), args.rounds,
                            args.repeat) if reference else None
    del decoder
    gc.collect()
    return rows, layer_bytes + kv_bytes, head_bytes, t_reference, bandwidth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16,int8,int4")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--context", type=int, default=280)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", action="store_true",
                        help="also time transformers' decode step on the bf16 tensors")
    parser.add_argument("--prefill", action="store_true",
                        help="also time a prefill of --context positions per precision")
    parser.add_argument("--torch-kernels", action="store_true",
                        help="also time bf16 and int8 with torch's products, not lalm's")
    parser.add_argument("--compute", choices=("auto", "storage"), default="auto",
                        help="activations' dtype: as load_model picks it on this machine "
                             "(auto), or the weights' own (storage: bf16 even without "
                             "bf16 units)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = ModelConfig.from_name("qwen2-audio-7b", decoder={
        "n_layer": args.layers, "max_seq_len": args.context + 1}).decoder
    paths = f"{kernels.isa()}, int8 {kernels.int8_isa()}" if kernels.available() else \
        "unavailable"
    computes = ", ".join(f"{p} {str(compute_dtype(p, args.compute)).removeprefix('torch.')}"
                         for p in args.precisions.split(","))
    print(f"Qwen2-Audio-7B decoder shapes, {args.layers} layers built, context {args.context}, "
          f"{args.threads} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"lalm kernels {paths}, "
          f"best of {args.rounds} rounds x {args.repeat} steps; activations ({args.compute}): "
          f"{computes}")
    rows: list[tuple[str, float, float, float, list[Round], int, int]] = []
    bandwidth = 0.0
    reference = None
    for precision in args.precisions.split(","):
        timed, layer_bytes, head_bytes, t_reference, probed = time_precision(
            config, precision, args, args.reference and precision == "bf16",
            args.torch_kernels and precision in ("bf16", "int8"))
        rows += [(*row, layer_bytes, head_bytes) for row in timed]
        reference = reference if t_reference is None else t_reference
        bandwidth = max(bandwidth, probed)
    # the floor uses the best bandwidth seen in the whole run (load from other jobs only
    # lowers a probe, so the best is the machine's)
    print(f"read bandwidth {bandwidth / 1e9:.1f} GB/s (best probe of the run)")
    print(f"{'precision':9s} {'step':>8s} {'head':>8s} {'layer':>7s} {'floor l/h':>11s} "
          f"{'x floor':>7s} {'7B step':>8s} {'7B floor':>8s} {'x floor':>7s} {'tok/s':>6s} "
          f"{'paired med/min':>14s}")
    for precision, t_step, t_base, t_head, rounds, layer_bytes, head_bytes in rows:
        per_layer, step_7b, floor_7b = extrapolate(t_step, t_base, t_head, layer_bytes,
                                                   head_bytes, bandwidth, args.layers)
        floor_layer, floor_head = layer_bytes / bandwidth, head_bytes / bandwidth
        floor_step = args.layers * floor_layer + floor_head
        # each round's 7B step against its own probe (the same moment of the host)
        paired = sorted(step / floor for _, step, floor in (
            extrapolate(r.step, r.base, r.head, layer_bytes, head_bytes, r.bandwidth,
                        args.layers)
            for r in rounds))
        print(f"{precision:9s} {t_step * 1e3:6.0f}ms {t_head * 1e3:6.0f}ms "
              f"{per_layer * 1e3:5.0f}ms {floor_layer * 1e3:4.0f}/{floor_head * 1e3:4.0f}ms "
              f"{t_step / floor_step:6.2f}x {step_7b:7.2f}s {floor_7b:7.2f}s "
              f"{step_7b / floor_7b:6.2f}x {1 / step_7b:6.2f} "
              f"{statistics.median(paired):5.2f}x/{paired[0]:.2f}x   (layer "
              f"{per_layer / floor_layer:.2f}x, head {t_head / floor_head:.2f}x floor; the rest "
              f"of a step {t_base * 1e3:.1f} ms; "
              f"{(REAL_LAYERS * layer_bytes + head_bytes) / 1e9:.2f} GB per 7B step)")
        if precision == "bf16" and reference is not None:
            print(f"{'  transformers':9s} {reference * 1e3:6.0f}ms step = "
                  f"{reference / floor_step:.2f}x floor; lalm bf16 is {reference / t_step:.2f}x "
                  f"faster")


if __name__ == "__main__":
    main()
