"""Scorers on hand-computed cases: every expected number is derived in the comments."""

from __future__ import annotations

import math

import pytest

from lalm.errors import ScoringError
from lalm.eval.airbench import extract_choice, score_foundation, true_choice
from lalm.eval.analysis import average_shift, nsynth_scores, parse_note_analysis
from lalm.eval.caption import cider_d
from lalm.eval.metrics import (
    ASR_QWEN2_AUDIO,
    ASR_QWEN_AUDIO,
    NORMALIZED_MATCH,
    accuracy,
    aqa_accuracy,
    bleu,
    error_rate,
    error_rate_by_source,
)


def test_wer_v1_keeps_punctuation_v2_removes_it() -> None:
    hyp, ref = "<|en|>hello , world.", "Hello world."
    # v1: ["hello,", "world."] vs ["hello", "world."] -> 1 substitution over 2 words
    v1 = error_rate([hyp], [ref], "en", ASR_QWEN_AUDIO)
    assert (v1.errors, v1.reference_length, v1.score, v1.unit) == (1, 2, 0.5, "word")
    # v2: both normalise to "hello world"
    v2 = error_rate([hyp], [ref], "en", ASR_QWEN2_AUDIO)
    assert (v2.errors, v2.reference_length, v2.version) == (0, 2, "qwen2-audio-asr-v1")


def test_wer_v2_double_english_normalisation() -> None:
    # English normaliser alone leaves "$25" vs "25" (1 error in 3); the basic one after it
    # removes the "$", so the official procedure counts no error.
    r = error_rate(["it costs 25"], ["It costs $25."], "en")
    assert (r.errors, r.reference_length) == (0, 3)


def test_cer_chinese_both_procedures() -> None:
    hyp, ref = "今天是二零一九年三月五日", "今天是2019年3月5日。"
    # v1: 13 reference characters (3 + 2019 + 年3月5日。); 2,0,1,9,3,5 substituted and 。
    # deleted -> 7 errors
    v1 = error_rate([hyp], [ref], "zh", ASR_QWEN_AUDIO)
    assert (v1.errors, v1.reference_length, v1.unit) == (7, 13, "char")
    # v2 verbalises the date and drops punctuation: 12 characters, identical
    v2 = error_rate([hyp], [ref], "zh")
    assert (v2.errors, v2.reference_length) == (0, 12)


def test_cantonese_is_converted_to_simplified_only_in_v2() -> None:
    v2 = error_rate(["我们去食饭"], ["我們去食飯"], "yue")
    assert (v2.errors, v2.reference_length, v2.unit) == (0, 5, "char")
    v1 = error_rate(["我们去食饭"], ["我們去食飯"], "yue", ASR_QWEN_AUDIO)
    assert (v1.errors, v1.reference_length, v1.unit) == (1, 1, "word")


def test_error_rate_is_a_corpus_rate_per_source() -> None:
    hyps = ["a b c", "x", "d e"]
    refs = ["a b d", "y z", "d e"]
    got = error_rate_by_source(hyps, refs, ["s1", "s2", "s1"], "en")
    # s1: 1 error over 3 + 2 words; s2: 1 substitution + 1 deletion over 2 words
    assert list(got) == ["s1", "s2"]
    assert (got["s1"].errors, got["s1"].reference_length, got["s1"].count) == (1, 5, 2)
    assert got["s2"].score == 1.0


def test_error_rate_rejects_bad_input() -> None:
    with pytest.raises(ScoringError, match="2 hypotheses but 1 references"):
        error_rate(["a", "b"], ["a"], "en")
    with pytest.raises(ScoringError, match="nothing to score"):
        error_rate([], [], "en")
    with pytest.raises(ScoringError, match="empty after normalisation"):
        error_rate(["a"], ["<|en|> ,"], "en")
    with pytest.raises(ScoringError, match="unknown ASR scoring version"):
        error_rate(["a"], ["a"], "en", "wer-v9")


