"""An oracle transcriber: what a perfect model would write for one window of a recording whose
word times are known exactly (words synthesised one by one and joined with known gaps).

It stands in for a trained model when testing long-form windowing and stitching
(`lalm.longform`): with an oracle, every lost or duplicated word is the stitcher's fault. What
it cannot know is how a real model treats a word that a window edge cuts, so that is a choice:
``partial="drop"`` (the model does not hear it), ``"heard"`` (it hears the whole word, its
times clipped to the window) or ``"truncated"`` (it writes the part inside the window, e.g.
"deliv" or "ery", times clipped). Its output is the text a model writes (SRWT tags with
timestamps rounded to 0.01 s, or plain words), so the test also runs `lalm.prompt.parse_output`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from lalm.audio import SAMPLE_RATE
from lalm.longform import Window
from lalm.prompt import TimedWord, format_timed_words

Partial = Literal["drop", "heard", "truncated"]


def _heard(word: TimedWord, window: Window, partial: Partial) -> TimedWord | None:
    """The word as the oracle writes it for ``window`` (local times), or None if unheard."""
    lo, hi = window.start_s, window.end_s
    if word.end <= lo or word.start >= hi:
        return None
    start, end = max(word.start, lo), min(word.end, hi)
    whole = (start, end) == (word.start, word.end)
    if not whole and partial == "drop":
        return None
    text = word.word
    if not whole and partial == "truncated":
        keep = max(1, round(len(text) * (end - start) / (word.end - word.start)))
        text = text[:keep] if end < word.end else text[len(text) - keep:]
    length = (window.end - window.start) / SAMPLE_RATE  # exact where end_s - start_s is not
    return TimedWord(text, start - lo, min(end - lo, length))


def oracle_transcript(
    truth: Sequence[TimedWord], window: Window, partial: Partial, timestamps: bool = True
) -> str:
    """What a perfect model writes for ``window``.

    Args:
        truth: every word of the recording with its exact times in the recording, in order.
        window: the window transcribed.
        partial: how a word cut by the window edge is treated (see the module docstring).
        timestamps: write SRWT (``<|s|>word<|e|>``, times local to the window) instead of
            plain words.

    Returns:
        The generated text, as `lalm.prompt.parse_output` reads it.
    """
    heard = [h for w in truth if (h := _heard(w, window, partial)) is not None]
    if timestamps:
        return format_timed_words(heard)
    return " ".join(w.word for w in heard)
