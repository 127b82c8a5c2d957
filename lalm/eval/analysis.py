"""Scorers for Qwen-Audio's structured outputs: NSynth note analysis and word timestamps (SRWT).

Both follow the official ``QwenLM/Qwen-Audio`` scripts (``evaluate_note_analysis.py`` with its
``heareval_score.py``, and ``evaluate_srwt.py``).

NSynth (version ``qwen-audio-nsynth-v1``): the output ``<|pitch|><|midi_pitch_60|>
<|velocity|><|midi_velocity_100|><|instrument|>keyboard<|sonic|>bright, percussive`` is parsed
by `parse_note_analysis`; a field that does not parse becomes pitch/velocity 128 or an empty
string, as officially. Scores:

* pitch accuracy: exact MIDI pitch (the official one-hot argmax reduces to this);
* official chroma accuracy: the official code takes ``% 12`` of the pitch's *column index* in
  the sorted set of pitches seen in references and predictions, not of the pitch itself — a
  quirk reproduced in ``chroma_accuracy_official``; ``pitch_class_accuracy`` is the intended
  ``pitch % 12`` comparison, with unparsed predictions counted wrong;
* instrument and velocity accuracy: exact match;
* qualities mAP: macro average precision of the binary predicted quality set against the true
  set, over the qualities present in either (sklearn ``average_precision_score``; a quality
  never true scores 0, as current sklearn defines it).

SRWT (version ``qwen-audio-srwt-v1``): the average shift is the mean over aligned words of
``|start_hyp - start_ref| + |end_hyp - end_ref|``, in seconds, pooled over utterances. Words are
aligned with the ``edit_distance`` package's ``SequenceMatcher`` (the one the official script
uses, so ties break identically) and only words marked equal count. An utterance with no
aligned word is skipped. Outputs that do not parse as timestamped words are dropped with their
pair and counted in ``unparsed`` (the official script drops them from one side only, which then
fails its length check or misaligns the remaining pairs).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import edit_distance
import numpy as np

from lalm.errors import ScoringError
from lalm.eval.metrics import check_pairs

NSYNTH_VERSION = "qwen-audio-nsynth-v1"
SRWT_VERSION = "qwen-audio-srwt-v1"
UNPARSED_MIDI = 128
NSYNTH_QUALITIES = frozenset({
    "bright", "dark", "distortion", "fast_decay", "long_release", "multiphonic",
    "nonlinear_env", "percussive", "reverb", "tempo-synced",
})

_PITCH = re.compile(r"<\|pitch\|><\|midi_pitch_(.*?)\|>")
_VELOCITY = re.compile(r"<\|velocity\|><\|midi_velocity_(.*?)\|>")
_INSTRUMENT = re.compile(r"<\|instrument\|>(.*)")
_QUALITIES = re.compile(r"<\|sonic\|>(.*)")
_TIMESTAMP = re.compile(r"<\|\d{1,2}\.\d+\|>")


@dataclass(frozen=True)
class NoteAnalysis:
    """One parsed note-analysis output (MIDI numbers are 128 when absent or malformed)."""

    pitch: int
    velocity: int
    instrument: str
    qualities: tuple[str, ...]


@dataclass(frozen=True)
class NSynthResult:
    """NSynth note-analysis scores (fractions in [0, 1]) over ``count`` clips."""

    pitch_accuracy: float
    chroma_accuracy_official: float
    pitch_class_accuracy: float
    instrument_accuracy: float
    velocity_accuracy: float
    qualities_map: float
    count: int
    version: str = NSYNTH_VERSION


@dataclass(frozen=True)
class AverageShiftResult:
    """SRWT average shift.

    Attributes:
        score: mean ``|dstart| + |dend|`` over aligned words, seconds.
        aligned_words: number of aligned words (the denominator).
        count: utterance pairs that parsed on both sides.
        unparsed: pairs dropped because a side did not parse.
        version: the procedure.
    """

    score: float
    aligned_words: int
    count: int
    unparsed: int
    version: str = SRWT_VERSION


def _midi(pattern: re.Pattern[str], text: str) -> int:
    found = pattern.findall(text)
    try:
        return int(found[0]) if found else UNPARSED_MIDI
    except ValueError:
        return UNPARSED_MIDI


def _field(pattern: re.Pattern[str], text: str) -> str:
    found = pattern.findall(text)
    return found[0].split("<")[0] if found else ""


def parse_note_analysis(text: str) -> NoteAnalysis:
    """Parse a note-analysis output or reference the way the official script does.

    Args:
        text: e.g. ``"<|pitch|><|midi_pitch_60|><|instrument|>guitar<|sonic|>dark, reverb"``.

    Returns:
        The fields; qualities keep only known NSynth qualities, split on ``", "``.
    """
    qualities = _field(_QUALITIES, text)
    return NoteAnalysis(
        pitch=_midi(_PITCH, text),
        velocity=_midi(_VELOCITY, text),
        instrument=_field(_INSTRUMENT, text),
        qualities=tuple(q for q in qualities.split(", ") if q in NSYNTH_QUALITIES)
        if qualities else (),
    )


def average_precision(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Average precision of one label: sum over score thresholds of ``(R_k - R_{k-1}) P_k``.

    Args:
        y_true: [N] 0/1 truth.
        y_score: [N] scores (any real values; ties form one threshold).

    Returns:
        The AP; 0.0 when ``y_true`` has no positive (sklearn's current convention).
    """
    positives = int(y_true.sum())
    if positives == 0:
        return 0.0
    ap, prev_recall = 0.0, 0.0
    for threshold in np.unique(y_score)[::-1]:  # descending
        selected = y_score >= threshold
        tp = int(y_true[selected].sum())
        recall = tp / positives
        ap += (recall - prev_recall) * tp / int(selected.sum())
        prev_recall = recall
    return ap


