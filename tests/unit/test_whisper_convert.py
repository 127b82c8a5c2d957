"""Whisper converters: the CTranslate2 reader, the three key maps, and their error messages.

Semantics against the real engines (transformers' WhisperEncoder here, ctranslate2 in
tests/parity/test_whisper_ct2.py) prove that the maps name the right tensors; the round trips
prove that nothing is lost or renamed twice.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lalm.checkpoint.ctranslate2_format import CT2File, write_ct2_file
from lalm.checkpoint.load import load_model
from lalm.checkpoint.whisper import (
    CT2_KEY_MAP,
    CT2_KEYS,
    HF_KEY_MAP,
    HF_KEYS,
    OPENAI_KEY_MAP,
    OPENAI_KEYS,
    build_from_whisper,
    build_whisper_encoder,
    encoder_keys,
    load_whisper_encoder,
)
from lalm.config import DecoderConfig, EncoderConfig
from lalm.errors import CheckpointError
from lalm.model.encoder import AudioEncoder

TINY = EncoderConfig(n_mels=80, n_ctx=24, dim=32, n_head=4, n_layer=2, hidden_dim=64)


def random_whisper_state(config: EncoderConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under lalm's names for a Whisper encoder of ``config`` (plus ln_post)."""
    g = torch.Generator().manual_seed(seed)
    shapes = {f"encoder.{k}": v.shape for k, v in AudioEncoder(config).state_dict().items()}
    shapes |= {"projector.ln_post.weight": (config.dim,), "projector.ln_post.bias": (config.dim,)}
    return {key: torch.randn(shape, generator=g) / 4 for key, shape in shapes.items()}


def test_key_maps_target_exactly_the_model_parameters() -> None:
    model_keys = set(random_whisper_state(TINY))
    assert set(encoder_keys(TINY.n_layer)) == model_keys
    for key_map in (OPENAI_KEYS, HF_KEYS, CT2_KEYS):
        targets = {t.format(i) for t in key_map.values() for i in range(TINY.n_layer)}
        assert targets <= model_keys
        assert len(set(key_map.values())) == len(key_map)  # invertible


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        torch.testing.assert_close(value, b[key], rtol=0, atol=0, msg=key)


# --- the CTranslate2 binary format -----------------------------------------------------------

def test_ct2_file_round_trips_every_dtype_scalars_and_aliases(tmp_path: Path) -> None:
    values = {
        "a/float32": torch.randn(3, 4),
        "a/int8": torch.randint(-128, 127, (5,), dtype=torch.int8),
        "a/int16": torch.randint(-3000, 3000, (2, 2, 2), dtype=torch.int16),
        "a/int32": torch.tensor(7, dtype=torch.int32),  # a rank-0 scalar
        "b/float16": torch.randn(6).half(),
        "b/bfloat16": torch.randn(2, 3).bfloat16(),
        "b/weight": torch.randint(-127, 127, (2, 3), dtype=torch.int8),
        "b/weight_scale": torch.tensor([2.0, 4.0]),
    }
    write_ct2_file(tmp_path / "model.bin", "TestSpec", 9, values, {"c/weight": "b/weight"})
    f = CT2File(tmp_path)
    assert (f.binary_version, f.spec, f.spec_revision) == (6, "TestSpec", 9)
    assert len(f) == len(values) + 1 and set(f) == set(values) | {"c/weight"}
    for name, value in values.items():
        assert f[name].dtype == value.dtype and torch.equal(f[name], value), name
    assert f.shape("a/int32") == () and f.shape("a/int16") == (2, 2, 2)
    # An alias resolves to its target, and so does its quantization scale.
    assert torch.equal(f["c/weight"], values["b/weight"])
    assert torch.equal(f.dequantized("c/weight"), values["b/weight"].float() / torch.tensor(
        [[2.0], [4.0]]))
    assert "missing" not in f
    with pytest.raises(KeyError):
        f["missing"]


