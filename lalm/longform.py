"""Audio longer than one 30-s encoder window, made explicit: windows for chat and transcription.

The encoder of both checkpoint families sees at most 30 s (1500 positions after the conv stem),
and the reference tools drop whatever comes later without a word. lalm splits long audio on
purpose, in one of two ways, with pure functions over samples, windows and per-window words
(nothing here knows the model, so any transcriber can be windowed and stitched):

* **Chat and analysis** (`split_for_chat`, `chat_audio_token_count`, `join_window_rows`): a clip
  longer than the window is cut into K consecutive windows of at most 30 s, of near-equal
  length on the 640-sample grid of one audio token (no window is a sliver). Each window is
  encoded on its own; their audio rows go one after another into the clip's single audio span,
  so the prompt still holds one audio per clip. A clip longer than ``max_duration_s`` is an
  `AudioError`, never silently cut.

  Token cost: 4 mel frames (640 samples, 40 ms) make one audio token, so **25 audio tokens per
  second, 750 per full 30-s window, 1500 per minute** in both families. Around them each clip
  adds 2 positions in either family: Qwen2-Audio's ``<|audio_bos|>`` / ``<|audio_eos|>`` text
  tokens, v1's learned BOS/EOS rows in the ``<audio>`` / ``</audio>`` slots. Those 2 are per
  clip, not per window: `join_window_rows` keeps the first window's BOS and the last one's EOS
  (so a 2-minute clip costs 3000 + 2 positions, not 3000 + 8 as one audio per window would).
  The default limit, 300 s = 7500 audio tokens, fits the 8192-position context of the 7B
  decoders with room for the prompt and the answer.

* **Long-form transcription** (`plan_windows`, `speech_regions`, `stitch_words`, `stitch_texts`;
  `stitch_words_by_window` / `stitch_texts_by_window` also say what each window contributes and
  where in the recording, for per-window segments): windows of at most 30 s (SRWT timestamps
  stop at 30.00) either at a fixed stride with overlap, or cut in silences found by a
  voice-activity detector (energy-based here, or any detector's speech regions), with an overlap
  only where no silence lets a cut fall between words. Each window is transcribed alone, then
  the per-window outputs are stitched: word lists with times by choosing, in each overlap, a cut
  inside the widest pause that neither window puts a word in, each window keeping the words that
  start on its side; plain texts by aligning the words the two windows share in their overlap. A
  word cut by a window edge is heard whole by the neighbouring window, and that is the copy
  kept.

Sample positions are 16 kHz sample indices; times are seconds.
"""

from __future__ import annotations

import difflib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lalm.audio import (
    CHUNK_LENGTH,
    HOP_LENGTH,
    SAMPLE_RATE,
    RealLength,
    Seconds,
    audio_token_count,
    mel_length,
)
from lalm.errors import AudioError
from lalm.prompt import TimedWord

TOKEN_SAMPLES = 4 * HOP_LENGTH  # 640 samples = 4 mel frames -> 2 conv frames -> 1 audio token
TOKENS_PER_SECOND = SAMPLE_RATE // TOKEN_SAMPLES  # 25: 750 per 30-s window, 1500 per minute
MAX_WINDOW_S: Seconds = float(CHUNK_LENGTH)  # the encoder's 30 s (and SRWT's last timestamp)
DEFAULT_MAX_CHAT_S: Seconds = 300.0  # 7500 audio tokens: fits the 7B models' 8192 positions
DEFAULT_OVERLAP_S: Seconds = 5.0  # transcription overlap where windows cannot meet in a pause
DEFAULT_MAX_TRANSCRIBE_S: Seconds = 4 * 3600.0  # longest recording long-form transcription takes

Region = tuple[int, int]  # [start, end) in samples


