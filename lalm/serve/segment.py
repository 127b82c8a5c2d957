"""Live audio cut into segments to transcribe: energy voice activity, a longest segment, and the
stitching of segments that a cut in running speech makes overlap.

`Segmenter` takes 16 kHz samples as they arrive, in pieces of any size, and classifies each
10-ms frame (160 samples) as speech when its level is above a threshold in dB full scale. A
segment opens at the first speech frame, ``prefix_padding_ms`` earlier (never before the end
of the previous segment), and closes once ``silence_duration_ms`` of silence follow speech; it
keeps the speech and up to ``prefix_padding_ms`` of the silence after it. Silence between
segments is dropped, so a segment boundary always lies in a pause.

A segment may last ``max_segment_s`` at most. When speech runs that long, it is cut in the
longest pause of at least ``min_gap_ms`` (200 ms: between words; a stop consonant's closure
inside a word is shorter) within its last third: the next segment starts there, no overlap.
Where there is none (running speech), it is cut at the quietest frame of that stretch and the
next segment starts ``overlap_s`` earlier, so that both hear the word the cut falls in.
`stitch_overlap` then joins the two texts by aligning the words they share
(`lalm.longform.stitch_texts_by_window`), each word kept once.

The segmentation depends on the samples only, never on how they were split into pieces (a
frame is classified once it is complete), so a session and `segment_recording` over the same
recording give the same segments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lalm.audio import HOP_LENGTH, SAMPLE_RATE, Seconds
from lalm.errors import AudioError
from lalm.longform import Window, stitch_texts_by_window

FRAME = HOP_LENGTH  # 160 samples = 10 ms: the unit of voice activity
FRAMES_PER_SECOND = SAMPLE_RATE // FRAME  # 100


@dataclass(frozen=True)
class TurnDetection:
    """Voice-activity settings (OpenAI's ``server_vad`` fields).

    Attributes:
        threshold: 0..1, the speech level: a frame is speech above -80 + 60 * threshold dB
            full scale (0.5: -50 dBFS, a quiet voice is about -35, a quiet room -60 to -70).
        prefix_padding_ms: audio kept before speech starts (and after it ends).
        silence_duration_ms: silence that ends a segment.
    """

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0):
            raise AudioError(f"threshold must be a number in 0..1, got {self.threshold!r}")
        for name, low, high in (("prefix_padding_ms", 0, 5000),
                                ("silence_duration_ms", 10, 10000)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise AudioError(f"{name} must be an integer in {low}..{high}, got {value!r}")

    @property
    def threshold_db(self) -> float:
        """The speech level in dB full scale."""
        return -80.0 + 60.0 * self.threshold


@dataclass(frozen=True)
class Segment:
    """A stretch of the stream to transcribe.

    Attributes:
        start: first sample, counted from the start of the stream.
        end: past the last sample.
        samples: float32 [end - start] at 16 kHz.
        overlapped: the next segment starts before ``end`` (a cut in running speech): the two
            transcripts are joined by `stitch_overlap`.
        reason: why it ended: "silence", "max_length" or "commit" (the client's).
    """

    start: int
    end: int
    samples: np.ndarray
    overlapped: bool = False
    reason: str = "silence"

    @property
    def start_ms(self) -> int:
        """``start`` in milliseconds."""
        return self.start * 1000 // SAMPLE_RATE

    @property
    def end_ms(self) -> int:
        """``end`` in milliseconds."""
        return self.end * 1000 // SAMPLE_RATE


@dataclass(frozen=True)
class SpeechStarted:
    """Voice activity found speech at sample ``at`` (the segment starts at ``start``)."""

    at: int
    start: int


@dataclass(frozen=True)
class SpeechStopped:
    """Speech ended at sample ``at`` (silence long enough followed)."""

    at: int


Event = SpeechStarted | SpeechStopped | Segment


class Segmenter:
    """Cuts a live stream of 16 kHz samples into segments (see the module docstring).

    Args:
        detection: voice-activity settings; None for none (segments only on `commit`).
        max_segment_s: longest segment, in seconds (at most the encoder's window).
        overlap_s: overlap of the two segments of a cut in speech without a pause, at most a
            third of ``max_segment_s``.
        min_gap_ms: shortest pause a cut in running speech may fall in.

    Raises:
        AudioError: a bad value.
    """

    def __init__(self, detection: TurnDetection | None, max_segment_s: Seconds = 15.0,
                 overlap_s: Seconds = 2.0, min_gap_ms: int = 200) -> None:
        if not (isinstance(max_segment_s, (int, float)) and 1.0 <= max_segment_s <= 30.0):
            raise AudioError(f"max_segment_s must be in 1..30 s, got {max_segment_s!r}")
        if not (isinstance(overlap_s, (int, float)) and 0.0 < overlap_s <= max_segment_s / 3):
            raise AudioError(f"overlap_s must be in (0, max_segment_s / 3], got {overlap_s!r}")
        self.detection = detection
        self.max_frames = int(max_segment_s * FRAMES_PER_SECOND)
        self.overlap_frames = max(1, round(overlap_s * FRAMES_PER_SECOND))
        self.min_gap_frames = max(1, math.ceil(min_gap_ms / 10))
        self._audio = np.zeros(0, np.float32)  # samples from sample `_base` on
        self._base = 0
        self._levels: list[float] = []  # dB of each complete frame from frame `_level_base`
        self._level_base = 0
        self._start: int | None = None  # the open segment's first frame
        self._floor = 0  # frames before this belong to earlier segments
        self._last_speech = -1  # last speech frame of the open segment

    @property
    def n_samples(self) -> int:
        """Samples received so far."""
        return self._base + self._audio.shape[0]

    @property
    def speaking(self) -> bool:
        """Whether a segment is open."""
        return self._start is not None

    def push(self, samples: np.ndarray) -> list[Event]:
        """Add samples (float32 [n] at 16 kHz); returns what they complete, in order.

        Returns:
            `SpeechStarted`, `SpeechStopped` and finished `Segment`s.
        """
        self._audio = np.concatenate([self._audio, np.asarray(samples, np.float32)])
        events: list[Event] = []
        done = self._level_base + len(self._levels)  # frames classified so far
        while (done + 1) * FRAME <= self.n_samples:
            frame = self._slice(done * FRAME, (done + 1) * FRAME)
            power = float(np.mean(np.square(frame, dtype=np.float64)))
            self._levels.append(10.0 * math.log10(power + 1e-12))
            events += self._step(done)
            done += 1
        self._trim()
        return events

    def commit(self) -> Segment | None:
        """End the segment here (the client's commit): the open segment, or without voice
        activity everything since the last segment; None when that is under 100 ms."""
        frames = self.n_samples // FRAME
        start = self._start if self._start is not None else (
            self._floor if self.detection is None else None)
        if start is None or frames - start < 10:
            return None
        return self._close(start, frames, "commit")

    def clear(self) -> None:
        """Drop what is not yet in a segment."""
        self._floor = self.n_samples // FRAME
        self._start, self._last_speech = None, -1
        self._trim()

    # ------------------------------------------------------------------ internals

    def _slice(self, lo: int, hi: int) -> np.ndarray:
        return self._audio[lo - self._base:hi - self._base]

    def _level(self, frame: int) -> float:
        return self._levels[frame - self._level_base]

    def _is_speech(self, frame: int) -> bool:
        assert self.detection is not None
        return self._level(frame) > self.detection.threshold_db

    def _step(self, frame: int) -> list[Event]:
        """Voice activity after frame ``frame`` is classified."""
        if self.detection is None:
            start = self._floor if self._start is None else self._start
            if frame + 1 - start >= self.max_frames:
                return self._cut(start, frame + 1)
            return []
        pad = self.detection.prefix_padding_ms // 10
        speech = self._is_speech(frame)
        if self._start is None:
            if not speech:
                return []
            self._start = max(self._floor, frame - pad)
            self._last_speech = frame
            return [SpeechStarted(frame * FRAME, self._start * FRAME)]
        if speech:
            self._last_speech = frame
        elif frame - self._last_speech >= self.detection.silence_duration_ms // 10:
            stopped = SpeechStopped((self._last_speech + 1) * FRAME)
            # a segment that overlaps the previous one covers the overlap at least
            end = max(min(frame + 1, self._last_speech + 1 + pad), self._floor)
            if end <= self._start:  # opened by a cut after the last speech: silence only
                self._start = None
                return [stopped]
            return [stopped, self._close(self._start, end, "silence")]
        if frame + 1 - self._start >= self.max_frames:
            return self._cut(self._start, frame + 1)
        return []

    def _cut(self, start: int, end: int) -> list[Event]:
        """A segment [start, end) frames at its longest: cut in its last third."""
        lo = end - self.max_frames // 3
        if self.detection is not None:
            gap, longest, best = 0, 0, None  # the longest pause long enough (the latest of
            for f in range(lo, end):  # equals): its middle
                gap = 0 if self._is_speech(f) else gap + 1
                if gap >= max(self.min_gap_frames, longest):
                    longest, best = gap, f - gap // 2
            if best is not None:
                segment = self._close(start, best + 1, "max_length")
                self._start = best + 1
                return [segment]
        levels = [self._level(f) for f in range(lo, end)]
        cut = lo + int(np.argmin(levels)) + 1  # after the quietest frame
        segment = self._close(start, cut, "max_length", overlapped=True)
        self._start = cut - self.overlap_frames  # it starts before the previous one's end
        return [segment]

    def _close(self, start: int, end: int, reason: str, overlapped: bool = False) -> Segment:
        """The segment [start, end) frames; the next one starts at ``end`` or later."""
        segment = Segment(start * FRAME, min(end * FRAME, self.n_samples),
                          self._slice(start * FRAME, end * FRAME).copy(), overlapped, reason)
        self._start, self._floor = None, end
        return segment

    def _trim(self) -> None:
        """Forget samples and levels no segment can still use."""
        keep = self._start if self._start is not None else self._floor
        if self.detection is not None and self._start is None:
            pad = self.detection.prefix_padding_ms // 10
            keep = max(self._floor, self.n_samples // FRAME - pad)
        keep = min(keep, self.n_samples // FRAME)
        drop = keep * FRAME - self._base
        if drop > 0:
            self._audio = self._audio[drop:]
            self._base += drop
        del self._levels[:max(0, keep - self._level_base)]
        self._level_base = max(self._level_base, keep)


def segment_recording(samples: np.ndarray, detection: TurnDetection | None,
                      max_segment_s: Seconds = 15.0, overlap_s: Seconds = 2.0,
                      min_gap_ms: int = 200, piece: int | None = None) -> list[Segment]:
    """The segments a session cuts a whole recording into (fed in pieces of ``piece``
    samples, default all at once; the result is the same for any piece size).

    Args:
        samples: float32 [N] at 16 kHz.
        detection, max_segment_s, overlap_s, min_gap_ms: as `Segmenter`.
        piece: samples per push.

    Returns:
        The segments, in order (an open segment at the end is not included).
    """
    segmenter = Segmenter(detection, max_segment_s, overlap_s, min_gap_ms)
    step = piece or max(1, samples.shape[0])
    events: list[Event] = []
    for lo in range(0, samples.shape[0], step):
        events += segmenter.push(samples[lo:lo + step])
    return [e for e in events if isinstance(e, Segment)]


def stitch_overlap(first: Segment, first_text: str, second: Segment, second_text: str,
                   spaceless: bool = False) -> tuple[str, str]:
    """Split the words of two overlapping segments' transcripts, each word once.

    Args:
        first: the earlier segment (``first.overlapped``); its text may already lack the
            words a previous overlap gave to its predecessor.
        first_text: what is still unclaimed of its transcript.
        second: the segment after it, starting before ``first.end``.
        second_text: its transcript.
        spaceless: units are characters (Chinese, Japanese).

    Returns:
        (the first segment's final text, what the second keeps of its own).
    """
    windows = [Window(first.start, first.end), Window(second.start, max(second.end,
                                                                         first.end))]
    a, b = stitch_texts_by_window(windows, [first_text, second_text], spaceless)
    sep = "" if spaceless else " "
    return sep.join(a.units), sep.join(b.units)


def join_texts(texts: Sequence[str], spaceless: bool = False) -> str:
    """Segment transcripts as one text (empty ones skipped)."""
    return ("" if spaceless else " ").join(t.strip() for t in texts if t.strip())
