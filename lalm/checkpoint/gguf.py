"""GGUF LLM files (llama.cpp's format) -> a lalm decoder and a Hugging Face tokenizer.

A GGUF file holds one decoder LLM: metadata (architecture, sizes, the BPE vocabulary and merges,
special ids, chat template) and tensors in llama.cpp's names, each stored as F32, F16, BF16 or a
block-quantized type (Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K, ...). The `gguf` package (the optional
``lalm[gguf]`` extra) reads the file and dequantizes every tensor to float32; `GGUF_KEYS` (data)
renames the tensors to lalm's decoder names.

Architectures: ``llama`` (no q/k/v bias; llama.cpp's converter stores q and k with each head's
rotary halves interleaved, which `_unpermute_heads` undoes), ``qwen2`` (q/k/v bias, stored as
transformers has them) and ``qwen3`` (no bias, q/k RMSNorm, a head width of its own). A file
without ``output.weight`` ties the LM head to the embedding; lalm keeps an untied copy (the
same values).

Entry points: `read_gguf(path)` -> `GGUFDecoder` (config, state dict in lalm's names, tokenizer);
`build_from_parts(encoder, gguf, out)` writes a Qwen2-Audio checkpoint whose text decoder is the
GGUF's, with a real Whisper encoder and a fresh projector.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lalm.checkpoint.keymap import KeyMap
from lalm.config import DecoderConfig
from lalm.errors import CheckpointError, TokenizerError
from lalm.prompt import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    QWEN2_AUDIO_BOS,
    QWEN2_AUDIO_EOS,
    QWEN2_AUDIO_TOKEN,
)
from lalm.tokenizer import QWEN_PATTERN

ARCHITECTURES = ("llama", "qwen2", "qwen3")

#: GGUF tensor name -> lalm decoder name; `{}` is the block index.
GGUF_KEYS: dict[str, str] = {
    "token_embd.weight": "decoder.embed.weight",
    "output_norm.weight": "decoder.norm.weight",
    "output.weight": "decoder.lm_head.weight",
    "blk.{}.attn_norm.weight": "decoder.layers.{}.attn_norm.weight",
    "blk.{}.attn_q.weight": "decoder.layers.{}.attn.q.weight",
    "blk.{}.attn_q.bias": "decoder.layers.{}.attn.q.bias",
    "blk.{}.attn_k.weight": "decoder.layers.{}.attn.k.weight",
    "blk.{}.attn_k.bias": "decoder.layers.{}.attn.k.bias",
    "blk.{}.attn_v.weight": "decoder.layers.{}.attn.v.weight",
    "blk.{}.attn_v.bias": "decoder.layers.{}.attn.v.bias",
    "blk.{}.attn_output.weight": "decoder.layers.{}.attn.o.weight",
    "blk.{}.attn_q_norm.weight": "decoder.layers.{}.attn.q_norm.weight",
    "blk.{}.attn_k_norm.weight": "decoder.layers.{}.attn.k_norm.weight",
    "blk.{}.ffn_norm.weight": "decoder.layers.{}.mlp_norm.weight",
    "blk.{}.ffn_gate.weight": "decoder.layers.{}.mlp.gate.weight",
    "blk.{}.ffn_up.weight": "decoder.layers.{}.mlp.up.weight",
    "blk.{}.ffn_down.weight": "decoder.layers.{}.mlp.down.weight",
}
GGUF_KEY_MAP = KeyMap(GGUF_KEYS, "GGUF")

#: The text split before byte-level BPE, by the file's ``tokenizer.ggml.pre`` (llama.cpp's
#: pre-tokenizer names); None: GPT-2's own byte-level split.
PRE_TOKENIZER_SPLITS: dict[str, str | None] = {
    "gpt2": None,
    "default": None,
    "smollm": None,  # plus single digits (`_pre_tokenizer`)
    "qwen2": QWEN_PATTERN,
    "llama-bpe": (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
        r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
}
_SPLIT_DIGITS = ("smollm",)
_CONTROL_TOKEN = 3  # llama.cpp token type: a special (control) token
#: The tokens lalm's Qwen2-Audio prompt format needs, added after the file's vocabulary.
AUDIO_TOKENS = (QWEN2_AUDIO_TOKEN, QWEN2_AUDIO_BOS, QWEN2_AUDIO_EOS)  # Qwen2-Audio's order
_CHAT_TOKENS = (ENDOFTEXT, IM_START, IM_END)


@dataclass
class GGUFDecoder:
    """A decoder LLM read from a GGUF file.

    Attributes:
        config: lalm's decoder config (vocab_size = the file's vocabulary rows).
        state_dict: lalm names (``decoder.*``) -> float32 tensors.
        tokenizer: a ``tokenizers.Tokenizer`` with the file's BPE and special tokens.
        tokenizer_config: transformers' ``tokenizer_config.json`` fields (specials, template).
        architecture: ``general.architecture``.
    """

    config: DecoderConfig
    state_dict: dict[str, Tensor]
    tokenizer: Any
    tokenizer_config: dict[str, Any]
    architecture: str


def _gguf_module() -> Any:
    try:
        import gguf
    except ImportError as e:
        raise CheckpointError("reading GGUF files needs the gguf package: "
                              "pip install 'lalm[gguf]'") from e
    return gguf


def _field(reader: Any, key: str, path: Path, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise CheckpointError(f"{path}: GGUF metadata has no {key!r}")
        return default
    return field.contents()


def _unpermute_heads(weight: Tensor, n_head: int) -> Tensor:
    """Put q/k rows stored by llama.cpp's converter back in transformers' order.

    llama.cpp's converter reorders each head's rows from (half, i) to (i, half) so that its
    rotary kernel rotates adjacent pairs; lalm (like transformers) rotates the two halves.

    Args:
        weight: [n_head * head_dim, ...] rows as stored in the GGUF file.
        n_head: heads the rows hold (query heads for q, key/value heads for k).

    Returns:
        The same shape, rows in transformers' order.
    """
    half = weight.shape[0] // n_head // 2
    return (weight.reshape(n_head, half, 2, *weight.shape[1:]).transpose(1, 2)
            .reshape(weight.shape))


def _decoder_config(reader: Any, arch: str, path: Path, vocab_rows: int) -> DecoderConfig:
    def meta(name: str, default: Any = ...) -> Any:
        return _field(reader, f"{arch}.{name}", path, default)

    dim, n_head = int(meta("embedding_length")), int(meta("attention.head_count"))
    scaling = meta("rope.scaling.type", "none")
    head_dim = int(meta("attention.key_length", dim // n_head))
    unsupported = {f"{arch}.rope.scaling.type={scaling}": scaling not in ("none", ""),
                   f"{arch}.attention.value_length": meta("attention.value_length",
                                                          head_dim) != head_dim,
                   f"{arch}.rope.dimension_count (partial rotary)": meta(
                       "rope.dimension_count", head_dim) != head_dim}
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise CheckpointError(f"{path}: GGUF settings lalm's decoder does not implement: {bad}")
    try:
        return DecoderConfig(
            vocab_size=vocab_rows, dim=dim, n_layer=int(meta("block_count")), n_head=n_head,
            n_kv_head=int(meta("attention.head_count_kv", n_head)),
            hidden_dim=int(meta("feed_forward_length")),
            norm_eps=float(meta("attention.layer_norm_rms_epsilon")),
            rope_theta=float(meta("rope.freq_base", 10000.0)),
            max_seq_len=int(meta("context_length")), qkv_bias=arch == "qwen2",
            qk_norm=arch == "qwen3", head_width=None if head_dim * n_head == dim else head_dim,
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from e


def _tensors(reader: Any, gguf: Any, path: Path) -> dict[str, Tensor]:
    """Every tensor of the file dequantized: GGUF name -> float32 [rows, cols] (torch order)."""
    out = {}
    for t in reader.tensors:
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise CheckpointError(f"{path}: tensor {t.name} has type {t.tensor_type.name}, "
                                  f"which the gguf package cannot dequantize") from e
        shape = [int(n) for n in reversed(t.shape)]  # GGUF lists the fastest dimension first
        out[t.name] = torch.from_numpy(np.array(values, np.float32).reshape(shape))
    return out


def read_gguf(path: str | Path) -> GGUFDecoder:
    """Read a GGUF LLM file into lalm's decoder names, dequantized to float32.

    Args:
        path: the ``.gguf`` file.

    Returns:
        The decoder config, its weights and the file's tokenizer.

    Raises:
        CheckpointError: not a GGUF file, an architecture lalm does not implement (named),
            unsupported settings (named), a tensor missing or unknown (named), a tensor type
            the gguf package cannot dequantize; no gguf package installed.
        TokenizerError: a vocabulary that is not byte-level BPE or lacks ChatML's tokens.
    """
    gguf = _gguf_module()
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable GGUF file ({e})") from e
    arch = str(_field(reader, "general.architecture", path))
    if arch not in ARCHITECTURES:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported; "
                              f"supported: {', '.join(ARCHITECTURES)}")
    raw = _tensors(reader, gguf, path)
    if "token_embd.weight" not in raw:
        raise CheckpointError(f"{path}: GGUF file has no tensor 'token_embd.weight'")
    config = _decoder_config(reader, arch, path, raw["token_embd.weight"].shape[0])
    raw.setdefault("output.weight", raw["token_embd.weight"])  # tied embeddings: an untied copy
    try:
        state = GGUF_KEY_MAP.convert(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from e
    if arch == "llama":
        for i in range(config.n_layer):
            for name, heads in (("q", config.n_head), ("k", config.n_kv_head)):
                key = f"decoder.layers.{i}.attn.{name}.weight"
                if key in state:
                    state[key] = _unpermute_heads(state[key], heads)
    expected = _expected_keys(config)
    missing = list(GGUF_KEY_MAP.convert({k: None for k in expected if k not in state},
                                        inverse=True))
    if missing:
        raise CheckpointError(f"{path}: GGUF file lacks tensors {missing[:10]} "
                              f"({len(missing)} missing)")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise CheckpointError(f"{path}: GGUF tensors {extra[:10]} do not fit a {arch} decoder")
    tokenizer, tokenizer_config = _tokenizer(reader, path)
    return GGUFDecoder(config, state, tokenizer, tokenizer_config, arch)


def _expected_keys(config: DecoderConfig) -> list[str]:
    from lalm.model.decoder import TextDecoder

    with torch.device("meta"):
        decoder = TextDecoder(config)
    return [f"decoder.{name}" for name in decoder.state_dict()]


def _pre_tokenizer(pre: str, path: Path) -> Any:
    from tokenizers import Regex, pre_tokenizers

    if pre not in PRE_TOKENIZER_SPLITS:
        raise TokenizerError(f"{path}: GGUF pre-tokenizer {pre!r} is not supported; "
                             f"supported: {', '.join(PRE_TOKENIZER_SPLITS)}")
    split = PRE_TOKENIZER_SPLITS[pre]
    steps = [pre_tokenizers.Digits(individual_digits=True)] if pre in _SPLIT_DIGITS else []
    if split is None:
        steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    else:
        steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                  pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    return pre_tokenizers.Sequence(steps)


def _tokenizer(reader: Any, path: Path) -> tuple[Any, dict[str, Any]]:
    """The file's byte-level BPE as a ``tokenizers.Tokenizer`` plus tokenizer_config fields."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    model = _field(reader, "tokenizer.ggml.model", path)
    if model != "gpt2":
        raise TokenizerError(f"{path}: GGUF tokenizer model {model!r} is not supported "
                             f"(only byte-level BPE, 'gpt2')")
    tokens = list(_field(reader, "tokenizer.ggml.tokens", path))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", path)]
    types = list(_field(reader, "tokenizer.ggml.token_type", path, [1] * len(tokens)))
    missing = [t for t in _CHAT_TOKENS if t not in tokens]
    if missing:
        raise TokenizerError(f"{path}: the GGUF vocabulary lacks {missing}, which lalm's "
                             f"ChatML prompt format needs")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = _pre_tokenizer(str(_field(reader, "tokenizer.ggml.pre", path,
                                                  "default")), path)
    tok.decoder = decoders.ByteLevel()
    specials = [t for t, kind in zip(tokens, types) if kind == _CONTROL_TOKEN]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in AUDIO_TOKENS])
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast",
                              "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
    for role in ("bos", "eos", "pad", "unk"):
        key = "padding" if role == "pad" else ("unknown" if role == "unk" else role)
        index = _field(reader, f"tokenizer.ggml.{key}_token_id", path, None)
        if index is not None:
            config[f"{role}_token"] = tokens[int(index)]
    template = _field(reader, "tokenizer.chat_template", path, None)
    if template:
        config["chat_template"] = str(template)
    return tok, config


