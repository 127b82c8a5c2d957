"""Weights stay in their storage precision (issue 16.1): a bf16 file loads as memory-mapped bf16
tensors, "auto" follows the checkpoint, bf16 weights compute in float32 where the CPU lacks bf16
units (`lalm.model.upcast`), and fp32 and bf16 decode the same greedy tokens on the tiny parity
models; int8 / int4 are "auto" plus a weight-only decoder."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lalm.config
import lalm.model.upcast
from lalm import cli
from lalm.checkpoint import load_model, save_model
from lalm.checkpoint.safetensors_io import MAP_MIN_BYTES, read_safetensors
from lalm.config import Precision, resolve_dtype, resolve_precision
from lalm.errors import PrecisionError
from lalm.generation import GenerationOptions, Pipeline
from lalm.model.upcast import UpcastEmbedding, UpcastLinear
from lalm.testing.models import random_features, random_model

# vocab 8192 x dim 64 in bf16: 1 MiB embedding and lm_head, past MAP_MIN_BYTES (mapped)
WIDE = {"decoder": {"vocab_size": 8192}}


def _file_regions(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process's mappings of `path` (/proc/self/maps)."""
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6 and Path(fields[5]) == path.resolve():
            start, end = (int(x, 16) for x in fields[0].split("-"))
            regions.append((start, end))
    return regions


def _force_fast(monkeypatch, fast: bool) -> None:
    """Pretend the CPU has (or lacks) bf16/fp16 units: this machine's answer is fixed, and
    both paths must be correct."""
    monkeypatch.setattr(lalm.config, "fast_on", lambda dtype, device="cpu": fast
                        or dtype == torch.float32)


@pytest.fixture(scope="module")
def bf16_dir(tmp_path_factory) -> Path:
    from lalm.config import ModelConfig

    model = random_model(ModelConfig.from_name("tiny-random", **WIDE), seed=3)
    directory = tmp_path_factory.mktemp("bf16")
    save_model(model, directory, dtype=torch.bfloat16)
    return directory


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_bf16_checkpoint_keeps_bf16_weights_mapped_from_the_file(bf16_dir, monkeypatch) -> None:
    weights = bf16_dir / "model.safetensors"
    raw = read_safetensors(weights)
    assert {t.dtype for t in raw.values()} == {torch.bfloat16}
    del raw
    for fast in (True, False):
        _force_fast(monkeypatch, fast)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(bf16_dir)  # "auto"
        big = [model.decoder.embed.weight, model.decoder.lm_head.weight]
        assert all(t.nbytes >= MAP_MIN_BYTES and t.dtype == torch.bfloat16 for t in big)
        regions = _file_regions(weights)
        # the parameters are the file's pages: no copy, let alone a float32 one
        assert all(any(a <= t.data_ptr() < b for a, b in regions) for t in big)
        linears = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert {w.dtype for w in linears} == {torch.bfloat16}
        norms = {model.decoder.norm.weight.dtype, model.encoder.conv1.weight.dtype}
        assert norms == {torch.bfloat16 if fast else torch.float32}
        assert isinstance(model.decoder.lm_head, UpcastLinear) is not fast
        del model, big, linears
    assert not _file_regions(weights)  # freed with the model


def test_auto_keeps_an_fp32_checkpoint_fp32(tmp_path) -> None:
    save_model(random_model(seed=1), tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to fall back from
        model = load_model(tmp_path)
    assert {t.dtype for t in model.state_dict().values()} == {torch.float32}
    assert not any(isinstance(m, (UpcastLinear, UpcastEmbedding)) for m in model.modules())


def test_resolve_precision_follows_the_checkpoint_and_the_device(monkeypatch) -> None:
    _force_fast(monkeypatch, True)
    assert resolve_precision("auto", "cpu", torch.bfloat16) == Precision(torch.bfloat16,
                                                                         torch.bfloat16)
    assert resolve_precision(None, "cpu", torch.float64) == Precision(torch.float32,
                                                                      torch.float32)
    assert resolve_precision("fp32", "cpu", torch.bfloat16).weights == torch.float32
    from lalm.model.quant import SCHEMES

    assert lalm.config.QUANT_SCHEMES == tuple(SCHEMES)  # config cannot import the model layer
    for scheme in ("int8", "int4"):
        assert resolve_precision(scheme, "cpu", torch.bfloat16) == Precision(
            torch.bfloat16, torch.bfloat16, scheme)
        with pytest.raises(PrecisionError, match="needs a checkpoint"):
            resolve_dtype(scheme)
    assert resolve_precision("bf16", "cpu", torch.bfloat16).quant is None
    _force_fast(monkeypatch, False)
    with pytest.warns(UserWarning, match="stay torch.bfloat16 in memory"):
        resolved = resolve_precision("auto", "cpu", torch.bfloat16)
    assert resolved == Precision(torch.bfloat16, torch.float32) and resolved.upcast


@pytest.mark.parametrize("name", ["int2", "fp8", "", "FP32"])
def test_a_bad_precision_name_is_a_typed_error(bf16_dir, name) -> None:
    with pytest.raises(PrecisionError, match=repr(name)):
        load_model(bf16_dir, name)
    with pytest.raises(PrecisionError, match="not both"):
        load_model(bf16_dir, "bf16", dtype="fp32")


@pytest.mark.parametrize("block_bytes", [lalm.model.upcast.BLOCK_BYTES, 4096])
def test_upcast_bf16_equals_the_float32_cast_of_the_same_weights(bf16_dir, monkeypatch,
                                                                 block_bytes) -> None:
    monkeypatch.setattr(lalm.model.upcast, "BLOCK_BYTES", block_bytes)  # 4096: many blocks
    _force_fast(monkeypatch, False)
    with pytest.warns(UserWarning, match="computes in float32"):
        upcast = load_model(bf16_dir, "bf16")
    cast = load_model(bf16_dir, "fp32")
    features, lens = random_features([40, 23], n_mels=128, seed=2)
    ids = torch.randint(0, 8192, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        rows = [upcast.embed_audio(features, lens), cast.embed_audio(features, lens)]
        logits = [m(ids).logits for m in (upcast, cast)]
    for a, b in zip(*rows):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)


def _clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * rng.uniform(150, 1500) * t)
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def parity_models(tmp_path_factory) -> list[Path]:
    """The tiny parity models: a transformers-saved Qwen2-Audio (the parity tests' builder) and
    the shared Qwen-Audio v1 fixture checkpoint."""
    pytest.importorskip("transformers")
    from conftest import shared_fixture

    from lalm.testing.checkpoints import save_reference_checkpoint

    qwen2 = tmp_path_factory.mktemp("qwen2_parity")
    save_reference_checkpoint(qwen2, shared_fixture("qwen2_audio_tokenizer"), seed=7)
    return [qwen2, shared_fixture("qwen_audio_v1_tiny_A")]