def _grid(seconds: Seconds, step: int, name: str, lowest: int, highest: Seconds) -> int:
    """``seconds`` as samples rounded down to a multiple of ``step``, checked to lie in
    [lowest samples, highest seconds]."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not math.isfinite(seconds):
        raise AudioError(f"{name} must be a number of seconds, got {seconds!r}")
    samples = int(seconds * SAMPLE_RATE) // step * step
    if samples < lowest or seconds > highest:
        raise AudioError(f"{name}={seconds!r} s is outside {lowest / SAMPLE_RATE:g}..{highest:g} s")
    return samples


def _samples(audio: np.ndarray | Tensor, name: str = "audio") -> int:
    """Length of non-empty 1-D float samples, else AudioError."""
    dtype_ok = audio.is_floating_point() if isinstance(audio, Tensor) else \
        isinstance(audio, np.ndarray) and audio.dtype.kind == "f"
    if not dtype_ok or audio.ndim != 1:
        raise AudioError(f"{name}: expected 1-D float samples at 16 kHz, got "
                         f"{getattr(audio, 'dtype', type(audio).__name__)} "
                         f"{tuple(getattr(audio, 'shape', ()))}")
    if audio.shape[0] == 0:
        raise AudioError(f"{name}: no audio samples")
    return int(audio.shape[0])


# ---------------------------------------------------------------------------------------------
# Chat: one clip as consecutive windows in one audio span
# ---------------------------------------------------------------------------------------------


def _chat_bounds(n_samples: int, window: int) -> list[Region]:
    """K = ceil(n / window) near-equal windows; all but the last a multiple of 640 samples."""
    if n_samples <= window:
        return [(0, n_samples)]
    k = -(-n_samples // window)
    step = -(-n_samples // (k * TOKEN_SAMPLES)) * TOKEN_SAMPLES  # <= window: window is on grid
    return [(s, min(s + step, n_samples)) for s in range(0, n_samples, step)]


def split_for_chat(
    audio: np.ndarray | Tensor,
    max_window_s: Seconds = MAX_WINDOW_S,
    max_duration_s: Seconds | None = DEFAULT_MAX_CHAT_S,
) -> list[np.ndarray | Tensor]:
    """Cut one clip into the consecutive windows its chat prompt encodes.

    Windows are near-equal (a 61-s clip gives 3 windows of about 20.3 s, not 30 + 30 + 1),
    every one but the last a multiple of 640 samples so that no audio token is split across
    windows, and each at most ``max_window_s``. Their concatenation is the clip, sample for
    sample. A clip no longer than one window comes back as the only window, unchanged.

    Args:
        audio: float [N] samples at 16 kHz (numpy or torch).
        max_window_s: longest window in seconds, at most 30 (rounded down to 0.04 s).
        max_duration_s: longest clip accepted, in seconds; None for no limit.

    Returns:
        K views of ``audio``, [N_k] each, in order; sum(N_k) = N.

    Raises:
        AudioError: not 1-D float samples, a bad window length, or a clip longer than
            ``max_duration_s`` (the message gives both durations).
    """
    n = _samples(audio)
    window = _grid(max_window_s, TOKEN_SAMPLES, "max_window_s", TOKEN_SAMPLES, MAX_WINDOW_S)
    if max_duration_s is not None and n > max_duration_s * SAMPLE_RATE:
        raise AudioError(f"audio: {n / SAMPLE_RATE:.2f} s is longer than the chat limit "
                         f"max_duration_s={max_duration_s:g} s ({TOKENS_PER_SECOND} audio tokens "
                         "per second); raise the limit or transcribe it with long-form windows")
    return [audio[s:e] for s, e in _chat_bounds(n, window)]


def chat_audio_token_count(n_samples: int, max_window_s: Seconds = MAX_WINDOW_S,
                           real_length: RealLength = "floor",
                           tokens: Callable[[int], int] | None = None) -> int:
    """Audio tokens N of a clip of ``n_samples`` split by `split_for_chat`.

    The sum over its windows of `lalm.audio.audio_token_count` of each window's mel length
    (`lalm.audio.mel_length` under the family's `real_length` rule: "floor" for Qwen-Audio v1,
    "ceil" for Qwen2-Audio): 25 per second (N = n_samples // 640 whenever that is a whole number
    of windows' worth).
    This is the count `lalm.prompt.Prompt.encode` takes for the clip; v1 adds its 2 BOS/EOS
    slots around it, Qwen2-Audio its 2 bos/eos text tokens. ``tokens``: a window's mel length
    -> its audio tokens by the model's own rule (Qwen3-ASR's encoder gives about 13 per
    second); None: `audio_token_count`.

    Raises:
        AudioError: a negative length or a bad window length.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
        raise AudioError(f"n_samples must be an int >= 0, got {n_samples!r}")
    window = _grid(max_window_s, TOKEN_SAMPLES, "max_window_s", TOKEN_SAMPLES, MAX_WINDOW_S)
    count = tokens or (lambda n: int(audio_token_count(n)))
    return sum(count(mel_length(e - s, real_length)) for s, e in _chat_bounds(n_samples, window))


