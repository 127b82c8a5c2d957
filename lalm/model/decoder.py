"""Qwen-style decoder LLM (Qwen2, Qwen v1, Llama, Qwen3 share it): RMSNorm, RoPE, SwiGLU, GQA.

Inference protocol (gpt-fast style, extended for left-padded batches):

    decoder.setup_caches(batch_size, max_seq_len)
    logits = decoder(embeds, input_pos, token_mask, output="last_logits")   # prefill
    logits = decoder(next_embeds, next_pos, output="last_logits")           # each decode step

`input_pos` holds per-row RoPE positions (a left-padded row's first real token has position 0),
`token_mask` marks real tokens; the cache records it so later steps never attend to pads.
Shape alphabet: B batch, S positions, K keys, D width, V vocab, H heads.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from lalm import kernels
from lalm.config import DecoderConfig
from lalm.model.kv_cache import KVCache
from lalm.model.layers import (
    RMSNorm,
    SwiGLU,
    apply_rope,
    attention_mask,
    logn_scale,
    mrope_cos_sin,
    ntk_alpha,
    ntk_rope_base,
    project,
    rope_cos_sin,
    rope_inv_freq,
)
from lalm.model.lora import AdapterGate
from lalm.model.upcast import StreamLinear, UpcastLinear, stream_bf16

DecoderOutput = Literal["logits", "last_logits", "hidden"]


def positions_from_mask(token_mask: Tensor) -> Tensor:
    """Per-row RoPE positions for a padded batch: real tokens count 0, 1, 2, ... in each row.

    Works for left and right padding; pad tokens get the position of the previous real token
    (or 0), which is harmless because pads are never attended to.

    Args:
        token_mask: [B, S] bool, True for real tokens.

    Returns:
        [B, S] int64.
    """
    return (token_mask.long().cumsum(dim=1) - 1).clamp(min=0)


def positions_from_segments(segment_ids: Tensor, token_mask: Tensor) -> Tensor:
    """Per-row RoPE positions of packed rows: real tokens count 0, 1, 2, ... in each segment.

    Args:
        segment_ids: [B, S] int64; a segment is a run of equal ids.
        token_mask: [B, S] bool, True for real tokens.

    Returns:
        [B, S] int64 (pads as in `positions_from_mask`).
    """
    real = token_mask.long()
    count = real.cumsum(dim=1)  # real tokens up to and including each position
    first = torch.ones_like(token_mask)
    first[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    before = torch.where(first, count - real, 0).cummax(dim=1).values  # real tokens before it
    return (count - 1 - before).clamp(min=0)


def _product_operands(linear: nn.Module) -> tuple[Tensor, Tensor | None, Tensor | None] | None:
    """(weight, scales, bias) of a Linear whose product `lalm.kernels.DecodeLayers` runs: an
    int8 layer on lalm's kernel (`kernel_operands`: the same product), a bf16 `StreamLinear`
    on the CPU (the same `bf16_linear`), or a float32 `nn.Linear` on the CPU in the decode
    layout (`TextDecoder.use_decode_layout`; lalm's `f32_linear` where the module's is MKL's:
    the same sums in another order); else None. Scales are int8's only."""
    operands = getattr(linear, "kernel_operands", None)
    if operands is not None:
        return operands()
    weight = getattr(linear, "weight", None)
    if (not isinstance(weight, Tensor) or weight.device.type != "cpu" or weight.ndim != 2
            or linear._forward_hooks or linear._forward_pre_hooks or "forward" in linear.__dict__):
        return None
    streams = type(linear) is StreamLinear and weight.dtype == torch.bfloat16
    if (streams and weight.is_contiguous()) or (
            type(linear) in (nn.Linear, UpcastLinear, StreamLinear)
            and weight.dtype == torch.float32 and weight.stride() == (1, weight.shape[0])):
        return weight, None, linear.bias
    return None