def test_bleu_perfect_and_signature() -> None:
    r = bleu(["the cat sat on the mat"], ["the cat sat on the mat"], "de")
    assert r.score == pytest.approx(100.0)
    assert r.tokenizer == "13a" and "tok:13a" in r.signature and r.count == 1
    assert bleu(["今天天气很好"], ["今天天气很好"], "zh").tokenizer == "zh"


def test_accuracy_exact_and_normalised() -> None:
    hyps = [" Happy", "sad", "Neutral."]
    refs = ["Happy", "angry", "neutral"]
    # exact: only " Happy" (stripped) matches
    assert accuracy(hyps, refs).correct == 1
    # normalised: case and punctuation ignored -> Happy and neutral match
    r = accuracy(hyps, refs, NORMALIZED_MATCH)
    assert (r.correct, r.count, r.score) == (2, 3, pytest.approx(2 / 3))


def test_aqa_yes_no_subset() -> None:
    hyps = ["yes", "no", "a dog", "Yes"]
    refs = ["yes", "yes", "a dog", "No"]
    overall, binary = aqa_accuracy(hyps, refs)
    assert (overall.correct, overall.count) == (2, 4)
    assert (binary.correct, binary.count) == (1, 3)  # type: ignore[union-attr]
    assert aqa_accuracy(["x"], ["dog"])[1] is None


@pytest.mark.parametrize(
    ("response", "letter"),
    [("B", "B"), ("B. cat", "B"), ("The answer is C.", "C"), ("\n D \n", "D"), ("cat", None),
     ("None", None), ("", None), (None, None), ("As heard", "A"), ("E", None)],
)
def test_airbench_extract_choice(response: str | None, letter: str | None) -> None:
    assert extract_choice(response) == letter


def _item(task: str | None, response: str, answer: str = "cat") -> dict[str, object]:
    return {"task_name": task, "dataset_name": "D", "response": response, "answer_gt": answer,
            "choice_a": "dog", "choice_b": "cat", "choice_c": "x", "choice_d": "y"}


def test_airbench_official_drops_failures_strict_counts_them() -> None:
    items = [
        _item("T1", "B"),  # correct
        _item("T1", "The answer is A."),  # wrong
        _item("T1", "cat"),  # extraction fails
        _item("T2", "None"),  # fails
        _item("T2", "C\n", answer="x"),  # correct
        _item(None, "B"),  # skipped (no task name)
    ]
    official = score_foundation(items, "official")
    assert (official.groups["T1_D"].correct, official.groups["T1_D"].scored) == (1, 2)
    assert official.groups["T2_D"].score == 1.0 and official.groups["T2_D"].failed == 1
    assert (official.overall.correct, official.overall.scored, official.overall.failed) == (2, 3, 2)
    assert official.macro == pytest.approx((1 / 2 + 1) / 2)
    strict = score_foundation(items, "strict")
    assert strict.groups["T1_D"].score == pytest.approx(1 / 3)
    assert strict.overall.score == pytest.approx(2 / 5)
    assert strict.macro == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert strict.version == "airbench-foundation-strict-v1"


def test_airbench_errors() -> None:
    with pytest.raises(ScoringError, match="none of the choices"):
        true_choice(_item("T", "A", answer="zebra"))
    with pytest.raises(ScoringError, match="unknown AIR-Bench scoring mode"):
        score_foundation([_item("T", "A")], "lenient")
    with pytest.raises(ScoringError, match="no items"):
        score_foundation([_item(None, "A")])


def _note(pitch: int | str, velocity: int, instrument: str, sonic: str) -> str:
    return (f"<|pitch|><|midi_pitch_{pitch}|><|velocity|><|midi_velocity_{velocity}|>"
            f"<|instrument|>{instrument}<|sonic|>{sonic}")


