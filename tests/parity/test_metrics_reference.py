"""Scorers against the reference libraries the official scripts use (skipped where absent)."""

from __future__ import annotations

import random
import shutil
import warnings

import numpy as np
import pytest

from lalm.eval.analysis import average_precision, nsynth_scores
from lalm.eval.caption import cider_d, ptb_tokenize
from lalm.eval.metrics import accuracy, bleu, error_rate

_WORDS = "the a cat dog sat ran on under mat rug quickly slowly".split()
_HANZI = "我你他们的是在有不了人这中大为上个国"


def _sentences(rng: random.Random, n: int, vocab: list[str] | str, sep: str) -> list[str]:
    return [sep.join(rng.choice(vocab) for _ in range(rng.randint(1, 10))) for _ in range(n)]


def test_wer_matches_jiwer() -> None:
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(0)
    for _ in range(20):
        refs, hyps = _sentences(rng, 8, _WORDS, " "), _sentences(rng, 8, _WORDS, " ")
        out = jiwer.process_words(refs, hyps)
        ours = error_rate(hyps, refs, "en")
        assert ours.errors == out.substitutions + out.deletions + out.insertions
        assert ours.score == pytest.approx(jiwer.wer(refs, hyps))


def test_cer_matches_jiwer() -> None:
    jiwer = pytest.importorskip("jiwer")
    rng = random.Random(1)
    refs, hyps = _sentences(rng, 30, _HANZI, ""), _sentences(rng, 30, _HANZI, "")
    assert error_rate(hyps, refs, "zh").score == pytest.approx(jiwer.cer(refs, hyps))


@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_bleu_matches_sacrebleu(language: str) -> None:
    sacrebleu = pytest.importorskip("sacrebleu")
    samples = {
        "en": (["The cat sat on the mat.", "A dog ran."], ["The cat is on the mat.", "A dog ran!"]),
        "zh": (["今天天气很好。", "我们去吃饭"], ["今天天气不错。", "我们去吃饭吧"]),
        "ja": (["今日は良い天気です。", "猫が好き"], ["今日はいい天気だ。", "猫が好きです"]),
    }
    hyps, refs = samples[language]
    if language == "ja":
        pytest.importorskip("MeCab")
        pytest.importorskip("ipadic")
    tokenize = {"en": "13a", "zh": "zh", "ja": "ja-mecab"}[language]
    expected = sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score
    got = bleu(hyps, refs, language)
    assert got.score == pytest.approx(expected)
    assert f"tok:{tokenize}" in got.signature


def test_accuracy_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(2)
    labels = ["happy", "sad", "angry", "neutral"]
    refs = [rng.choice(labels) for _ in range(50)]
    hyps = [rng.choice(labels) for _ in range(50)]
    assert accuracy(hyps, refs).score == pytest.approx(metrics.accuracy_score(refs, hyps))


def test_average_precision_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 15))
        y_true = rng.integers(0, 2, n)
        y_score = rng.integers(0, 2, n) if rng.random() < 0.5 else rng.random(n).round(1)
        with warnings.catch_warnings():  # sklearn warns when y_true has no positive
            warnings.simplefilter("ignore")
            expected = metrics.average_precision_score(y_true, y_score)
        assert average_precision(y_true, y_score) == pytest.approx(expected)


def test_nsynth_matches_the_official_sklearn_pipeline() -> None:
    preprocessing = pytest.importorskip("sklearn.preprocessing")
    metrics = pytest.importorskip("sklearn.metrics")
    rng = random.Random(4)
    names = ["dark", "bright", "reverb", "percussive", "distortion"]

    def note(pitch: int) -> str:
        sonic = ", ".join(rng.sample(names, rng.randint(0, 3)))
        return f"<|pitch|><|midi_pitch_{pitch}|><|instrument|>bass<|sonic|>{sonic}"

    refs = [note(rng.randint(40, 80)) for _ in range(40)]
    hyps = [note(rng.randint(40, 80)) for _ in range(40)]
    ours = nsynth_scores(hyps, refs)
    # the official evaluate_note_analysis.py computation, written with the same libraries
    q_ref = [[q for q in r.split("<|sonic|>")[1].split(", ") if q] for r in refs]
    q_hyp = [[q for q in h.split("<|sonic|>")[1].split(", ") if q] for h in hyps]
    binary = preprocessing.MultiLabelBinarizer().fit_transform(q_ref + q_hyp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_map = metrics.average_precision_score(binary[:40], binary[40:], average="macro")
    assert ours.qualities_map == pytest.approx(expected_map)
    pitches = [[int(t.split("midi_pitch_")[1].split("|")[0])] for t in refs + hyps]
    onehot = preprocessing.MultiLabelBinarizer().fit_transform(np.array(pitches))
    idx_ref, idx_hyp = onehot[:40].argmax(1), onehot[40:].argmax(1)
    assert ours.pitch_accuracy == pytest.approx(np.mean(idx_ref == idx_hyp))
    assert ours.chroma_accuracy_official == pytest.approx(np.mean(idx_ref % 12 == idx_hyp % 12))


def test_cider_d_matches_pycocoevalcap() -> None:
    cider = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(5)
    for _ in range(20):
        n = rng.randint(2, 6)
        cands = _sentences(rng, n, _WORDS, " ")
        refs = [_sentences(rng, rng.randint(1, 5), _WORDS, " ") for _ in range(n)]
        score, per_clip = cider.Cider().compute_score(
            dict(enumerate(refs)), {i: [c] for i, c in enumerate(cands)})
        ours = cider_d(cands, refs, tokenize="none")
        assert ours.score == pytest.approx(score)
        assert ours.per_clip == pytest.approx(tuple(per_clip))


@pytest.mark.slow
def test_ptb_tokenizer_runs_the_coco_jar() -> None:
    pytest.importorskip("pycocoevalcap")
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    assert ptb_tokenize(["A dog, barking loudly!", "It's raining."]) == [
        "a dog barking loudly", "it 's raining"]
    # PTB tokenisation makes punctuation and case irrelevant to CIDEr-D
    a = cider_d(["A dog barks.", "Rain falls"], [["a dog barks"], ["rain, falling"]])
    b = cider_d(["a dog barks", "rain falls"], [["a dog barks"], ["rain falling"]], "none")
    assert a.score == pytest.approx(b.score)
