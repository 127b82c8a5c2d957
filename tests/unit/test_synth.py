"""lalm-synth: determinism, resume, exact answers, manifests, AIR-Bench export, prompts, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("espeakng_loader")
pytest.importorskip("piper")

from lalm import cli  # noqa: E402
from lalm.data import SPLITS, read_manifest  # noqa: E402
from lalm.data.render import render_prompt, render_target, v1_task_spec  # noqa: E402
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO, parse_output  # noqa: E402
from lalm.synth import TASKS, generate, plan  # noqa: E402
from lalm.synth.speech import Voice, synthesize, synthesize_words  # noqa: E402

SUBSET = ["asr", "srwt", "sound_event", "chord_quality", "mixed_choice", "chat"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """Every task, one item per split, made by two processes."""
    out = tmp_path_factory.mktemp("synth") / "tiny"
    report = generate(out, "tiny", seed=7, workers=2)
    assert report.made == 3 * len(TASKS) and report.skipped == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_bytes_in_any_process_layout(tiny, tmp_path):
    generate(tmp_path / "a", "tiny", seed=7, tasks=SUBSET, workers=1)
    mine = _files(tmp_path / "a")
    reference = _files(tiny)
    items = [k for k in mine if k.startswith(("items/", "audio/"))]
    assert len(items) > 3 * len(SUBSET)
    assert all(mine[k] == reference[k] for k in items)
    generate(tmp_path / "b", "tiny", seed=8, tasks=SUBSET, workers=1)
    other = _files(tmp_path / "b")
    assert sum(other[k] != mine[k] for k in items) > len(items) // 2


def test_resume_skips_done_items_and_redoes_missing_ones(tmp_path):
    out = tmp_path / "r"
    generate(out, "tiny", seed=1, tasks=["srwt", "tempo"], workers=1)
    before = _files(out)
    (out / "items" / "srwt-test-00000.json").unlink()
    (out / "test.jsonl").unlink()
    report = generate(out, "tiny", seed=1, tasks=["srwt", "tempo"], workers=1)
    assert (report.made, report.skipped) == (1, 5)
    assert _files(out) == before


def test_manifests_load_and_audio_is_16k_pcm16(tiny):
    for split in SPLITS:
        examples = read_manifest(tiny / f"{split}.jsonl")
        assert sorted(e.task.name for e in examples) == sorted(TASKS)
        assert all(e.split == split for e in examples)
        for e in examples:
            for a in e.audios:
                info = sf.info(tiny / a.path)
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert 0.2 < info.duration < 30
            assert e.target
            if e.task.choices:
                assert e.answer in e.task.choices


def test_srwt_word_times_are_exact_by_construction():
    voice = Voice("espeak", "en", "female", "f2")
    words = ["seven", "green", "apples"]
    gaps = [0.4, 0.05, 0.5, 0.3]
    audio, spans = synthesize_words(words, voice, gaps)
    assert [s.word for s in spans] == [None, "seven", "green", None, "apples", None]
    covered = np.zeros(audio.size, bool)
    for s in spans:
        a, b = round(s.start * 16000), round(s.end * 16000)
        covered[a:b] = True
        if s.word is None:
            assert not audio[a:b].any()  # silence spans are digital silence
        else:
            np.testing.assert_array_equal(audio[a:b], synthesize(s.word, voice))
    assert not audio[~covered].any()  # the short gaps are silent too
    assert spans[-1].end == audio.size / 16000


def test_srwt_v1_target_parses_back_to_the_words(tiny):
    (ex,) = [e for e in read_manifest(tiny / "test.jsonl") if e.task.name == "srwt"]
    spec = v1_task_spec(ex)
    parsed = parse_output(render_target(ex, QWEN_AUDIO), spec)
    expected = [w for w in ex.words if w.word is not None]
    assert [w.word for w in parsed.words] == [w.word for w in expected]
    for got, want in zip(parsed.words, expected):
        assert abs(got.start - want.start) <= 0.005 and abs(got.end - want.end) <= 0.005
    assert len(parsed.silences) == sum(w.word is None for w in ex.words)


def test_v1_language_id_prompt_does_not_name_the_answer(tiny):
    (ex,) = [e for e in read_manifest(tiny / "test.jsonl") if e.task.name == "language_id"]
    assert ex.task.audio_language  # the generator knows it: the prompt must not say it
    spec = v1_task_spec(ex)
    assert spec.audio_language == "unknown"
    assert spec.render().startswith("<|startofanalysis|><|unknown|><|question|>")


def test_every_item_renders_in_both_prompt_families(tiny):
    for split in SPLITS:
        for ex in read_manifest(tiny / f"{split}.jsonl"):
            for family in (QWEN_AUDIO, QWEN2_AUDIO):
                prompt = render_prompt(ex, family, tiny)
                assert len(prompt.audios) == len(ex.audios)
                assert render_target(ex, family)


def test_airbench_export_is_consistent(tiny):
    root = tiny / "airbench"
    meta = json.loads((root / "Foundation_meta.json").read_text("utf-8"))
    assert meta and [m["uniq_id"] for m in meta] == list(range(len(meta)))
    for m in meta:
        choices = [m[k] for k in ("choice_a", "choice_b", "choice_c", "choice_d") if k in m]
        assert choices.count(m["answer_gt"]) == 1
        assert (root / f"{m['task_name']}_{m['dataset_name']}" / m["path"]).is_file()


def test_splits_hold_out_phrases_and_sentences():
    from lalm.synth.phrasebook import phrases_for
    from lalm.synth.text import english_sentence, split_of

    held = [set(phrases_for(s)) for s in SPLITS]
    assert all(held) and not (held[0] & held[1] or held[0] & held[2] or held[1] & held[2])
    rng = np.random.default_rng(0)
    for split in SPLITS:
        _, text = english_sentence(rng, split)
        assert split_of(text) == split


def test_plan_and_cli_errors(tmp_path, capsys):
    assert len(plan("tiny", ["tempo"])) == 3
    assert cli.main(["synth", "--out", str(tmp_path), "--size", "nope"]) == 2
    assert cli.main(["synth", "--out", str(tmp_path), "--tasks", "tempo,bogus"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert cli.main(["synth", "--out", str(tmp_path / "c"), "--size", "tiny", "--tasks", "tempo",
                     "--workers", "1"]) == 0
    assert "3 items made" in capsys.readouterr().out


@pytest.mark.slow
def test_docs_page_is_current():
    from lalm.synth.docs import render_docs

    page = Path(__file__).resolve().parents[2] / "docs" / "lalm-synth.md"
    assert page.read_text("utf-8") == render_docs(), \
        "regenerate with: python -m lalm.synth.docs docs/lalm-synth.md"


@pytest.mark.parametrize("n, words", [(0, "zero"), (21, "twenty-one"), (300, "three hundred"),
                                      (402, "four hundred and two"),
                                      (1005, "one thousand and five"),
                                      (1999, "one thousand nine hundred and ninety-nine")])
def test_number_words(n, words):
    from lalm.synth.text import number_words

    assert number_words(n) == words


def test_music_pitch_is_the_drawn_note():
    from lalm.synth import music

    rng = np.random.default_rng(0)
    for instrument in music.INSTRUMENTS:
        audio = music.note(57, instrument, 1.0, rng)  # A3 = 220 Hz
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
        peak = np.fft.rfftfreq(audio.size, 1 / 16000)[np.argmax(spectrum)]
        assert abs(peak - 220.0) <= 1.0, instrument
