"""Qwen2.5-Omni (thinker) and Qwen3-ASR end to end, everything through their family objects:
tiny hub-layout checkpoints (`lalm.testing.family_checkpoints`: transformers' own models with
random weights, the real Qwen BPE with each family's special tokens at their released ids)
loaded by `lalm.load_model`, then chat with one and several audios, transcribe (Qwen3-ASR's
``language X<asr_text>…`` parsed), greedy tokens against transformers' generate on the same
prompt, batched = single, long audio, `lalm eval`, a LoRA SFT run and `lalm serve` over HTTP."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import SHARED_FIXTURES

transformers = pytest.importorskip("transformers")

import lalm  # noqa: E402
from lalm import cli  # noqa: E402
from lalm.audio import batch_log_mel  # noqa: E402
from lalm.generation import GenerationResult, Pipeline  # noqa: E402
from lalm.prompt import QWEN2_5_OMNI, QWEN3_ASR, AudioPart, ParsedOutput  # noqa: E402
from lalm.testing.family_checkpoints import save_asr_checkpoint, save_omni_checkpoint  # noqa: E402
from lalm.testing.server import audio_part, chat_body, post_json, running_server, wav_bytes  # noqa: E402

TOKENIZER_DIR = SHARED_FIXTURES / "qwen2_audio_tokenizer"
NEW_TOKENS = 6
#: (family, builder, the feature-mask argument of the reference's generate)
FAMILIES = {"qwen2.5-omni": (QWEN2_5_OMNI, save_omni_checkpoint, "feature_attention_mask"),
            "qwen3-asr": (QWEN3_ASR, save_asr_checkpoint, "input_features_mask")}
#: the released ids of each family's audio span tokens (start, pad, end)
SPAN_IDS = {"qwen2.5-omni": (151647, 151646, 151648), "qwen3-asr": (151669, 151676, 151670)}

pytestmark = [
    pytest.mark.skipif(not TOKENIZER_DIR.is_dir(),
                       reason=f"shared tokenizer fixture missing: {TOKENIZER_DIR}"),
    pytest.mark.integration,
    pytest.mark.slow,  # building each 152k-vocabulary reference takes ~25 s here
]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory) -> tuple[str, torch.nn.Module, Path, Pipeline]:
    """(family name, transformers' reference model, its hub-layout folder, lalm's pipeline)."""
    name = request.param
    directory = tmp_path_factory.mktemp(name)
    reference = FAMILIES[name][1](directory, TOKENIZER_DIR)
    return name, reference, directory, lalm.load_model(directory)


def _tone(seconds: float, freq: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.size)
            ).astype(np.float32)


def _greedy(pipe: Pipeline, requests, n: int = NEW_TOKENS) -> list[list[int]]:
    options = {"max_new_tokens": n, "min_new_tokens": n, "stop_token_ids": ()}
    return [r.tokens for r in pipe.generate(requests, options)]


def test_each_checkpoint_format_names_its_family(family) -> None:
    name, _, directory, pipe = family
    assert pipe.family is FAMILIES[name][0] and pipe.tokenizer.family is pipe.family
    start, pad, end = SPAN_IDS[name]
    assert (pipe.tokenizer.audio_start_id, pipe.tokenizer.audio_pad_id,
            pipe.tokenizer.audio_end_id) == (start, pad, end)
    assert pipe.tokenizer.audio_slot_ids == {pad}
    assert pipe.tokenizer.stop_ids == (151643, 151645)
    # a windowed encoder takes any length; long audio goes in Whisper-style 30 s windows
    assert pipe.model.encoder.max_frames is None and pipe.window_s == 30.0


def test_chat_prompt_is_the_released_chat_template(family) -> None:
    """lalm's chat ids equal the released template rendered by transformers' tokenizer, the
    audio placeholder expanded to the clip's rows (the model's `audio_row_counts`)."""
    name, _, directory, pipe = family
    clips = [_tone(0.6, 330), _tone(1.1, 550, 1)]
    request = pipe.chat_request("Compare <audio> with <audio>.", clips)
    ids = pipe.prepare([request]).ids[0].tolist()
    hf = transformers.AutoTokenizer.from_pretrained(directory)
    text = hf.apply_chat_template([{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, {"type": "audio"}, {"type": "text", "text": " with "},
        {"type": "audio"}, {"type": "text", "text": "."}]}], add_generation_prompt=True,
        tokenize=False)
    _, lens = batch_log_mel(clips, 128, pipe.family.real_length)
    counts = pipe.model.audio_row_counts(lens).tolist()
    pad = pipe.family.audio_pad
    pieces = text.split(pad)
    expanded = pieces[0] + "".join(pad * n + rest for n, rest in zip(counts, pieces[1:]))
    assert ids == hf(expanded, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("n_audios", [1, 3])
def test_greedy_tokens_equal_transformers_generate(family, n_audios) -> None:
    """One and several audios in one chat turn: lalm's pipeline and the reference's
    generate on the same ids and features give the same greedy tokens."""
    name, reference, _, pipe = family
    clips = [_tone(0.4 + 0.3 * k, 300 + 120 * k, k) for k in range(n_audios)]
    request = pipe.chat_request("What do you hear?", clips)
    ours = _greedy(pipe, [request])[0]
    ids = pipe.prepare([request]).ids
    features, lens = batch_log_mel(clips, 128, pipe.family.real_length)
    frames = (torch.arange(features.shape[2])[None, :] < lens[:, None]).long()
    if name == "qwen3-asr":  # its encoder takes whole 100-frame chunks, zero past each clip
        width = -(-int(lens.max()) // 100) * 100
        frames = (torch.arange(width)[None, :] < lens[:, None]).long()
        features = torch.nn.functional.pad(features, (0, max(0, width - features.shape[2])))
        features = features[:, :, :width] * frames[:, None]
    with torch.no_grad():
        out = reference.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                 input_features=features, **{FAMILIES[name][2]: frames},
                                 max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                                 do_sample=False)
    assert ours == out[0, ids.shape[1]:].tolist()


def test_batched_equals_single(family) -> None:
    _, _, _, pipe = family
    requests = [pipe.chat_request("Describe it.", [_tone(0.3, 440)]),
                pipe.chat_request("And this <audio> or <audio>?", [_tone(0.9, 660, 1),
                                                                   _tone(0.5, 220, 2)]),
                pipe.transcribe_request(_tone(0.7, 880, 3))]
    batched = _greedy(pipe, requests)
    assert batched == [_greedy(pipe, [r])[0] for r in requests]
    assert len({tuple(t) for t in batched}) == 3  # the audio and prompt change the answer


def test_transcribe_runs_and_returns_the_parsed_structure(family) -> None:
    name, _, _, pipe = family
    (result,) = pipe.transcribe([_tone(0.8, 500)], "en", {"max_new_tokens": 4})
    assert isinstance(result, GenerationResult) and isinstance(result.parsed, ParsedOutput)
    assert 1 <= len(result.tokens) <= 4 and result.parsed.words == ()
    ids = pipe.prepare([pipe.transcribe_request(_tone(0.8, 500))]).ids[0].tolist()
    text = pipe.tokenizer.decode(ids)
    if name == "qwen3-asr":  # the processor's forced language: a prefilled header
        assert text.endswith("<|im_start|>assistant\nlanguage English<asr_text>")
        assert text.startswith("<|im_start|>system\n<|im_end|>\n<|im_start|>user\n")
    else:
        assert "You are a speech recognition model." in text
        assert text.endswith("Transcribe the English audio into text.<|im_end|>\n"
                             "<|im_start|>assistant\n")


def test_qwen3_asr_output_is_parsed_into_language_and_text(family) -> None:
    """The parse path on known tokens: the model's own header (auto language), then a stop."""
    name, _, _, pipe = family
    if name != "qwen3-asr":
        pytest.skip("Qwen2.5-Omni answers in plain text")
    tokens = pipe.tokenizer.encode("language German<asr_text>Guten Morgen.")
    assert 151704 in tokens  # <asr_text> is one token
    request = pipe.transcribe_request(_tone(0.5, 400))
    finished = pipe.finish(GenerationResult(tokens + [151645], "stop", 0.0), request,
                           pipe.options)
    assert finished.parsed == ParsedOutput(text="Guten Morgen.", language="de")
    unnamed = pipe.finish(GenerationResult(pipe.tokenizer.encode("language None<asr_text>"),
                                           "length", 0.0), request, pipe.options)
    assert unnamed.parsed == ParsedOutput(text="", language=None)