def test_dequantize_int8_per_row_and_int16_per_tensor(tmp_path: Path) -> None:
    int8 = torch.tensor([[127, -64], [10, 20]], dtype=torch.int8)
    conv = torch.tensor([[[127, 0, -127]], [[1, 2, 3]]], dtype=torch.int8)  # [2, 1, 3]
    int16 = torch.tensor([1024, -512], dtype=torch.int16)
    write_ct2_file(tmp_path / "model.bin", "S", 1, {
        "w8": int8, "w8_scale": torch.tensor([127.0, 10.0]),
        "conv": conv, "conv_scale": torch.tensor([127.0, 1.0]).half(),
        "w16": int16, "w16_scale": torch.tensor(1024.0),
        "plain": torch.tensor([1.5]).half(),
        "unscaled": int8, "zp": int8, "zp_scale": torch.ones(2), "zp_zero": torch.ones(2),
    })
    f = CT2File(tmp_path / "model.bin")
    assert torch.equal(f.dequantized("w8"), torch.tensor([[1.0, -64 / 127], [1.0, 2.0]]))
    assert torch.equal(f.dequantized("conv"), torch.tensor([[[1.0, 0.0, -1.0]], [[1., 2., 3.]]]))
    assert torch.equal(f.dequantized("w16"), torch.tensor([1.0, -0.5]))
    assert f.dequantized("plain").dtype == torch.float32
    with pytest.raises(CheckpointError, match="has no 'unscaled_scale'"):
        f.dequantized("unscaled")
    with pytest.raises(CheckpointError, match="zero-point"):
        f.dequantized("zp")
    with pytest.raises(CheckpointError, match="'nothing' is missing"):
        f.dequantized("nothing")


def _tiny_ct2(tmp_path: Path) -> bytes:
    write_ct2_file(tmp_path / "ok.bin", "S", 1, {"x": torch.arange(4.0), "y": torch.ones(2)},
                   {"z": "x"})
    return (tmp_path / "ok.bin").read_bytes()


@pytest.mark.parametrize("cut", [0, 3, 7, 20, 30, 40, -12, -1])
def test_truncated_model_bin_is_named(tmp_path: Path, cut: int) -> None:
    data = _tiny_ct2(tmp_path)
    (tmp_path / "model.bin").write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match=r"model\.bin.*truncated"):
        CT2File(tmp_path)


@pytest.mark.parametrize("version", [0, 7, 0x464C457F])  # too old, too new, an ELF file
def test_unknown_binary_version(tmp_path: Path, version: int) -> None:
    data = _tiny_ct2(tmp_path)
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", version) + data[4:])
    with pytest.raises(CheckpointError, match=f"binary version {version} "):
        CT2File(tmp_path / "model.bin")


def test_malformed_records(tmp_path: Path) -> None:
    data = _tiny_ct2(tmp_path)
    bad = tmp_path / "model.bin"
    bad.write_bytes(data + b"\0")
    with pytest.raises(CheckpointError, match="1 unexpected bytes"):
        CT2File(bad)
    # Variable "x": name record starts after version(4) + spec(2+2) + revision(4) + count(4).
    dtype_at = 16 + 2 + 2 + 1 + 4
    bad.write_bytes(data[:dtype_at] + b"\x09" + data[dtype_at + 1:])
    with pytest.raises(CheckpointError, match="'x' has unknown dtype id 9"):
        CT2File(bad)
    bad.write_bytes(data[:dtype_at + 1] + struct.pack("<I", 12) + data[dtype_at + 5:])
    with pytest.raises(CheckpointError, match="'x' of shape \\(4,\\).*declares 12 bytes"):
        CT2File(bad)
    bad.write_bytes(data[:-2] + b"q\0")  # the alias target (the last string) names nothing
    with pytest.raises(CheckpointError, match="alias 'z' points to missing variable 'q'"):
        CT2File(bad)
    with pytest.raises(CheckpointError, match="no CTranslate2 model.bin"):
        CT2File(tmp_path / "absent")


# --- CTranslate2 Whisper layout ----------------------------------------------------------------

def write_ct2_whisper(folder: Path, state: dict[str, torch.Tensor], config: EncoderConfig,
                      key_bias: float = 0.0, int8: bool = False,
                      drop: str | None = None) -> None:
    """A WhisperSpec model.bin holding ``state`` (lalm names): q/k/v fused, optionally int8."""
    folder.mkdir(exist_ok=True)
    fused = {}
    for i in range(config.n_layer):
        block = f"encoder.blocks.{i}.attn."
        fused[f"encoder/layer_{i}/self_attention/linear_0/weight"] = torch.cat(
            [state[block + n + ".weight"] for n in ("query", "key", "value")])
        fused[f"encoder/layer_{i}/self_attention/linear_0/bias"] = torch.cat(
            [state[block + "query.bias"], torch.full((config.dim,), key_bias),
             state[block + "value.bias"]])
    plain = {k: v for k, v in state.items() if ".attn." not in k or ".attn.out." in k}
    variables = {**CT2_KEY_MAP.convert(plain, inverse=True), **fused,
                 "encoder/num_heads": torch.tensor(config.n_head, dtype=torch.int16),
                 "decoder/embeddings/weight": torch.zeros(3, config.dim)}
    if int8:
        for name in [n for n in variables if n.endswith("linear_0/weight")]:
            scale = 127.0 / variables[name].abs().amax(dim=1)
            variables[name] = torch.round(variables[name] * scale[:, None]).to(torch.int8)
            variables[name + "_scale"] = scale
    variables.pop(drop, None)
    write_ct2_file(folder / "model.bin", "WhisperSpec", 3, variables)