class Attention(nn.Module):
    """Causal self-attention with RoPE, q/k/v bias (switch), no o bias, grouped key/value heads,
    optional q/k RMSNorm (Qwen3)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.n_kv_head
        self.head_dim = config.head_dim
        q_dim, kv_dim = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
        self.q = nn.Linear(config.dim, q_dim, bias=config.qkv_bias)
        self.k = nn.Linear(config.dim, kv_dim, bias=config.qkv_bias)
        self.v = nn.Linear(config.dim, kv_dim, bias=config.qkv_bias)
        self.o = nn.Linear(q_dim, config.dim, bias=False)
        # Qwen3: each head's query and key RMS-normed (one weight per head width) before RoPE
        self.q_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(config.head_dim, config.norm_eps) if config.qk_norm else None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        q_scale: Tensor | None,
        cache: KVCache | None,
        layer: int,
    ) -> Tensor:
        """One attention sub-layer.

        Args:
            x: [B, S, D] normed hidden states.
            cos, sin: [B, 1, S, head_dim] RoPE tables.
            mask: [B, 1, S, K] bool, True = attend (K = S without cache, cached length with).
            q_scale: [B, 1, S, 1] float32 logn factors, or None.
            cache: the decoder's KV cache, or None to attend within `x` only.
            layer: this layer's index in the cache.

        Returns:
            [B, S, D].
        """
        batch, seq, _ = x.shape
        q, k, v = project(x, self.q, self.k, self.v)
        q = q.view(batch, seq, self.n_head, self.head_dim)
        k = k.view(batch, seq, self.n_kv_head, self.head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(batch, seq, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if q_scale is not None:
            q = q * q_scale.to(q.dtype)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H_kv, K, hd] including earlier tokens
        if cache is not None and kernels.attends(q, k, v, mask):  # a decode step on the CPU
            out = kernels.decode_attention(q, k, v, mask)  # the cache read as it streams
        else:
            # grouped heads read their shared key/value head in place (no repeat_interleave
            # copy); the result is bit-identical to attending over repeated heads
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=self.n_kv_head != self.n_head
            )  # [B, H, S, hd]
        return self.o(out.transpose(1, 2).reshape(batch, seq, -1))


class DecoderLayer(nn.Module):
    """Pre-norm block: x += attn(attn_norm(x)); x += mlp(mlp_norm(x))."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.hidden_dim)
        # set by lalm.model.lora.gate_adapters: the block's adapters act where adapter_mask says
        self.adapter_gate: AdapterGate | None = None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: Tensor,
        q_scale: Tensor | None,
        cache: KVCache | None,
        layer: int,
        adapter_mask: Tensor | None = None,
    ) -> Tensor:
        """x: [B, S, D] -> [B, S, D]; `adapter_mask` as in `TextDecoder.forward` (an argument,
        so a recomputed block, `lalm.training.build.enable_grad_checkpointing`, gets it too);
        other arguments as in `Attention.forward`."""
        gated = contextlib.nullcontext()
        if self.adapter_gate is not None and adapter_mask is not None:
            gated = self.adapter_gate.acting_on(adapter_mask)
        with gated:
            x = x + self.attn(self.attn_norm(x), cos, sin, mask, q_scale, cache, layer)
            return x + self.mlp(self.mlp_norm(x))