def join_window_rows(rows: Sequence[Tensor], boundary_rows: bool) -> Tensor:
    """One clip's audio rows from its windows' rows, in order.

    Args:
        rows: K tensors [R_k, D], one per window (`AudioLanguageModel.embed_audio` on the
            windows of `split_for_chat`): R_k = N_k, or N_k + 2 framed by BOS and EOS rows.
        boundary_rows: True when each window's rows are framed by BOS/EOS (Qwen-Audio v1).

    Returns:
        [sum N_k, D], or [sum N_k + 2, D] = [BOS, frames of every window, EOS] with
        ``boundary_rows``: the rows of the clip's single audio span.

    Raises:
        AudioError: no windows, or a framed window with fewer than 2 rows.
    """
    if not rows:
        raise AudioError("join_window_rows needs the rows of at least one window")
    if not boundary_rows or len(rows) == 1:
        return torch.cat(list(rows))
    if any(r.shape[0] < 2 for r in rows):
        raise AudioError(f"framed window rows need BOS and EOS, got {[r.shape[0] for r in rows]}")
    inner = [r[1:-1] for r in rows[1:-1]]
    return torch.cat([rows[0][:-1], *inner, rows[-1][1:]])


# ---------------------------------------------------------------------------------------------
# Transcription: window planning
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A span of the recording that is transcribed on its own.

    Attributes:
        start: first sample (inclusive).
        end: last sample (exclusive).
    """

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise AudioError(f"a window needs 0 <= start < end, got [{self.start}, {self.end})")

    @property
    def start_s(self) -> Seconds:
        """Offset of the window in the recording: add it to window-local times."""
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> Seconds:
        """End of the window in the recording, in seconds."""
        return self.end / SAMPLE_RATE

    def clip(self, audio: np.ndarray | Tensor) -> np.ndarray | Tensor:
        """The window's samples, a view of ``audio`` [N]: [end - start]."""
        return audio[self.start:self.end]


def _frame_power(audio: np.ndarray | Tensor) -> np.ndarray:
    """Mean square of each 10-ms frame (160 samples; the last one zero-padded): float64 [F]."""
    x = audio.detach().cpu().numpy() if isinstance(audio, Tensor) else audio
    x = np.asarray(x, dtype=np.float64)
    frames = np.pad(x, (0, -x.shape[0] % HOP_LENGTH)).reshape(-1, HOP_LENGTH)
    return np.square(frames).mean(axis=1)


@dataclass(frozen=True)
class Loudness:
    """What window planning needs of a recording, without its samples: 8 bytes per 10 ms.

    `speech_regions` and `plan_windows` take it in place of the samples (and give the same
    result), so a recording decoded block by block (`measure_loudness`) is planned without
    ever being held whole.

    Attributes:
        n_samples: length of the recording in 16 kHz samples (> 0).
        power: float64 [ceil(n_samples / 160)], mean square of each 10-ms frame (the last one
            zero-padded).
    """

    n_samples: int
    power: np.ndarray