def test_ct2_whisper_round_trip_fp32_and_int8(tmp_path: Path) -> None:
    state = random_whisper_state(TINY)
    write_ct2_whisper(tmp_path / "fp32", state, TINY)
    loaded = load_whisper_encoder(tmp_path / "fp32")
    assert loaded.source == "ctranslate2" and loaded.config == TINY
    assert_same_state(loaded.state_dict, state)

    write_ct2_whisper(tmp_path / "int8", state, TINY, int8=True)
    int8 = load_whisper_encoder(tmp_path / "int8" / "model.bin").state_dict
    for key, value in state.items():
        quantized = "attn.query.weight" in key or "attn.key.weight" in key or (
            "attn.value.weight" in key or "mlp.0.weight" in key)
        row_max = value.abs().amax(dim=-1, keepdim=True) if value.dim() == 2 else None
        if quantized:  # int8: each element within half a step of its row's 1/127 grid
            assert ((int8[key] - value).abs() <= row_max / 254 + 1e-7).all(), key
        else:
            assert torch.equal(int8[key], value), key


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"key_bias": 0.5}, "non-zero key bias"),
    ({"drop": "encoder/layer_1/ffn/layer_norm/beta"}, "1 Whisper encoder weights missing"),
    ({"drop": "encoder/num_heads"}, "'encoder/num_heads' is missing"),
])
def test_ct2_whisper_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    write_ct2_whisper(tmp_path, random_whisper_state(TINY), TINY, **kwargs)
    with pytest.raises(CheckpointError, match=message):
        load_whisper_encoder(tmp_path)


def test_ct2_other_specs_and_revisions_are_refused(tmp_path: Path) -> None:
    write_ct2_file(tmp_path / "model.bin", "TransformerSpec", 3, {"x": torch.ones(1)})
    with pytest.raises(CheckpointError, match="'TransformerSpec' is not a Whisper model"):
        load_whisper_encoder(tmp_path)
    write_ct2_file(tmp_path / "model.bin", "WhisperSpec", 4, {"x": torch.ones(1)})
    with pytest.raises(CheckpointError, match="revision 4 is newer"):
        load_whisper_encoder(tmp_path)


# --- openai-whisper .pt ---------------------------------------------------------------------

def _save_openai(path: Path, state: dict[str, torch.Tensor], config: EncoderConfig) -> None:
    dims = {"n_mels": config.n_mels, "n_audio_ctx": config.n_ctx, "n_audio_state": config.dim,
            "n_audio_head": config.n_head, "n_audio_layer": config.n_layer, "n_vocab": 10,
            "n_text_ctx": 4, "n_text_state": config.dim, "n_text_head": 1, "n_text_layer": 1}
    weights = {**OPENAI_KEY_MAP.convert(state, inverse=True),
               "decoder.token_embedding.weight": torch.zeros(10, config.dim)}
    torch.save({"dims": dims, "model_state_dict": weights}, path)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_openai_round_trip(tmp_path: Path, n_mels: int) -> None:
    config = EncoderConfig(**{**TINY.__dict__, "n_mels": n_mels})
    state = random_whisper_state(config, seed=n_mels)
    fp16 = {k: v.half() for k, v in state.items()}  # released .pt files hold fp16
    _save_openai(tmp_path / "tiny.pt", fp16, config)
    loaded = load_whisper_encoder(tmp_path / "tiny.pt")
    assert loaded.source == "openai" and loaded.config == config
    assert_same_state(loaded.state_dict, {k: v.float() for k, v in fp16.items()})
    back = OPENAI_KEY_MAP.convert(loaded.state_dict, inverse=True)
    assert back.keys() == OPENAI_KEY_MAP.convert(state, inverse=True).keys()
    assert back["encoder.ln_post.weight"].dtype == torch.float32