def test_long_audio_runs_in_windows(family) -> None:
    """A 34 s clip (> one 30 s window) in a chat and in a long-form transcription."""
    _, _, _, pipe = family
    clip = _tone(34.0, 370)
    (rows,) = pipe.encode_audio([AudioPart(clip)])
    halves = [pipe.encode_audio([AudioPart(clip[:17 * 16000])])[0],
              pipe.encode_audio([AudioPart(clip[17 * 16000:])])[0]]
    assert rows.shape[0] == sum(h.shape[0] for h in halves)  # two near-equal windows joined
    assert len(_greedy(pipe, [pipe.chat_request("Summarise.", [clip])], 2)[0]) == 2
    (result,) = pipe.transcribe([clip], "en", {"max_new_tokens": 3}, long_form="fixed")
    assert isinstance(result.parsed, ParsedOutput)


def test_lalm_eval_runs_on_a_tiny_manifest(family, tmp_path) -> None:
    _, _, directory, _ = family
    rows = []
    for n in range(2):
        sf.write(tmp_path / f"clip{n}.wav", _tone(0.5 + 0.25 * n, 220 + 110 * n, n), 16000)
        rows.append({"audio": f"clip{n}.wav", "gt": f"word {n}",
                     "source": "librispeech_test_clean"})
    data = tmp_path / "librispeech_eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["eval", "--model", str(directory), "--task", "librispeech", "--data",
                         str(data), "--max-new-tokens", "3", "--batch-size", "2",
                         "--out", str(tmp_path / "runs")]) == 0
    last = printed.getvalue().strip().splitlines()[-1]
    folder = Path(last.removeprefix("predictions and summary in "))
    records = [json.loads(line) for line in (folder / "predictions.jsonl").open()]
    assert len(records) == 2 and all(isinstance(r["response"], str) for r in records)