def nsynth_scores(hyps: Sequence[str], refs: Sequence[str]) -> NSynthResult:
    """Score NSynth note analysis (see the module docstring for each figure).

    Args:
        hyps: decoded outputs with their ``<|pitch|>...`` tags.
        refs: reference outputs in the same format.

    Returns:
        The scores over all pairs.
    """
    check_pairs(hyps, refs, NSYNTH_VERSION)
    h = [parse_note_analysis(t) for t in hyps]
    r = [parse_note_analysis(t) for t in refs]
    n = len(r)
    column = {p: i for i, p in enumerate(sorted({x.pitch for x in h + r}))}
    qualities = sorted({q for x in h + r for q in x.qualities})
    truth = np.array([[q in x.qualities for q in qualities] for x in r], dtype=np.int64)
    predicted = np.array([[q in x.qualities for q in qualities] for x in h], dtype=np.int64)
    per_quality = [average_precision(truth[:, j], predicted[:, j]) for j in range(len(qualities))]
    return NSynthResult(
        pitch_accuracy=sum(a.pitch == b.pitch for a, b in zip(h, r)) / n,
        chroma_accuracy_official=sum(column[a.pitch] % 12 == column[b.pitch] % 12
                                     for a, b in zip(h, r)) / n,
        pitch_class_accuracy=sum(a.pitch != UNPARSED_MIDI and a.pitch % 12 == b.pitch % 12
                                 for a, b in zip(h, r)) / n,
        instrument_accuracy=sum(a.instrument == b.instrument for a, b in zip(h, r)) / n,
        velocity_accuracy=sum(a.velocity == b.velocity for a, b in zip(h, r)) / n,
        qualities_map=float(np.mean(per_quality)) if per_quality else float("nan"),
        count=n,
    )


def parse_word_timestamps(text: str) -> list[tuple[str, float, float]] | None:
    """Split ``<|0.00|>word<|0.52|>word<|0.90|>`` into (word, start, end) triples.

    The task tags ``<|startoftranscript|>``, ``<|transcribe|>`` and one language tag (``en``
    or ``zh``) are removed first; text before the first or after the last timestamp is ignored.

    Returns:
        The words with their spans, or None when the output is not an alternation of
        timestamps and words.
    """
    body = text.replace("<|startoftranscript|>", "").replace("<|transcribe|>", "")
    for lang in ("<|en|>", "<|zh|>"):
        if lang in body:
            body = body.replace(lang, "")
            break
    times = [float(t[2:-2]) for t in _TIMESTAMP.findall(body)]
    words = _TIMESTAMP.split(body)[1:-1]
    if len(times) != len(words) + 1:
        return None
    return [(w, times[i], times[i + 1]) for i, w in enumerate(words)]


def average_shift(hyps: Sequence[str], refs: Sequence[str]) -> AverageShiftResult:
    """SRWT average shift between hypothesis and reference word timestamps.

    Args:
        hyps: decoded timestamped outputs.
        refs: timestamped references.

    Returns:
        The pooled average shift.

    Raises:
        ScoringError: misaligned or empty inputs, or no word aligned anywhere.
    """
    check_pairs(hyps, refs, SRWT_VERSION)
    shift, aligned, parsed = 0.0, 0, 0
    for hyp, ref in zip(hyps, refs):
        h, r = parse_word_timestamps(hyp), parse_word_timestamps(ref)
        if h is None or r is None:
            continue
        parsed += 1
        matcher = edit_distance.SequenceMatcher([w for w, _, _ in r], [w for w, _, _ in h])
        for tag, i, _, j, _ in matcher.get_opcodes():
            if tag == "equal":
                shift += abs(h[j][1] - r[i][1]) + abs(h[j][2] - r[i][2])
                aligned += 1
    if aligned == 0:
        raise ScoringError(f"{SRWT_VERSION}: no word of any hypothesis aligns with its reference")
    return AverageShiftResult(shift / aligned, aligned, parsed, len(refs) - parsed)