def test_openai_errors(tmp_path: Path) -> None:
    state = random_whisper_state(TINY)
    _save_openai(tmp_path / "ok.pt", {k: v for k, v in state.items()
                                      if k != "encoder.blocks.1.mlp_ln.bias"}, TINY)
    with pytest.raises(CheckpointError, match="1 Whisper encoder weights missing"):
        load_whisper_encoder(tmp_path / "ok.pt")
    torch.save({"model_state_dict": {}}, tmp_path / "nodims.pt")
    with pytest.raises(CheckpointError, match="holds 'dims' and 'model_state_dict'"):
        load_whisper_encoder(tmp_path / "nodims.pt")
    torch.save({"dims": {}, "model_state_dict": {"encoder.blocks.0.mlp.0.weight": torch.ones(1)}},
               tmp_path / "baddims.pt")
    with pytest.raises(CheckpointError, match="lack 'n_mels'"):
        load_whisper_encoder(tmp_path / "baddims.pt")
    (tmp_path / "junk.pt").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="not a loadable openai-whisper"):
        load_whisper_encoder(tmp_path / "junk.pt")


def test_unknown_formats(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="unknown Whisper checkpoint format"):
        load_whisper_encoder(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match="neither a CTranslate2"):
        load_whisper_encoder(tmp_path)
    with pytest.raises(CheckpointError, match="no such Whisper checkpoint"):
        load_whisper_encoder(tmp_path / "absent.pt")
    state = random_whisper_state(TINY)
    _save_openai(tmp_path / "extra.pt", state, TINY)
    ckpt = torch.load(tmp_path / "extra.pt", weights_only=True)
    ckpt["model_state_dict"]["encoder.extra"] = torch.ones(1)
    torch.save(ckpt, tmp_path / "extra.pt")
    with pytest.raises(CheckpointError, match="unexpected openai-whisper keys.*'encoder.extra'"):
        load_whisper_encoder(tmp_path / "extra.pt")


# --- transformers Whisper folders ---------------------------------------------------------------

@pytest.mark.parametrize(("n_mels", "model_class"), [(80, "WhisperForConditionalGeneration"),
                                                     (128, "WhisperModel")])
def test_hf_folder_matches_transformers_encoder(tmp_path: Path, n_mels: int,
                                                model_class: str) -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(n_mels)
    hf_config = transformers.WhisperConfig(
        num_mel_bins=n_mels, max_source_positions=TINY.n_ctx, d_model=TINY.dim,
        encoder_layers=TINY.n_layer, encoder_attention_heads=TINY.n_head,
        encoder_ffn_dim=TINY.hidden_dim, decoder_layers=1, decoder_attention_heads=1,
        decoder_ffn_dim=8, vocab_size=16, max_target_positions=8, pad_token_id=0,
        bos_token_id=1, eos_token_id=1, decoder_start_token_id=2)
    model = getattr(transformers, model_class)(hf_config).eval()
    model.save_pretrained(tmp_path)
    loaded = load_whisper_encoder(tmp_path)
    assert loaded.source == "hf" and loaded.config.n_mels == n_mels

    hf_encoder = model.get_encoder()
    original = {k: v for k, v in hf_encoder.state_dict().items()}
    assert_same_state(HF_KEY_MAP.convert(loaded.state_dict, inverse=True), original)

    encoder, ln_post = build_whisper_encoder(loaded)
    features = torch.randn(2, n_mels, 2 * TINY.n_ctx)  # transformers insists on the full window
    with torch.no_grad():
        expected = hf_encoder(features).last_hidden_state
        # Two zero frames past the window = the conv stem's own zero padding.
        x, _ = encoder(F.pad(features, (0, 2)), torch.full((2,), 2 * TINY.n_ctx))
        torch.testing.assert_close(ln_post(x), expected, rtol=1e-5, atol=1e-5)


def test_hf_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "whisper"}')
    with pytest.raises(CheckpointError, match="not a Whisper config"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"num_mel_bins": 80, "max_source_positions": 24, "d_model": 32, '
        '"encoder_attention_heads": 4, "encoder_layers": 2, "encoder_ffn_dim": 64}')
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"num_mel_bins": 80, "max_source_positions": 24, "d_model": 30, '
        '"encoder_attention_heads": 4, "encoder_layers": 2, "encoder_ffn_dim": 64}')
    with pytest.raises(CheckpointError, match="not a valid Whisper encoder"):
        load_whisper_encoder(tmp_path)


# --- a new model from real parts ----------------------------------------------------------------