def test_lora_sft_runs_a_few_steps(family, tmp_path, monkeypatch) -> None:
    """The shipped `sft` stage (LoRA on the decoder) from the hub-layout checkpoint, on a
    messages JSONL; the export chats."""
    _, _, directory, _ = family
    monkeypatch.chdir(tmp_path)
    (tmp_path / "audio").mkdir()
    with open("train.jsonl", "w") as f:
        for n in range(3):
            path = f"audio/tone{n}.wav"
            sf.write(path, _tone(0.4, 220 * (n + 1), n), 16000)
            f.write(json.dumps({"messages": [
                {"role": "user", "content": "<audio>Which note is played?"},
                {"role": "assistant", "content": ["A3", "A4", "E5"][n]}],
                "audios": [path]}) + "\n")
    argv = ["train", "sft", "--set", f"model.checkpoint={directory}", "--set",
            "data.train=train.jsonl", "--set", "data.valid=train.jsonl", "--set", "parts.decoder=lora", "--set",
            "run.out_dir=runs/sft", "--set", "run.max_steps=2", "--set", "optim.warmup_steps=1",
            "--set", "optim.grad_accum=1", "--set", "run.precision=fp32", "--set",
            "run.metric_items=0", "--set", "run.eval_batches=1", "--set", "run.progress=false"]
    assert cli.main(argv) == 0
    export = tmp_path / "runs/sft/export"
    again = lalm.load_model(export)
    assert again.family is family[3].family
    assert len(_greedy(again, [again.chat_request("Which note?", [_tone(0.4, 440)])], 2)[0]) == 2


def test_lalm_serve_answers_a_chat_with_audio(family, tmp_path) -> None:
    _, _, directory, _ = family
    with running_server(directory, "--served-model-name", "tiny",
                        log=tmp_path / "serve.log") as server:
        body = chat_body([audio_part(wav_bytes(0.6)), {"type": "text", "text": "What is it?"}],
                         max_tokens=3)
        status, reply = post_json(f"{server.url}/v1/chat/completions", body)
    assert status == 200, reply
    assert isinstance(reply["choices"][0]["message"]["content"], str)
    assert reply["usage"]["completion_tokens"] >= 1