class TextDecoder(nn.Module):
    """Token embedding, decoder blocks, final RMSNorm and `lm_head` (untied unless
    `tie_embeddings`: then `lm_head.weight` is the embedding's Parameter, in memory and after
    `load_state_dict`, which gets both names with equal values)."""

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layer))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.lm_head = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight
            # loading (assign=True) gives each name its own Parameter: share them again
            self.register_load_state_dict_post_hook(lambda module, _keys: module.tie_weights())
        self.cache: KVCache | None = None
        # set by lalm.model.lora.gate_adapters: the blocks' adapters act where a forward's
        # adapter_mask says
        self.adapter_gate: AdapterGate | None = None

    def tie_weights(self) -> None:
        """Make `lm_head` use the embedding's weight (tied configs only)."""
        if self.config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def setup_caches(
        self,
        batch_size: int,
        max_seq_len: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """Preallocate a KV cache; later forwards read and extend it until `clear_caches`.

        The first call also re-lays the weights for few-row products (`use_decode_layout`).

        Args:
            batch_size: rows of every following forward.
            max_seq_len: columns to hold (prompt + new tokens); default `config.max_seq_len`.
            dtype: cache dtype; default the model's compute dtype (its norms': float32 for
                bf16 weights computed in float32, `lalm.model.upcast`).

        Returns:
            The new cache (also kept as `self.cache`).
        """
        self.use_decode_layout()
        weight = self.norm.weight
        self.cache = KVCache(
            self.config.n_layer,
            batch_size,
            self.config.n_kv_head,
            max_seq_len or self.config.max_seq_len,
            self.config.head_dim,
            dtype=dtype or weight.dtype,
            device=weight.device,
        )
        return self.cache

    def use_decode_layout(self) -> None:
        """Store every Linear weight of a float32 CPU decoder [in, out]-major in memory, and
        give a bf16 CPU decoder's Linear layers lalm's streaming bf16 product
        (`lalm.model.upcast.stream_bf16`: same weights and names; no-grad products only).

        Each weight keeps its shape [out, in], its values, its name and its Parameter object;
        only its strides change (to (1, out)), once. `F.linear` then hands MKL a plain
        [in, out] matrix instead of a transposed one, and the few-row products of decoding
        (B rows per step) leave MKL's slow transposed path: the lm_head product at B = 1..8
        ran 1.4-3x faster on the development CPU, prefill-sized products (hundreds of rows)
        as fast or faster (`bench/README.md`). Results equal the [out, in] layout's up to
        float32 summation order. Other devices and dtypes are left as they are. Saving is
        unaffected: the checkpoint writer stores contiguous copies.
        """
        stream_bf16(self)
        for module in self.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            if (weight.device.type != "cpu" or weight.dtype != torch.float32
                    or weight.stride() == (1, weight.shape[0])):
                continue
            # a plain tensor even when called under inference_mode: the model may train later
            with torch.inference_mode(False), torch.no_grad():
                weight.data = weight.detach().t().contiguous().t()

    def clear_caches(self) -> None:
        """Drop the KV cache: forwards attend within their own input again."""
        self.cache = None

    def rope_base(self, lengths: Tensor) -> Tensor:
        """[B] float32 RoPE base of rows whose prefill holds [B] int64 real ``lengths``
        tokens (dynamic NTK raises it past ``train_seq_len``; else ``rope_theta``)."""
        cfg = self.config
        if cfg.dynamic_ntk:
            alpha = ntk_alpha(lengths, cfg.train_seq_len)
        else:
            alpha = torch.ones(lengths.shape[0], dtype=torch.float64, device=lengths.device)
        return ntk_rope_base(cfg.rope_theta, alpha, cfg.head_dim)

    def _rope_base(self, lengths: Tensor) -> Tensor:
        """[B] float32 RoPE base per row; under dynamic NTK chosen from [B] lengths, once."""
        cache = self.cache
        if cache is not None and cache.rope_base is not None:
            return cache.rope_base
        base = self.rope_base(lengths)
        if cache is not None:
            cache.rope_base = base
        return base

    def decode_operands(self) -> list[dict[str, Tensor | None]] | None:
        """Every layer's operands for `lalm.kernels.DecodeLayers` (by its `LAYER_OPERANDS`
        names) where the layers are plain modules whose products it can run
        (`_product_operands`: int8 on lalm's kernel, bf16 streamed, float32 in the decode
        layout): no adapters, no hooks and no replaced forward anywhere in them (a fused step
        would pass them by) and one epsilon; else None. A property of the model, never of a
        batch."""
        if (self.adapter_gate is not None or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or not self.layers
                or any(cls.forward is not plain for cls, plain in _PLAIN_FORWARDS)):
            return None
        eps = self.layers[0].attn_norm.eps
        operands = []
        for layer in self.layers:
            attn, mlp = layer.attn, layer.mlp
            if (type(layer) is not DecoderLayer or type(attn) is not Attention
                    or type(mlp) is not SwiGLU or layer.adapter_gate is not None):
                return None
            found: dict[str, Tensor | None] = {}
            for name, linear in (("q", attn.q), ("k", attn.k), ("v", attn.v), ("o", attn.o),
                                 ("gate", mlp.gate), ("up", mlp.up), ("down", mlp.down)):
                product = _product_operands(linear)
                if product is None:
                    return None
                found[name], found[f"{name}_scales"], bias = product
                if name in ("q", "k", "v"):
                    found[f"{name}_bias"] = bias
                elif bias is not None:
                    return None
            norms = {"attn_norm": layer.attn_norm, "mlp_norm": layer.mlp_norm,
                     "q_norm": attn.q_norm, "k_norm": attn.k_norm}
            for name, norm in norms.items():
                if norm is not None and (type(norm) is not RMSNorm or norm.eps != eps):
                    return None
                found[name] = None if norm is None else norm.weight
            # the modules a layer's forward calls: none hooked or with a replaced forward (the
            # linears' own are checked by `_product_operands`; they have no children)
            for module in (layer, attn, mlp, *norms.values()):
                if module is not None and (module._forward_hooks or module._forward_pre_hooks
                                           or "forward" in module.__dict__):
                    return None
            operands.append(found)
        return operands

    def _decode_step(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor,
                     q_scale: Tensor | None) -> Tensor | None:
        """A decode step's layers in one call of lalm's kernels (`kernels.DecodeLayers`: the
        modules' bits, but float32 products' order) where the model's layers and the step's
        operands allow it (`decode_operands`, `DecodeLayers.fits`), writing the KV cache as
        the modules do; else None (the modules run). The layers' operands are gathered and
        checked once, then kept while they hold (`_DecodePlan`). x: [B, 1, D]; the rest as
        in `DecoderLayer.forward`."""
        cache = self.cache
        if (cache is None or x.device.type != "cpu" or torch.is_grad_enabled()
                or self.adapter_gate is not None or _module._global_forward_hooks
                or _module._global_forward_pre_hooks
                or any(cls.forward is not plain for cls, plain in _PLAIN_FORWARDS)
                or not kernels.available()):  # last: a GPU or training step builds nothing
            return None
        plan = _DECODE_PLANS.get(self)
        held = None if plan is None else plan.holds(self, x.dtype)
        if held is None:
            operands = self.decode_operands()
            plan = None if operands is None else _DecodePlan(self, operands, x.dtype)
            _DECODE_PLANS.pop(self, None)
            if plan is not None:
                _DECODE_PLANS[self] = plan
            held = operands
        # `held`: the plan's tensors, alive in this frame while the kernel reads them
        if plan is None or plan.kernel is None:
            return None
        start, stop = cache.rows
        step = (x, cos, sin, mask, cache.k[:, start:stop], cache.v[:, start:stop],
                cache.lengths[start:stop], q_scale)
        return plan.kernel(*step) if plan.kernel.fits(*step) else None

    def forward(
        self,
        embeds: Tensor,
        input_pos: Tensor,
        token_mask: Tensor | None = None,
        output: DecoderOutput = "logits",
        segment_ids: Tensor | None = None,
        adapter_mask: Tensor | None = None,
    ) -> Tensor:
        """Run the decoder over new positions (all of them, or the next ones after the cache).

        Args:
            embeds: [B, S, D] input embeddings (model dtype).
            input_pos: [B, S] int64 RoPE positions, per row; with `mrope_section` also
                [3, B, S] (time, height, width rows of M-RoPE; no segments then).
            token_mask: [B, S] bool, True for real tokens (False for padding); default all True.
            output: "logits" -> [B, S, V] float32; "last_logits" -> [B, V] float32 for the last
                column only (prefill/decode: avoids the B*S*V tensor); "hidden" -> [B, S, D]
                after the final norm.
            segment_ids: [B, S] int64 for packed rows (no KV cache): a token attends only to
                tokens of its own segment; `input_pos` restart at 0 in each segment. Under
                dynamic NTK every segment must be at most `train_seq_len` long (its alpha is
                then 1, as alone).
            adapter_mask: where gated adapters act (`adapter_gate`; needed with one, ignored
                without): [B] bool per row, or [B, S] per position (packed rows).

        Returns:
            See `output`.

        Raises:
            ValueError: mismatched shapes, a batch/length the KV cache cannot take, segments
                with a KV cache, a segment too long for dynamic NTK, or gated adapters
                without an adapter_mask.
        """
        batch, seq, dim = embeds.shape
        mrope_pos = None
        if self.config.mrope_section is not None and input_pos.shape == (3, batch, seq):
            mrope_pos, input_pos = input_pos, input_pos[0]  # row 0 (time) for the rest
        if dim != self.config.dim or input_pos.shape != (batch, seq):
            raise ValueError(
                f"decoder expects embeds [B, S, {self.config.dim}] and input_pos [B, S]; got "
                f"{tuple(embeds.shape)} and {tuple(input_pos.shape)}"
            )
        if token_mask is None:
            token_mask = torch.ones(batch, seq, dtype=torch.bool, device=embeds.device)
        cache = self.cache
        if cache is None:
            query_col, key_mask = torch.arange(seq, device=embeds.device), token_mask
        else:  # each row writes after its own filled columns
            query_col, key_mask = cache.query_columns(seq), cache.append_mask(token_mask)
        mask = attention_mask(query_col, key_mask)
        lengths = token_mask.sum(dim=1)
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("segment_ids (packed rows) need a forward without KV cache")
            mask = mask & (segment_ids[:, None, :, None] == segment_ids[:, None, None, :])
            lengths = input_pos.max(dim=1).values + 1  # the longest segment
            if self.config.dynamic_ntk and int(lengths.max()) > self.config.train_seq_len:
                raise ValueError(f"a packed segment of {int(lengths.max())} tokens is longer "
                                 f"than train_seq_len {self.config.train_seq_len}: dynamic NTK "
                                 f"would give it another RoPE base than it has alone")
        inv_freq = rope_inv_freq(self.config.head_dim, self._rope_base(lengths))
        if mrope_pos is not None and self.config.mrope_section is not None:
            if segment_ids is not None:
                raise ValueError("M-RoPE positions [3, B, S] do not combine with segment_ids")
            cos, sin = mrope_cos_sin(mrope_pos, inv_freq, self.config.mrope_section, embeds.dtype)
        else:
            cos, sin = rope_cos_sin(input_pos, inv_freq, embeds.dtype)
        q_scale = None
        if self.config.logn_attn:
            q_scale = logn_scale(input_pos, self.config.train_seq_len)

        if self.adapter_gate is not None and adapter_mask is None:
            raise ValueError("this decoder's LoRA adapters are gated: pass adapter_mask (the "
                             "rows, or positions, they act on)")
        fused = self._decode_step(embeds, cos, sin, mask, q_scale) if seq == 1 else None
        x = embeds if fused is None else fused
        if fused is None:
            for index, layer in enumerate(self.layers):
                x = layer(x, cos, sin, mask, q_scale, cache, index, adapter_mask)
        if cache is not None:
            cache.advance(seq)
        if output == "hidden":
            return self.norm(x)
        head = self.decode_head if fused is not None else self.lm_head
        if output == "last_logits":
            return head(self.norm(x[:, -1])).float()
        return head(self.norm(x)).float()

    def decode_head(self, x: Tensor) -> Tensor:
        """The `lm_head` as a fused decode step runs it: with lalm's kernels available, a
        float32 head in the decode layout through `kernels.f32_linear`, as the step's layers
        (`DecodeLayers`); any other head as it is (an int8 or bf16 head is lalm's kernel
        already). x: [..., D] -> [..., V]."""
        operands = _product_operands(self.lm_head)
        if (operands is None or operands[0].dtype != torch.float32 or torch.is_grad_enabled()
                or not kernels.available()):
            return self.lm_head(x)
        weight, _, bias = operands
        return kernels.f32_linear(x, weight, bias)


#: The forwards `TextDecoder.decode_operands` requires unchanged (a fused decode step stands
#: for them; one patched, e.g. by a test, keeps the modules' path).
_PLAIN_FORWARDS = ((DecoderLayer, DecoderLayer.forward), (Attention, Attention.forward),
                   (SwiGLU, SwiGLU.forward), (RMSNorm, RMSNorm.forward))


class _DecodePlan:
    """A decoder's layers as one call of lalm's kernels (`kernels.DecodeLayers`; `kernel`
    None where their operands do not fit it), kept with what it was made from, so that each
    step checks cheaply, by identity, that it still holds (`holds`) instead of gathering and
    checking the operands again: the same layer modules of the same types, none hooked or with
    a replaced forward, no adapter gate, the same epsilons, the same tensors at the same
    addresses. Weak references only: a plan keeps no replaced module or weight alive (`holds`
    hands back the tensors it found, for the caller to hold while the kernel reads them)."""

    #: Per parent module of a layer, the children a layer's forward calls.
    CHILDREN = (("", ("attn", "mlp", "attn_norm", "mlp_norm")),
                ("attn", ("q", "k", "v", "o", "q_norm", "k_norm")),
                ("mlp", ("gate", "up", "down")))
    #: The tensors of a layer's modules that the kernel reads.
    TENSORS = ("weight", "scales", "bias")

    def __init__(self, decoder: TextDecoder, operands: list[dict[str, Tensor | None]],
                 dtype: torch.dtype) -> None:
        cfg = decoder.config
        self.dtype = dtype
        self.layer_list = weakref.ref(decoder.layers)
        self.layers = tuple(weakref.ref(layer) for layer in decoder.layers)
        children, modules, tensors, eps = [], [], [], []
        for layer in decoder.layers:
            modules.append((weakref.ref(layer), type(layer)))
            for path, names in self.CHILDREN:
                parent = layer.get_submodule(path)
                for name in names:
                    child = parent._modules.get(name)
                    children.append((weakref.ref(parent), name,
                                     None if child is None else weakref.ref(child)))
                    if child is None:
                        continue
                    modules.append((weakref.ref(child), type(child)))
                    if isinstance(child, RMSNorm):
                        eps.append((weakref.ref(child), child.eps))
                    for attr in self.TENSORS:  # where each lives; an absent one stays absent
                        buffer = attr in child._buffers
                        tensor = (child._buffers if buffer else child._parameters).get(attr)
                        tensors.append((weakref.ref(child), buffer, attr,
                                        None if tensor is None else weakref.ref(tensor),
                                        0 if tensor is None else tensor.data_ptr()))
        self.children, self.modules = tuple(children), tuple(modules)
        self.tensors, self.eps = tuple(tensors), tuple(eps)
        try:
            self.kernel: kernels.DecodeLayers | None = kernels.DecodeLayers(
                operands, dtype, heads=cfg.n_head, kv_heads=cfg.n_kv_head,
                head_dim=cfg.head_dim, eps=decoder.layers[0].attn_norm.eps)
        except ValueError:
            self.kernel = None

    def holds(self, decoder: TextDecoder, dtype: torch.dtype) -> list[Tensor] | None:
        """The tensors the plan reads (to hold while the kernel runs) where `decoder`
        computing in `dtype` still has what this plan was made from; else None."""
        if (dtype != self.dtype or decoder.layers is not self.layer_list()
                or len(decoder.layers) != len(self.layers)):
            return None
        for module, ref in zip(decoder.layers, self.layers):
            if module is not ref() or module.adapter_gate is not None:
                return None
        for parent_ref, name, child in self.children:
            parent = parent_ref()
            if parent is None or parent._modules.get(name) is not (
                    None if child is None else child()):
                return None
        for ref, kind in self.modules:
            module = ref()
            if (type(module) is not kind or module._forward_hooks or module._forward_pre_hooks
                    or "forward" in module.__dict__):
                return None
        for ref, eps in self.eps:
            if ref().eps != eps:  # type: ignore[union-attr]  # alive: its parent holds it
                return None
        held = []
        for owner, buffer, attr, ref, pointer in self.tensors:
            module = owner()
            now = (module._buffers if buffer else module._parameters).get(  # type: ignore
                attr)
            if now is not (None if ref is None else ref()) or (
                    now is not None and now.data_ptr() != pointer):
                return None
            if now is not None:
                held.append(now)
        return held


#: Each decoder's `_DecodePlan`, made at its first fused step; kept outside the module (no
#: state dict, copy or pickle of a decoder carries it), dropped with the decoder.
_DECODE_PLANS: weakref.WeakKeyDictionary[TextDecoder, _DecodePlan] = weakref.WeakKeyDictionary()