def test_build_from_whisper_writes_a_loadable_qwen2_audio_checkpoint(tmp_path: Path) -> None:
    state = random_whisper_state(TINY, seed=3)
    write_ct2_whisper(tmp_path / "whisper", state, TINY)
    decoder = DecoderConfig(vocab_size=160, dim=48, n_layer=2, n_head=4, n_kv_head=2,
                            hidden_dim=96, max_seq_len=64)
    files = build_from_whisper(tmp_path / "whisper", decoder, tmp_path / "model", seed=5)
    assert files[-1].name == "config.json"
    model = load_model(tmp_path / "model")
    assert model.config.encoder == TINY and model.config.decoder == decoder
    loaded = model.state_dict()
    assert_same_state({k: loaded[k] for k in state}, state)
    # The new parts: seeded N(0, 0.02) weights, zero biases, unit norms.
    assert loaded["decoder.layers.1.attn.q.bias"].count_nonzero() == 0
    assert torch.equal(loaded["decoder.norm.weight"], torch.ones(48))
    assert abs(float(loaded["decoder.embed.weight"].std()) - 0.02) < 0.002
    again = build_from_whisper(tmp_path / "whisper", decoder, tmp_path / "again", seed=5)
    assert [f.read_bytes() for f in again] == [f.read_bytes() for f in files]

    transformers = pytest.importorskip("transformers")
    reference = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "model")
    tower = {k.split("audio_tower.", 1)[1]: v for k, v in reference.state_dict().items()
             if "audio_tower." in k}  # transformers 4 and 5 nest it differently
    assert torch.equal(tower["layers.1.self_attn.k_proj.weight"],
                       state["encoder.blocks.1.attn.key.weight"])
    assert torch.equal(tower["layer_norm.bias"], state["projector.ln_post.bias"])


@pytest.mark.slow  # the 151k-id tokenizer, transformers
def test_cli_from_whisper(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                          qwen2_tokenizer_dir: Path) -> None:
    import numpy as np
    import soundfile as sf

    from lalm.cli import main

    write_ct2_whisper(tmp_path / "whisper", random_whisper_state(TINY), TINY)
    model = tmp_path / "model"
    argv = ["from-whisper", str(tmp_path / "whisper"), str(model), "--tokenizer",
            str(qwen2_tokenizer_dir), "--decoder", "n_layer=1", "--decoder", "dim=32"]
    assert main(argv) == 0 and "wrote" in capsys.readouterr().out
    config = load_model(model).config
    assert (config.decoder.n_layer, config.decoder.dim, config.encoder) == (1, 32, TINY)
    assert config.decoder.vocab_size == 151680  # the tokenizer's 151,649 ids, rounded up to 64
    # the folder is complete: lalm chat opens it, and so does transformers' AutoProcessor
    sf.write(tmp_path / "a.wav", 0.1 * np.sin(np.arange(6400) / 8).astype(np.float32), 16000)
    assert main(["chat", "--model", str(model), "--audio", str(tmp_path / "a.wav"),
                 "--max-new-tokens", "2", "--format", "json", "Hi"]) == 0
    assert 1 <= len(json.loads(capsys.readouterr().out)["tokens"]) <= 2
    transformers = pytest.importorskip("transformers")
    processor = transformers.AutoProcessor.from_pretrained(model)
    assert processor.feature_extractor.feature_size == TINY.n_mels  # from the model: 80
    assert processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>") == 151646
    # errors name the input: a missing checkpoint, an unknown field (with the valid ones)
    assert main(["from-whisper", str(tmp_path / "absent"), str(tmp_path / "x"),
                 "--tokenizer", str(qwen2_tokenizer_dir)]) == 2
    assert "no such Whisper checkpoint" in capsys.readouterr().err
    assert main([*argv, "--decoder", "colour=1"]) == 2
    assert "unknown decoder field 'colour'; valid: vocab_size, dim" in capsys.readouterr().err
    assert main([*argv, "--decoder", "vocab_size=512"]) == 2
    assert "151649 ids, more than the model's vocab_size 512" in capsys.readouterr().err


def test_hf_pytorch_model_bin_and_legacy_pickle(tmp_path: Path) -> None:
    state = random_whisper_state(TINY, seed=7)
    (tmp_path / "config.json").write_text(
        '{"num_mel_bins": 80, "max_source_positions": 24, "d_model": 32, '
        '"encoder_attention_heads": 4, "encoder_layers": 2, "encoder_ffn_dim": 64}')
    hf = {f"encoder.{k}": v for k, v in HF_KEY_MAP.convert(state, inverse=True).items()}
    torch.save(hf, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    assert_same_state(load_whisper_encoder(tmp_path).state_dict, state)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin: not loadable"):
        load_whisper_encoder(tmp_path)
    (tmp_path / "config.json").unlink()
    _save_openai(tmp_path / "legacy.pt", state, TINY)
    torch.save(torch.load(tmp_path / "legacy.pt", weights_only=True), tmp_path / "legacy.pt",
               _use_new_zipfile_serialization=False)
    assert load_whisper_encoder(tmp_path / "legacy.pt").source == "openai"
