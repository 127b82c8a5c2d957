"""generation_config.json both ways: an export tells transformers' ``generate()`` where a turn
ends (and what AutoProcessor needs), and lalm decodes a checkpoint with the defaults its
generation_config.json gives, as transformers does, unless the call overrides them."""

from __future__ import annotations

import json

import pytest
import torch

from lalm.checkpoint.save import generation_config
from lalm.errors import CheckpointError, GenerationError
from lalm.generation import GenerationOptions, Pipeline
from lalm.generation.options import resolve_options
from lalm.testing.models import random_model
from lalm.testing.training import write_tiny_tokenizer, write_tone_dataset
from lalm.tokenizer import load_tokenizer
from lalm.training.build import export

# Qwen2-Audio-7B-Instruct's generation_config.json (the decoding fields and ids it releases).
INSTRUCT = {"chat_format": "chatml", "do_sample": True, "eos_token_id": [151643, 151645],
            "pad_token_id": 151643, "repetition_penalty": 1.1, "temperature": 0.7,
            "top_k": 20, "top_p": 0.5}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tones")
    return write_tiny_tokenizer(folder / "tokenizer", write_tone_dataset(folder, 2))


def _stops_at_im_end(vocab: int, im_end: int):
    """A tiny model whose greedy next token is always <|im_end|>: the blocks add nothing, so
    the last hidden state is the token's embedding; its dim 0 is 1 for every token, the final
    norm keeps only dim 0, and only <|im_end|>'s lm_head row reads it."""
    model = random_model(_tiny_config(vocab))
    with torch.no_grad():
        for layer in model.decoder.layers:
            layer.attn.o.weight.zero_()
            layer.mlp.down.weight.zero_()
        model.decoder.embed.weight[:, 0] = 1.0
        model.decoder.norm.weight.zero_()
        model.decoder.norm.weight[0] = 1.0
        model.decoder.lm_head.weight[:, 0] = 0.0
        model.decoder.lm_head.weight[im_end, 0] = 5.0
    return model


@pytest.mark.slow
def test_export_stops_transformers_generate_at_im_end(tokenizer_dir, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    tokenizer = load_tokenizer(tokenizer_dir)
    model = _stops_at_im_end(len(tokenizer), tokenizer.im_end_id)
    export(model, tokenizer_dir, tmp_path)
    written = json.loads((tmp_path / "generation_config.json").read_text())
    assert written["eos_token_id"] == [tokenizer.eod_id, tokenizer.im_end_id]
    text_config = json.loads((tmp_path / "config.json").read_text())["text_config"]
    assert (text_config["bos_token_id"], text_config["eos_token_id"]) == \
        (tokenizer.eod_id, tokenizer.im_end_id)
    ref = transformers.Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert tokenizer.im_end_id in ref.generation_config.eos_token_id  # what generate() reads
    ids = torch.tensor([tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n"
                                         "<|im_start|>assistant\n")])
    out = ref.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8)
    assert out[0, ids.shape[1]:].tolist() == [tokenizer.im_end_id]  # not 8 tokens
    processor = transformers.AutoProcessor.from_pretrained(tmp_path)
    assert processor.feature_extractor.feature_size == model.config.encoder.n_mels


def test_export_keeps_the_source_checkpoints_decoding(tokenizer_dir, tmp_path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for f in tokenizer_dir.iterdir():
        (source / f.name).write_bytes(f.read_bytes())
    (source / "generation_config.json").write_text(json.dumps(INSTRUCT))
    tokenizer = load_tokenizer(source)
    export(random_model(_tiny_config(len(tokenizer))), source, tmp_path / "out")
    written = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert written == {**generation_config(tokenizer), "do_sample": True, "temperature": 0.7,
                       "top_k": 20, "top_p": 0.5, "repetition_penalty": 1.1}


def _tiny_config(vocab: int):
    config = random_model("tiny-random").config
    return type(config)(config.encoder, config.projector,
                        type(config.decoder)(**{**config.decoder.__dict__,
                                                "vocab_size": -(-vocab // 64) * 64}))


def test_options_from_the_released_instruct_config() -> None:
    options = GenerationOptions.from_hf(INSTRUCT)
    assert options == GenerationOptions(temperature=0.7, top_k=20, top_p=0.5,
                                        repetition_penalty=1.1, stop_token_ids=(151643, 151645))
    # transformers' defaults: greedy without do_sample; top_k 50, temperature 1 with it
    assert GenerationOptions.from_hf({"temperature": 0.7}) == GenerationOptions()
    assert GenerationOptions.from_hf({"do_sample": True}) == GenerationOptions(temperature=1.0,
                                                                               top_k=50)
    assert GenerationOptions.from_hf({"eos_token_id": 7, "max_new_tokens": 9}) == \
        GenerationOptions(stop_token_ids=(7,), max_new_tokens=9)
    # eos ids join the tokenizer's end-of-turn ids, never replace them (v1 lists 151643 only)
    assert GenerationOptions.from_hf({"eos_token_id": 151643}, stop_ids=(
        151643, 151645, 151644)).stop_token_ids == (151643, 151645, 151644)
    assert GenerationOptions.from_hf({"eos_token_id": [9]}, stop_ids=(1, 2)).stop_token_ids == \
        (1, 2, 9)
    with pytest.raises(CheckpointError, match="gen.json.*temperature"):
        GenerationOptions.from_hf({"do_sample": True, "num_beams": 2}, "gen.json")


def test_pipeline_decodes_with_the_checkpoints_config_unless_overridden(tokenizer_dir,
                                                                       tmp_path) -> None:
    tokenizer = load_tokenizer(tokenizer_dir)
    export(random_model(_tiny_config(len(tokenizer))), tokenizer_dir, tmp_path)
    config = json.loads((tmp_path / "generation_config.json").read_text())
    config.update(min_new_tokens=3, max_new_tokens=3)
    (tmp_path / "generation_config.json").write_text(json.dumps(config))
    pipe = Pipeline.from_pretrained(tmp_path)
    assert pipe.options == GenerationOptions(
        min_new_tokens=3, max_new_tokens=3,
        stop_token_ids=tokenizer.stop_ids)  # the eos ids joined the end-of-turn ids
    assert len(pipe.chat("Hello").tokens) == 3
    assert len(pipe.chat("Hello", max_new_tokens=5, min_new_tokens=5).tokens) == 5
    assert len(pipe.chat("Hello", options={"min_new_tokens": 1, "max_new_tokens": 1}).tokens) == 1


def test_options_as_a_dict_or_keywords_and_unknown_fields() -> None:
    defaults = GenerationOptions(max_new_tokens=7, temperature=0.5)
    assert resolve_options(defaults) is defaults
    assert resolve_options(defaults, {"top_p": 0.9}) == GenerationOptions(
        max_new_tokens=7, temperature=0.5, top_p=0.9)
    assert resolve_options(defaults, GenerationOptions(), max_new_tokens=3) == \
        GenerationOptions(max_new_tokens=3)
    assert resolve_options(defaults, {"stop_sequences": ["\n"]}).stop_sequences == ("\n",)
    with pytest.raises(GenerationError, match="max_tokens.*valid: max_new_tokens"):
        resolve_options(defaults, {"max_tokens": 5})
    with pytest.raises(GenerationError, match="topp.*valid:"):
        resolve_options(defaults, topp=0.5)
    with pytest.raises(GenerationError, match="dict of its fields"):
        resolve_options(defaults, 5)  # type: ignore[arg-type]