def test_parse_note_analysis() -> None:
    n = parse_note_analysis(_note(60, 100, "guitar", "dark, unknown, reverb"))
    assert (n.pitch, n.velocity, n.instrument, n.qualities) == (60, 100, "guitar",
                                                                ("dark", "reverb"))
    bad = parse_note_analysis("<|pitch|><|midi_pitch_x|>")
    assert (bad.pitch, bad.velocity, bad.instrument, bad.qualities) == (128, 128, "", ())


def test_nsynth_scores_and_official_chroma_quirk() -> None:
    refs = [_note(60, 100, "guitar", "dark, reverb"), _note(72, 50, "keyboard", "bright")]
    hyps = [_note(72, 100, "guitar", "dark"), _note(61, 127, "organ", "dark, bright")]
    r = nsynth_scores(hyps, refs)
    assert r.pitch_accuracy == 0.0
    # pitches seen: [60, 61, 72] -> columns 0, 1, 2. Pair 1: 72 vs 60 share a pitch class
    # (0 == 0) but columns 2 % 12 != 0 % 12; pair 2 differs either way.
    assert r.pitch_class_accuracy == 0.5
    assert r.chroma_accuracy_official == 0.0
    assert r.instrument_accuracy == 0.5 and r.velocity_accuracy == 0.5
    # AP per quality: bright truth [0,1] pred [0,1] -> 1; dark truth [1,0] pred [1,1] -> 1/2;
    # reverb truth [1,0] pred [0,0] -> one threshold holding both clips -> 1/2
    assert r.qualities_map == pytest.approx((1 + 0.5 + 0.5) / 3)


def test_srwt_average_shift() -> None:
    refs = ["<|0.00|>the<|0.40|>cat<|0.80|>sat<|1.20|>", "<|0.00|>hi<|0.50|>"]
    hyps = ["<|en|><|0.10|>the<|0.40|>dog<|0.90|>sat<|1.00|>", "no timestamps"]
    r = average_shift(hyps, refs)
    # "the": |0.1 - 0| + |0.4 - 0.4| = 0.1; "sat": |0.9 - 0.8| + |1.0 - 1.2| = 0.3; "dog" is
    # a substitution and does not count. (0.1 + 0.3) / 2 words.
    assert r.score == pytest.approx(0.2)
    assert (r.aligned_words, r.count, r.unparsed) == (2, 1, 1)
    with pytest.raises(ScoringError, match="no word"):
        average_shift(["<|0.0|>a<|1.0|>"], ["<|0.0|>b<|1.0|>"])


def test_cider_d_hand_computed() -> None:
    # Two clips: idf = ln 2 - ln 1 for every n-gram. Clip 1 candidate "a" equals its reference:
    # unigram cosine 1, higher orders empty (0), length penalty 1 -> 10 * (1 / 4) = 2.5.
    # Clip 2 shares nothing with its reference -> 0. Corpus mean 1.25.
    r = cider_d(["a", "b"], [["a"], ["c"]], tokenize="none")
    assert r.per_clip == pytest.approx((2.5, 0.0))
    assert r.score == pytest.approx(1.25)
    # a one-clip corpus has idf ln 1 - ln 1 = 0 everywhere
    assert cider_d(["a b"], [["a b"]], tokenize="none").score == 0.0


def test_cider_d_length_penalty() -> None:
    # Clip 1: candidate "a a" vs reference "a": unigram tf-idf vectors (2 ln2) and (ln2);
    # clipped dot min(2ln2, ln2) * ln2 = ln2^2, over norms 2ln2 * ln2 -> 1/2. Bigrams: the
    # reference has none -> 0. Lengths (in bigrams) 1 vs 0 -> penalty exp(-1 / 72).
    r = cider_d(["a a", "b"], [["a"], ["c"]], tokenize="none")
    assert r.per_clip[0] == pytest.approx(10 * (0.5 / 4) * math.exp(-1 / 72))


def test_caption_errors() -> None:
    with pytest.raises(ScoringError, match="at least one reference"):
        cider_d(["a"], [[]], tokenize="none")
    with pytest.raises(ScoringError, match="unknown caption tokenisation"):
        cider_d(["a"], [["a"]], tokenize="nltk")
