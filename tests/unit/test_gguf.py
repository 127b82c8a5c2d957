"""`lalm.checkpoint.gguf` on tiny GGUF files written here with the gguf package's own writer.

The files hold random Llama / Qwen2 weights (F32 and Q8_0), a byte-level BPE of 256 byte
tokens + one merge, ChatML specials and a chat template. Checked: the key map (q/k rows back in
transformers' order for llama, not for qwen2), dequantization equal to the package's, tied
embeddings, the config, the tokenizer with the audio tokens appended, and the typed errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lalm.checkpoint.gguf import read_gguf, save_tokenizer
from lalm.errors import CheckpointError, TokenizerError
from lalm.tokenizer import Tokenizer

gguf = pytest.importorskip("gguf")

DIM, HEADS, KV_HEADS, LAYERS, FFN = 64, 4, 2, 2, 256  # FFN: one K-quant block per row
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_tokens() -> list[str]:
    """GPT-2's byte -> printable character table (the strings byte-level BPE vocabularies hold)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _to_llama_cpp_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter order: each head's rows (half, i) -> (i, half)."""
    half = weight.shape[0] // n_head // 2
    return weight.reshape(n_head, 2, half, -1).swapaxes(1, 2).reshape(weight.shape)


#: Byte offsets of the float16 scales in one block of each K-quant type (ggml's block
#: layouts: Q4_K / Q5_K start with d and dmin, Q6_K ends with d).
_K_QUANT_F16_OFFSETS = {"Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}


def k_quant_blocks(rows: int, cols: int, kind: str, seed: int) -> np.ndarray:
    """Random K-quant bytes [rows, cols / 256 * block bytes] with finite, small scales (the gguf
    package cannot quantize K types; it can dequantize them)."""
    qtype = gguf.GGMLQuantizationType[kind]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.random.default_rng(seed).integers(0, 256, (rows, cols // block, size), np.uint8)
    for offset in _K_QUANT_F16_OFFSETS[kind]:
        raw[..., offset:offset + 2] = np.array([0.01], np.float16).view(np.uint8)
    return raw.reshape(rows, -1)


def _store(stored: np.ndarray, kind: str, seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    """(bytes or array to write, its dequantized float32 values, the raw dtype or None)."""
    qtype = gguf.GGMLQuantizationType[kind]
    if kind in _K_QUANT_F16_OFFSETS:
        data = k_quant_blocks(*stored.shape, kind, seed)
    elif kind == "F32":
        return stored, stored, None
    else:
        data = gguf.quants.quantize(stored, qtype)
    return data, gguf.quants.dequantize(data, qtype), qtype


def write_tiny(path: Path, arch: str = "llama", drop: str | None = None,
               pre: str = "smollm", down: str = "F32") -> dict[str, np.ndarray]:
    """A tiny GGUF LLM file; returns its weights in transformers' row order (GGUF names).

    ``ffn_up`` is stored as Q8_0 and ``ffn_down`` as ``down`` (a GGML type name)."""
    rng = np.random.default_rng(0)
    tokens = [*SPECIALS, *_byte_tokens(), "he"]
    vocab = len(tokens)
    hd = 32 if arch == "qwen3" else DIM // HEADS  # Qwen3: a head width of its own
    shapes = {"token_embd.weight": (vocab, DIM), "output_norm.weight": (DIM,)}
    for i in range(LAYERS):
        shapes |= {f"blk.{i}.attn_norm.weight": (DIM,), f"blk.{i}.ffn_norm.weight": (DIM,),
                   f"blk.{i}.attn_q.weight": (HEADS * hd, DIM),
                   f"blk.{i}.attn_k.weight": (KV_HEADS * hd, DIM),
                   f"blk.{i}.attn_v.weight": (KV_HEADS * hd, DIM),
                   f"blk.{i}.attn_output.weight": (DIM, HEADS * hd),
                   f"blk.{i}.ffn_gate.weight": (FFN, DIM),
                   f"blk.{i}.ffn_up.weight": (FFN, DIM), f"blk.{i}.ffn_down.weight": (DIM, FFN)}
        if arch == "qwen2":
            shapes |= {f"blk.{i}.attn_q.bias": (DIM,), f"blk.{i}.attn_k.bias": (KV_HEADS * hd,),
                       f"blk.{i}.attn_v.bias": (KV_HEADS * hd,)}
        if arch == "qwen3":
            shapes |= {f"blk.{i}.attn_q_norm.weight": (hd,), f"blk.{i}.attn_k_norm.weight": (hd,)}
    weights = {n: rng.standard_normal(s).astype(np.float32) * 0.1 for n, s in shapes.items()}
    for name in weights:  # norm weights near 1, as trained models have them
        if "norm" in name:
            weights[name] += 1.0
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(LAYERS)
    writer.add_context_length(256)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(FFN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(50000.0)
    if arch == "qwen3":
        writer.add_key_length(hd)
        writer.add_value_length(hd)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(SPECIALS) + [1] * (vocab - len(SPECIALS)))
    writer.add_token_merges(["h e"])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    for name, value in weights.items():
        if name == drop:
            continue
        stored = value
        if arch == "llama" and ".attn_q." in name and value.ndim == 2:
            stored = _to_llama_cpp_rows(value, HEADS)
        elif arch == "llama" and ".attn_k." in name and value.ndim == 2:
            stored = _to_llama_cpp_rows(value, KV_HEADS)
        kind = {"ffn_up.weight": "Q8_0", "ffn_down.weight": down}.get(name.split(".", 2)[-1],
                                                                       "F32")
        data, values, qtype = _store(stored, kind, seed=len(name))
        if qtype is not None:  # only ffn tensors are quantized here: never reordered
            weights[name] = values
        writer.add_tensor(name, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return weights


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_key_map_dequantization_and_config(tmp_path: Path, arch: str) -> None:
    weights = write_tiny(tmp_path / "m.gguf", arch)
    dec = read_gguf(tmp_path / "m.gguf")
    cfg = dec.config
    assert (cfg.dim, cfg.n_head, cfg.n_kv_head, cfg.n_layer, cfg.hidden_dim) == (
        DIM, HEADS, KV_HEADS, LAYERS, FFN)
    assert cfg.rope_theta == 50000.0 and cfg.norm_eps == pytest.approx(1e-6)
    assert cfg.qkv_bias is (arch == "qwen2") and cfg.vocab_size == 3 + 256 + 1
    assert cfg.qk_norm is (arch == "qwen3") and cfg.head_dim == (32 if arch == "qwen3" else 16)
    state = dec.state_dict
    for i in range(LAYERS):
        for gg, ours in (("attn_q", "attn.q"), ("attn_k", "attn.k"), ("ffn_up", "mlp.up"),
                         ("ffn_down", "mlp.down"), ("attn_output", "attn.o")):
            expected = torch.from_numpy(np.asarray(weights[f"blk.{i}.{gg}.weight"]))
            assert torch.equal(state[f"decoder.layers.{i}.{ours}.weight"], expected), gg
        if arch == "qwen2":
            assert torch.equal(state[f"decoder.layers.{i}.attn.k.bias"],
                               torch.from_numpy(weights[f"blk.{i}.attn_k.bias"]))
    # no output.weight in the file: the LM head is the embedding (tied), as an untied copy
    assert torch.equal(state["decoder.lm_head.weight"], state["decoder.embed.weight"])


@pytest.mark.parametrize("kind", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q5_K",
                                  "Q6_K"])
def test_every_tensor_type_is_dequantized(tmp_path: Path, kind: str) -> None:
    weights = write_tiny(tmp_path / "m.gguf", down=kind)
    state = read_gguf(tmp_path / "m.gguf").state_dict
    got = state["decoder.layers.1.mlp.down.weight"]
    assert got.dtype == torch.float32 and got.shape == (DIM, FFN)
    assert torch.equal(got, torch.from_numpy(np.asarray(weights["blk.1.ffn_down.weight"])))
    assert got.isfinite().all() and got.abs().max() > 0


def test_tokenizer_from_metadata(tmp_path: Path) -> None:
    write_tiny(tmp_path / "m.gguf")
    dec = read_gguf(tmp_path / "m.gguf")
    save_tokenizer(dec, tmp_path / "tok")
    tok = Tokenizer.from_hf(tmp_path / "tok")
    ids = tok.encode("<|im_start|>he h7")  # byte b has id 3 + b; the merge "he" id 259
    assert ids == [1, 259, 3 + ord(" "), 3 + ord("h"), 3 + ord("7")]
    assert tok.decode(ids) == "<|im_start|>he h7"
    assert [tok.audio_pad_id, tok.token_id("<|audio_bos|>"), tok.token_id("<|audio_eos|>")] == [
        260, 261, 262]
    assert (tok.eod_id, tok.im_start_id, tok.im_end_id) == (0, 1, 2)
    assert dec.tokenizer_config["bos_token"] == "<|im_start|>"
    assert dec.tokenizer_config["eos_token"] == "<|im_end|>"
    assert "chat_template" in dec.tokenizer_config


def test_unknown_architecture_is_a_typed_error(tmp_path: Path) -> None:
    write_tiny(tmp_path / "m.gguf", arch="gpt2")
    with pytest.raises(CheckpointError, match="'gpt2' is not supported"):
        read_gguf(tmp_path / "m.gguf")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_transformers_gguf_loading(tmp_path: Path, arch: str) -> None:
    """Tiny random files: lalm's decoder (bias / q-k norm / head width switches) against
    transformers' own GGUF loader and its Llama / Qwen2 / Qwen3 classes, fp32."""
    transformers = pytest.importorskip("transformers")
    from lalm.model.decoder import TextDecoder

    write_tiny(tmp_path / "m.gguf", arch)
    dec = read_gguf(tmp_path / "m.gguf")
    ours = TextDecoder(dec.config).eval()
    ours.load_state_dict({k.removeprefix("decoder."): v for k, v in dec.state_dict.items()})
    # transformers' GGUF config mapping ignores qwen3.attention.key_length: pass the head width
    extra = {"head_dim": 32} if arch == "qwen3" else {}
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file="m.gguf", dtype=torch.float32, **extra).eval()
    assert ref.config.model_type == arch
    ids = torch.randint(0, 260, (2, 12), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(12).expand(2, -1)
    with torch.no_grad():
        got = ours(ours.embed(ids), pos)
        want = ref(ids).logits.float()
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
    assert got[0].argmax(-1).unique().numel() > 2  # not one token everywhere


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    write_tiny(tmp_path / "m.gguf", drop="blk.1.ffn_down.weight")
    with pytest.raises(CheckpointError, match=r"blk\.1\.ffn_down\.weight"):
        read_gguf(tmp_path / "m.gguf")


def test_unknown_pre_tokenizer_is_a_typed_error(tmp_path: Path) -> None:
    write_tiny(tmp_path / "m.gguf", pre="made-up")
    with pytest.raises(TokenizerError, match="'made-up'"):
        read_gguf(tmp_path / "m.gguf")


def test_not_a_gguf_file(tmp_path: Path) -> None:
    (tmp_path / "m.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(CheckpointError, match="m.gguf"):
        read_gguf(tmp_path / "m.gguf")


def test_cli_from_parts_writes_a_chat_ready_checkpoint(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from lalm.api import load_model
    from lalm.checkpoint.hf_json import read_json
    from lalm.cli import main
    from tests.unit.test_whisper_convert import TINY, random_whisper_state, write_ct2_whisper

    weights = write_tiny(tmp_path / "m.gguf")
    write_ct2_whisper(tmp_path / "whisper", random_whisper_state(TINY), TINY)
    out = tmp_path / "model"
    argv = ["from-parts", "--encoder", str(tmp_path / "whisper"), "--decoder",
            str(tmp_path / "m.gguf"), str(out)]
    assert main(argv) == 0 and "wrote" in capsys.readouterr().out
    pipe = load_model(out)
    cfg = pipe.model.config
    assert cfg.encoder == TINY and not cfg.decoder.qkv_bias and cfg.decoder.vocab_size == 263
    embed = pipe.model.decoder.embed.weight
    assert torch.equal(embed[:260], torch.from_numpy(weights["token_embd.weight"]))
    assert torch.allclose(embed[260:], embed[:260].mean(0).expand(3, -1))  # the audio rows
    hf = read_json(out / "config.json")
    assert hf["text_config"]["model_type"] == "llama" and hf["audio_token_index"] == 260
    assert {p.name for p in out.iterdir()} >= {"tokenizer.json", "tokenizer_config.json",
                                               "generation_config.json",
                                               "preprocessor_config.json"}
    assert len(pipe.chat("he", max_new_tokens=2).tokens) <= 2
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(out)
    assert processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>") == 260
    assert processor.tokenizer("<|im_start|>he h7")["input_ids"] == pipe.tokenizer.encode(
        "<|im_start|>he h7")
    assert processor.feature_extractor.feature_size == TINY.n_mels
    # errors name the input
    assert main([*argv[:4], str(tmp_path / "absent.gguf"), str(tmp_path / "x")]) == 2
    assert "absent.gguf" in capsys.readouterr().err


def qwen3_text(hf: dict) -> tuple[str, int]:
    return hf["text_config"]["model_type"], hf["text_config"]["head_dim"]


def test_bias_free_decoder_round_trips_as_a_llama_text_config() -> None:
    from lalm.checkpoint import qwen2_audio
    from lalm.config import ModelConfig

    config = ModelConfig.from_name("tiny-random", decoder={"qkv_bias": False})
    hf = qwen2_audio.config_to_hf(config)
    assert hf["text_config"]["model_type"] == "llama"
    assert hf["text_config"]["attention_bias"] is False
    assert qwen2_audio.config_from_hf(hf) == config
    qwen2 = ModelConfig.from_name("tiny-random")
    assert qwen2_audio.config_to_hf(qwen2)["text_config"]["model_type"] == "qwen2"
    assert qwen2_audio.config_from_hf(qwen2_audio.config_to_hf(qwen2)) == qwen2
    qwen3 = ModelConfig.from_name("tiny-random", decoder={"qkv_bias": False, "qk_norm": True,
                                                          "head_width": 32})
    assert qwen3_text(qwen2_audio.config_to_hf(qwen3)) == ("qwen3", 32)
    assert qwen2_audio.config_from_hf(qwen2_audio.config_to_hf(qwen3)) == qwen3
    from lalm.checkpoint import qwen_audio_v1

    with pytest.raises(CheckpointError, match="qk_norm"):  # v1 has no such switch
        qwen_audio_v1.config_to_hf(ModelConfig.from_name(
            "tiny-random-v1", decoder={"qk_norm": True}))
    hf["text_config"]["attention_bias"] = True  # Llama's switch biases o_proj too
    with pytest.raises(CheckpointError, match="attention_bias"):
        qwen2_audio.config_from_hf(hf)
    hf["text_config"]["model_type"] = "mistral"
    with pytest.raises(CheckpointError, match="mistral"):
        qwen2_audio.config_from_hf(hf)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_from_parts_checkpoint_matches_transformers_qwen2_audio(tmp_path: Path, arch: str) -> None:
    """The folder `build_from_parts` writes loads in transformers' Qwen2-Audio class (its text
    model a Llama / Qwen3) and computes lalm's logits there."""
    transformers = pytest.importorskip("transformers")
    from lalm.checkpoint.gguf import build_from_parts
    from lalm.checkpoint.load import load_model
    from tests.unit.test_whisper_convert import TINY, random_whisper_state, write_ct2_whisper

    write_tiny(tmp_path / "m.gguf", arch)
    write_ct2_whisper(tmp_path / "whisper", random_whisper_state(TINY), TINY)
    build_from_parts(tmp_path / "whisper", tmp_path / "m.gguf", tmp_path / "model")
    ours = load_model(tmp_path / "model").decoder.eval()
    ref = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
        str(tmp_path / "model"), dtype=torch.float32).eval()
    assert ref.config.text_config.model_type == arch
    ids = torch.randint(0, 263, (1, 10), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = ours(ours.embed(ids), torch.arange(10)[None])
        want = ref(input_ids=ids).logits.float()
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