def save_tokenizer(decoder: GGUFDecoder, directory: str | Path) -> list[Path]:
    """Write the GGUF's tokenizer as Hugging Face files: tokenizer.json, tokenizer_config.json.

    Returns:
        The two files.
    """
    from lalm.checkpoint.safetensors_io import write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_json = directory / "tokenizer.json"
    partial = directory / "tokenizer.json.partial"
    decoder.tokenizer.save(str(partial))
    partial.replace(tokenizer_json)
    config_json = directory / "tokenizer_config.json"
    write_json(config_json, decoder.tokenizer_config)
    return [tokenizer_json, config_json]


def build_from_parts(
    encoder_path: str | Path,
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    init_std: float = 0.02,
    dtype: torch.dtype | None = None,
) -> list[Path]:
    """Write an audio-language model from real parts: a Whisper encoder and a GGUF decoder LLM.

    The result is a Qwen2-Audio checkpoint folder (text config ``llama`` or ``qwen2``) that
    `lalm.checkpoint.load.load_model`, ``lalm chat`` and transformers'
    ``Qwen2AudioForConditionalGeneration`` read: the encoder and ``ln_post`` from Whisper, the
    decoder from the GGUF file (dequantized), a fresh projector Linear (`whisper.init_fresh`),
    the GGUF's tokenizer plus ``<|AUDIO|>``, ``<|audio_bos|>``, ``<|audio_eos|>`` as new ids
    whose embedding and LM-head rows start as the mean of the file's rows.

    Args:
        encoder_path: Whisper checkpoint (any format `load_whisper_encoder` reads).
        gguf_path: the decoder's ``.gguf`` file.
        out_dir: destination folder.
        seed, init_std: of the projector's new weights.
        dtype: dtype written (default float32).

    Returns:
        The files written, config.json last.

    Raises:
        CheckpointError, TokenizerError: as `read_gguf` and `load_whisper_encoder`.
    """
    from lalm.checkpoint.save import save_with_tokenizer
    from lalm.checkpoint.whisper import init_fresh, load_whisper_encoder
    from lalm.config import ModelConfig, ProjectorConfig
    from lalm.model import AudioLanguageModel

    decoder = read_gguf(gguf_path)
    weights = load_whisper_encoder(encoder_path)
    rows = decoder.tokenizer.get_vocab_size(with_added_tokens=True)
    config = ModelConfig(encoder=weights.config, projector=ProjectorConfig(),
                         decoder=replace(decoder.config, vocab_size=rows))
    with torch.device("meta"):
        model = AudioLanguageModel(config)
    model.to_empty(device="cpu")
    init_fresh(list(model.projector.named_parameters(prefix="projector")), seed, init_std)
    state = dict(decoder.state_dict)
    for key in ("decoder.embed.weight", "decoder.lm_head.weight"):
        table = state[key]
        state[key] = torch.cat([table, table.mean(dim=0, keepdim=True).expand(
            rows - table.shape[0], -1)])
    model.load_state_dict({**weights.state_dict, **state}, strict=False)
    missing = {k for k in model.state_dict() if not k.startswith("projector.proj.")} - set(
        weights.state_dict) - set(state)
    if missing:  # a bug here, not bad input: every non-projector weight comes from a file
        raise CheckpointError(f"parts leave weights unset: {sorted(missing)[:5]}")
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        save_tokenizer(decoder, tokenizer_dir)
        return save_with_tokenizer(model, out_dir, tokenizer_dir, "qwen2_audio",
                                   dtype or torch.float32)