@pytest.mark.slow  # two pipelines per model and precision: ~40 s on the shared 2-core CPU
@pytest.mark.parametrize("fast", [True, False], ids=["bf16-compute", "bf16-upcast"])
def test_fp32_and_bf16_decode_the_same_greedy_tokens(parity_models, monkeypatch, fast) -> None:
    _force_fast(monkeypatch, fast)
    options = GenerationOptions(max_new_tokens=8, temperature=0.0)
    for directory in parity_models:
        tokens = []
        for precision in ("fp32", "bf16"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipe = Pipeline.from_pretrained(directory, precision)
            assert pipe.model.decoder.lm_head.weight.dtype == {"fp32": torch.float32,
                                                               "bf16": torch.bfloat16}[precision]
            requests = [pipe.chat_request("What can you hear?", [_clip(s, i)])
                        for i, s in enumerate((1.3, 2.7))]
            tokens.append([r.tokens for r in pipe.generate(requests, options)])
        assert tokens[0] == tokens[1], directory
        assert any(len(set(row)) > 1 for row in tokens[0])  # not a constant output


@pytest.mark.parametrize("command", [["chat", "--model", "m", "hi"],
                                     ["transcribe", "--model", "m", "a.wav"],
                                     ["serve", "--model", "m"],
                                     ["eval", "--model", "m", "--task", "t", "--data", "d"]])
def test_cli_precision_flag(command, capsys) -> None:
    parser = cli.build_parser()
    assert parser.parse_args(command).precision == "auto"
    assert parser.parse_args([*command, "--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args([*command, "--dtype", "fp16"]).precision == "fp16"  # old name
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command, "--precision", "int2"])
    assert exit_.value.code == 2 and "invalid choice: 'int2'" in capsys.readouterr().err


@pytest.mark.parametrize(("scheme", "codes", "bound"),
                         [("int8", torch.int8, 0.05), ("int4", torch.uint8, 0.3)])
def test_int8_and_int4_precisions_quantise_the_decoder_of_a_float_checkpoint(
        bf16_dir, scheme, codes, bound) -> None:
    from lalm.model.quant import HEAD_SCHEMES, SCHEMES

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without bf16 units: float32 products
        model = load_model(bf16_dir, scheme)
        reference = load_model(bf16_dir, "fp32")
    layer, kind = model.decoder.layers[0], SCHEMES[scheme]
    assert isinstance(layer.mlp.up, kind)
    assert isinstance(model.decoder.lm_head, SCHEMES[HEAD_SCHEMES[scheme]])
    assert layer.mlp.up.weight.dtype == codes
    assert type(model.encoder.blocks[0].attn.query) is not kind  # the encoder stays float
    assert model.decoder.embed.weight.dtype == torch.bfloat16  # the rest as "auto"
    if scheme == "int4":  # its scales and zeros stay as stored, computing in float32 or not
        assert layer.mlp.up.scales.dtype == layer.mlp.up.zeros.dtype == torch.bfloat16
    ids = torch.randint(0, 8192, (1, 7), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        a, b = model(ids).logits, reference(ids).logits
    assert float((a - b).norm() / b.norm()) < bound  # the codes' rounding only
    assert cli.build_parser().parse_args(["chat", "--model", "m", "--precision", scheme,
                                          "hi"]).precision == scheme