def measure_loudness(blocks: Iterable[np.ndarray]) -> Loudness:
    """The `Loudness` of a recording given as consecutive float [n] blocks at 16 kHz (the
    blocks of `lalm.audio.stream_audio`); holds one block and a frame's remainder at a time.

    Raises:
        AudioError: no samples.
    """
    powers, rest, n = [], np.zeros(0, dtype=np.float64), 0
    for block in blocks:
        x = np.concatenate([rest, np.asarray(block, dtype=np.float64)])
        whole = x.shape[0] // HOP_LENGTH * HOP_LENGTH
        powers.append(_frame_power(x[:whole]))
        rest, n = x[whole:], n + block.shape[0]
    if n == 0:
        raise AudioError("audio: no audio samples")
    if rest.shape[0]:
        powers.append(_frame_power(rest))
    return Loudness(n, np.concatenate(powers))


def _measure(audio: np.ndarray | Tensor | Loudness) -> Loudness:
    if isinstance(audio, Loudness):
        return audio
    n = _samples(audio)
    return Loudness(n, _frame_power(audio))


def window_clips(blocks: Iterable[np.ndarray], windows: Sequence[Window]) -> Iterator[np.ndarray]:
    """The samples of each window, in order, cut from a recording given as consecutive blocks.

    Holds at most one window plus one block: samples before the next window's start are
    dropped as soon as they are passed. A window inside one block is a view of it.

    Args:
        blocks: float [n] blocks at 16 kHz, in order (`lalm.audio.stream_audio`).
        windows: windows with increasing starts and ends (`plan_windows`).

    Yields:
        float [end - start] per window.

    Raises:
        AudioError: the blocks end before a window does.
    """
    held: list[np.ndarray] = []
    offset, end = 0, 0  # recording positions of the first held sample and past the last one
    blocks = iter(blocks)
    for w in windows:
        while True:
            while held and offset + held[0].shape[0] <= w.start:  # wholly before the window
                offset += held.pop(0).shape[0]
            if end >= w.end:
                break
            block = next(blocks, None)
            if block is None:
                raise AudioError(f"audio: ends before window [{w.start}, {w.end})")
            held.append(block)
            end += block.shape[0]
        lo = w.start - offset
        if held[0].shape[0] >= w.end - offset:
            yield held[0][lo:w.end - offset]
        else:
            yield np.concatenate(held)[lo:w.end - offset]


def speech_regions(
    audio: np.ndarray | Tensor | Loudness,
    *,
    min_silence_s: Seconds = 0.3,
    dynamic_range_db: float = 40.0,
    noise_margin_db: float = 6.0,
) -> list[Region]:
    """Energy-based voice activity: where the recording is louder than its silences.

    A 10-ms frame is speech when its energy is above both (loudest frame - dynamic_range_db)
    and (the 10th-percentile frame + noise_margin_db), the latter tracking a noise floor. Pauses
    shorter than ``min_silence_s`` are joined into the speech around them, so every gap between
    two returned regions is a pause at least that long.

    Args:
        audio: float [N] samples at 16 kHz, or their `Loudness`.
        min_silence_s: shortest pause that separates two regions.
        dynamic_range_db: how far below the loudest frame speech may be.
        noise_margin_db: how far above the noise floor speech must be.

    Returns:
        Speech regions [start, end) in samples, in order, on the 160-sample grid (the last end
        clipped to N); empty for silence.
    """
    loudness = _measure(audio)
    n = loudness.n_samples
    level = 10.0 * np.log10(loudness.power + 1e-12)  # dB per frame
    threshold = max(level.max() - dynamic_range_db, np.percentile(level, 10) + noise_margin_db)
    loud = np.flatnonzero(level > threshold)
    if loud.size == 0:
        return []
    min_gap = max(1, round(min_silence_s * SAMPLE_RATE / HOP_LENGTH))
    breaks = np.flatnonzero(np.diff(loud) > min_gap)  # a pause of >= min_gap frames follows
    starts = np.concatenate([loud[:1], loud[breaks + 1]])
    ends = np.concatenate([loud[breaks], loud[-1:]]) + 1
    return [(int(s) * HOP_LENGTH, min(int(e) * HOP_LENGTH, n)) for s, e in zip(starts, ends)]


