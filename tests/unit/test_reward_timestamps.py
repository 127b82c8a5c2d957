"""The ``timestamp_shift`` GRPO reward: word timestamps scored by lalm's SRWT average shift,
on the targets lalm's own renderer writes for both prompt families."""

from __future__ import annotations

import pytest

from lalm.data.manifest import AudioRef, Example, ExampleTask, TimedWord
from lalm.errors import DataError
from lalm.data.render import render_target
from lalm.prompt import QWEN2_AUDIO, QWEN_AUDIO
from lalm.training.rewards import SHIFT_SCALE, score, timestamp_shift

WORDS = (TimedWord("seven", 0.0, 0.42), TimedWord("bright", 0.42, 0.9),
         TimedWord(None, 0.9, 1.3), TimedWord("stars", 1.3, 1.84))


def _example(words=WORDS) -> Example:
    return Example("srwt-0", (AudioRef("a.wav"),), ExampleTask("srwt", "en", timestamps=True),
                   "seven bright stars", words=words)


def _shifted(by: float) -> Example:
    return _example(tuple(TimedWord(w.word, w.start + by, w.end + by) for w in WORDS))


@pytest.mark.parametrize("family", [QWEN_AUDIO, QWEN2_AUDIO])  # the families with timestamps
def test_the_rendered_target_scores_one_and_shifted_times_less(family):
    example = _example()
    target = render_target(example, family)
    assert timestamp_shift(target, example) == pytest.approx(1.0)
    # every boundary 0.1 s late: shift 0.2 s per word (start + end)
    late = render_target(_shifted(0.1), family)
    assert timestamp_shift(late, example) == pytest.approx(1 - 0.2 / SHIFT_SCALE)
    # a "think then answer" output is scored on its answer
    assert timestamp_shift(f"<think>listen</think>{target}", example) == pytest.approx(1.0)
    # more than SHIFT_SCALE off: nothing left of the timing reward
    assert timestamp_shift(render_target(_shifted(1.0), family), example) == 0.0


def test_missing_words_cost_their_share_and_garbage_scores_zero():
    example = _example()
    two_words = "bright (0.42-0.90) stars (1.30-1.84)"  # right times, "seven" left out
    assert timestamp_shift(two_words, example) == pytest.approx(2 / 3)  # WER 1/3
    assert timestamp_shift("seven bright stars", example) == 0.0  # no timestamps at all
    assert timestamp_shift("moon (0.00-0.42)", example) == 0.0  # no word aligns
    assert timestamp_shift("seven (0.00-99.0)", example) == 0.0  # a time past 30 s
    totals, means = score([two_words, render_target(example, QWEN2_AUDIO)],
                          [example, example], {"timestamp_shift": 2.0})
    assert totals == pytest.approx([4 / 3, 2.0])
    assert means == {"reward_timestamp_shift": pytest.approx(5 / 6)}


def test_an_item_without_timed_words_is_refused_by_id():
    with pytest.raises(DataError, match="'plain'.*timestamp_shift reward needs"):
        timestamp_shift("x", Example("plain", (AudioRef("a.wav"),), ExampleTask("asr", "en"), "x"))
