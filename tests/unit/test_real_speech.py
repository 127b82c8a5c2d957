"""Real recorded English speech from Debian's pocketsphinx-testdata (lalm.testing.real_speech)."""

from __future__ import annotations

import shutil

import pytest

from lalm.audio import load_audio
from lalm.testing import real_speech
from lalm.testing.real_speech import CLIPS, real_speech_clips

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs apt-get")


def test_every_clip_loads_with_its_transcript() -> None:
    try:
        clips = real_speech_clips()
    except Exception as e:  # noqa: BLE001 - no Debian mirror reachable: nothing to test
        pytest.skip(f"pocketsphinx-testdata unavailable: {e}")
    assert len(clips) == len(CLIPS) == 10
    assert clips[1][1] == "he was not an ill disposed young man"
    assert clips[5][1] == "ten of clubs"
    for path, text in clips:
        audio = load_audio(str(path))
        assert 0.5 < audio.shape[0] / 16000 < 30 and text == text.lower() and text.split()


def test_a_missing_transcript_is_an_asset_error(tmp_path, monkeypatch) -> None:
    for folder, name in (("librivox", "transcription"), ("cards", "cards.transcription")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_text("<s> only one </s> (001)\n")
    monkeypatch.setattr(real_speech, "_unpacked", lambda: tmp_path)
    with pytest.raises(real_speech.AssetError, match="missing"):
        real_speech_clips()