def _quietest(smooth: np.ndarray, lo: int, hi: int) -> int:
    """Sample position in [lo, hi) of the lowest of ``smooth`` (frame energies averaged over
    100 ms, [F]), the one nearest the middle on ties."""
    f_lo, f_hi = lo // HOP_LENGTH, max(lo // HOP_LENGTH + 1, hi // HOP_LENGTH)
    smooth = smooth[f_lo:f_hi]
    ties = np.flatnonzero(smooth <= smooth.min() * (1 + 1e-9) + 1e-20)
    centre = (f_hi - f_lo - 1) / 2
    return (f_lo + int(ties[np.argmin(np.abs(ties - centre))])) * HOP_LENGTH


def plan_windows(
    audio: np.ndarray | Tensor | Loudness,
    *,
    window_s: Seconds = MAX_WINDOW_S,
    overlap_s: Seconds = DEFAULT_OVERLAP_S,
    speech: Sequence[Region] | None = None,
) -> list[Window]:
    """Windows for long-form transcription, each at most ``window_s``, starts on the 10-ms grid.

    Without ``speech``: fixed windows every (window_s - overlap_s) seconds; the last one is
    moved back to end with the audio (a full window, never a sliver). With ``speech`` (from
    `speech_regions` or any detector): windows cover the speech only, each cut in the latest
    pause that fits, at its quietest point, so neighbours meet between words without overlap;
    where a stretch of speech runs longer than a window with no pause, the window ends at
    full length and the next starts ``overlap_s`` earlier. Silence farther than 0.2 s from
    speech is skipped.

    Args:
        audio: float [N] samples at 16 kHz, or their `Loudness`.
        window_s: longest window, at most 30 s.
        overlap_s: overlap of neighbours that cannot meet in a pause, at most window_s / 2.
        speech: speech regions [start, end) in samples (any order; overlaps are merged);
            None for fixed windows.

    Returns:
        Windows in order of start (starts strictly increasing, ends increasing); empty when
        ``speech`` holds no region.

    Raises:
        AudioError: not 1-D float samples, or window_s / overlap_s out of range.
    """
    loudness = _measure(audio)
    n = loudness.n_samples
    window = _grid(window_s, HOP_LENGTH, "window_s", HOP_LENGTH, MAX_WINDOW_S)
    overlap = _grid(overlap_s, HOP_LENGTH, "overlap_s", 0, window_s / 2)
    if speech is None:
        if n <= window:
            return [Window(0, n)]
        step = window - overlap
        starts = list(range(0, n - window, step))
        return [Window(s, s + window) for s in starts] + [
            Window(-(-(n - window) // HOP_LENGTH) * HOP_LENGTH, n)]
    regions: list[list[int]] = []  # sorted, overlapping regions merged
    for s, e in sorted((max(0, int(s)), min(n, int(e))) for s, e in speech):
        if regions and s <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], e)
        elif e > s:
            regions.append([s, e])
    if not regions:
        return []
    pad = round(0.2 * SAMPLE_RATE) // HOP_LENGTH * HOP_LENGTH
    smooth = np.convolve(loudness.power, np.ones(10) / 10, mode="same")
    # per pause between regions: (its start, the quietest point in it, its end)
    pauses = [(a, _quietest(smooth, a, b), b) for (_, a), (b, _) in itertools.pairwise(regions)]
    finish = min(n, regions[-1][1] + pad)
    pos = max(0, regions[0][0] - pad) // HOP_LENGTH * HOP_LENGTH
    windows: list[Window] = []
    while finish - pos > window:
        limit = pos + window
        fits = [p for p in pauses if pos < p[0] < limit]
        if fits:
            before, cut, after = fits[-1]
            windows.append(Window(pos, min(cut, before + pad, limit)))
            pos = max(cut, (after - pad) // HOP_LENGTH * HOP_LENGTH)
        else:
            windows.append(Window(pos, limit))
            pos = limit - overlap
    windows.append(Window(pos, finish))
    return windows


# ---------------------------------------------------------------------------------------------
# Transcription: stitching
# ---------------------------------------------------------------------------------------------


def _check_windows(windows: Sequence[Window], outputs: Sequence[object], what: str) -> None:
    if len(windows) != len(outputs):
        raise AudioError(f"{len(windows)} windows but {len(outputs)} {what}")
    for a, b in itertools.pairwise(windows):
        if not (a.start < b.start and a.end <= b.end):
            raise AudioError(f"windows must advance: {a} is followed by {b}")


def _widest_pause(spans: Sequence[tuple[Seconds, Seconds]], lo: Seconds, hi: Seconds) -> Seconds:
    """Middle of the widest stretch of [lo, hi] that no span covers (ties: nearest the middle);
    the middle of [lo, hi] when spans cover all of it."""
    middle = (lo + hi) / 2
    best, best_key = middle, (0.0, 0.0)
    cursor = lo
    for s, e in sorted((max(s, lo), min(e, hi)) for s, e in spans if e > lo and s < hi):
        if s > cursor:
            key = (s - cursor, -abs((s + cursor) / 2 - middle))
            if key > best_key:
                best, best_key = (s + cursor) / 2, key
        cursor = max(cursor, e)
    if hi > cursor and (hi - cursor, -abs((hi + cursor) / 2 - middle)) > best_key:
        best = (hi + cursor) / 2
    return best


def _norm(word: str) -> str:
    return re.sub(r"[^\w']", "", word.casefold())


@dataclass(frozen=True)
class WindowShare:
    """What one window contributes to a stitched transcript.

    Attributes:
        window: the window.
        start: where its share of the recording starts, in seconds: the window's start, or
            where the overlap with the previous window is cut (`stitch_words_by_window`: in
            the pause the cut falls in; `stitch_texts_by_window`: the overlap's middle).
        end: where its share ends, in seconds, cut likewise against the next window.
        units: the transcript's words (characters when spaceless) taken from this window,
            in order; the units of all shares in order are the whole transcript.
        words: those words with their times in the recording (`stitch_words_by_window`);
            () for shares of plain texts.
    """

    window: Window
    start: Seconds
    end: Seconds
    units: tuple[str, ...]
    words: tuple[TimedWord, ...] = ()


def stitch_words_by_window(
    windows: Sequence[Window], words: Sequence[Sequence[TimedWord]]
) -> list[WindowShare]:
    """Join per-window timed words into one list over the recording, each word once, and say
    which window each word comes from.

    Steps, for each pair of neighbouring windows A, B:
    1. Shift both windows' words by their offsets (`Window.start_s`).
    2. In the stretch both windows hear ([B.start, A.end], after the previous cut), take the
       widest pause in which neither window places a word and cut at its middle; A keeps the
       words that start before the cut, B those that start at or after it. A word cut by a
       window edge lies across that edge, so no pause is found there: it is kept from the
       window that hears it whole. Windows that do not overlap are cut where B starts.
    3. If speech fills the whole overlap (no pause), the cut falls mid-overlap; should both
       windows then keep the same word (equal text, overlapping times), B's copy is dropped.

    Args:
        windows: the windows, in order (`plan_windows`).
        words: per window, its words with times local to the window (SRWT words of
            `lalm.prompt.parse_output`).

    Returns:
        One share per window, in order: its kept words with times in the recording, and the
        stretch of the recording between its cuts.

    Raises:
        AudioError: windows and word lists differ in number, or windows do not advance.
    """
    _check_windows(windows, words, "word lists")
    placed = [[TimedWord(w.word, w.start + win.start_s, w.end + win.start_s) for w in ws]
              for win, ws in zip(windows, words)]
    shares: list[WindowShare] = []
    last: TimedWord | None = None  # the last word kept so far
    low = -math.inf
    for k, own in enumerate(placed):
        if k + 1 < len(placed):
            lo, hi = max(windows[k + 1].start_s, low), windows[k].end_s
            spans = [(w.start, w.end) for w in own + placed[k + 1] if w.start >= low]
            high = _widest_pause(spans, lo, hi) if hi > lo else lo
        else:
            high = math.inf
        kept = [w for w in own if low <= w.start < high]
        if last is not None and kept and _norm(last.word) == _norm(kept[0].word) \
                and kept[0].start < last.end:
            kept = kept[1:]
        window = windows[k]
        shares.append(WindowShare(window, max(window.start_s, low), min(window.end_s, high),
                                  tuple(w.word for w in kept), tuple(kept)))
        last = kept[-1] if kept else last
        low = high
    return shares


def stitch_words(
    windows: Sequence[Window], words: Sequence[Sequence[TimedWord]]
) -> list[TimedWord]:
    """Join per-window timed words into one list over the recording, each word once (the
    words of `stitch_words_by_window`'s shares, in order).

    Args:
        windows: the windows, in order (`plan_windows`).
        words: per window, its words with times local to the window.

    Returns:
        The words with times in the recording, in order.

    Raises:
        AudioError: windows and word lists differ in number, or windows do not advance.
    """
    return [w for share in stitch_words_by_window(windows, words) for w in share.words]


def stitch_texts_by_window(windows: Sequence[Window], texts: Sequence[str],
                           spaceless: bool = False) -> list[WindowShare]:
    """Join per-window transcripts without timestamps by aligning their overlaps, and say which
    window each word comes from.

    For each pair of neighbouring windows, the longest run of words (case and punctuation
    ignored) shared by A's last words and B's first words is taken as the stretch both heard;
    the text switches from A to B in the middle of that run. The search covers 1.5x the
    words the overlap's share of each window would hold (plus 2), so repeated phrases far from
    the boundary cannot be mistaken for it. Without a shared word the texts are concatenated.
    Without times, overlapping windows' shares of the recording meet at the overlap's middle.

    Args:
        windows: the windows, in order (`plan_windows`).
        texts: per window, its transcript.
        spaceless: units are characters, joined without spaces (Chinese, Japanese).

    Returns:
        One share per window, in order (its ``words`` empty).

    Raises:
        AudioError: windows and texts differ in number, or windows do not advance.
    """
    _check_windows(windows, texts, "texts")
    units = [list(t.replace(" ", "")) if spaceless else t.split() for t in texts]
    merged: list[str] = []
    owner: list[int] = []  # the window each unit of ``merged`` comes from (non-decreasing)
    for k, cur in enumerate(units):
        if k == 0 or not merged:
            merged, owner = list(cur), [k] * len(cur)
            continue
        a, b = windows[k - 1], windows[k]
        share = max(0, a.end - b.start)
        reach_a = math.ceil(1.5 * len(units[k - 1]) * share / max(1, a.end - a.start)) + 2
        reach_b = math.ceil(1.5 * len(cur) * share / max(1, b.end - b.start)) + 2
        tail_from = max(0, len(merged) - reach_a)
        tail = [_norm(u) for u in merged[tail_from:]]
        head = [_norm(u) for u in cur[:reach_b]]
        match = difflib.SequenceMatcher(None, tail, head, autojunk=False).find_longest_match(
            0, len(tail), 0, len(head))
        keep, take = len(merged), 0  # no shared word: concatenate
        if match.size:
            half = match.size // 2
            keep, take = tail_from + match.a + half, match.b + half
        merged, owner = merged[:keep] + cur[take:], owner[:keep] + [k] * (len(cur) - take)
    bounds = [[w.start_s, w.end_s] for w in windows]
    for k, (a, b) in enumerate(itertools.pairwise(windows)):
        if a.end > b.start:
            bounds[k][1] = bounds[k + 1][0] = (b.start_s + a.end_s) / 2
    return [WindowShare(w, start, end, tuple(u for u, o in zip(merged, owner) if o == k))
            for k, (w, (start, end)) in enumerate(zip(windows, bounds))]


def stitch_texts(windows: Sequence[Window], texts: Sequence[str], spaceless: bool = False) -> str:
    """Join per-window transcripts without timestamps by aligning their overlaps (the units of
    `stitch_texts_by_window`'s shares, in order).

    Args:
        windows: the windows, in order (`plan_windows`).
        texts: per window, its transcript.
        spaceless: units are characters, joined without spaces (Chinese, Japanese).

    Returns:
        The transcript of the recording.

    Raises:
        AudioError: windows and texts differ in number, or windows do not advance.
    """
    shares = stitch_texts_by_window(windows, texts, spaceless)
    return ("" if spaceless else " ").join(u for share in shares for u in share.units)
