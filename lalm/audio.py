"""Audio front end: decoding to 16 kHz mono (`load_audio`, `stream_audio`, from
`lalm.audio_decode`), Whisper-style log-mel over the real length, batching, SpecAugment. Pure
functions over numpy arrays and torch tensors; nothing here imports the model.

The log-mel is the one both checkpoint families were trained on (Whisper's): a centred STFT with a
periodic Hann window of 400 samples and a hop of 160, the last frame dropped, power, a slaney mel
filterbank, ``log10(max(x, 1e-10))``, a floor at (max - 8), then ``(x + 4) / 4``. The references
compute it on the waveform zero-padded to 30 s; lalm computes only the frames a clip needs and gets
the same values on them (see `log_mel_spectrogram`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lalm.audio_decode import (
    MAX_CHANNELS,
    MAX_SOURCE_RATE,
    MIN_SOURCE_RATE,
    SAMPLE_RATE,
    AudioSource,
    Seconds,
    load_audio,
    stream_audio,
)
from lalm.errors import AudioError

# SAMPLE_RATE (16 kHz, the rate every model input has) is defined with the decoder.
N_FFT = 400  # samples per STFT window: 25 ms
HOP_LENGTH = 160  # samples between frames: 10 ms, so 100 mel frames per second
N_FREQ = N_FFT // 2 + 1  # 201 one-sided frequency bins
CHUNK_LENGTH = 30  # seconds in the references' padded window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in the padded window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in the padded window
LOOKAHEAD_FRAMES = 2  # frames after a clip's real length that the Whisper conv stem reads
LOG_FLOOR_RANGE = 8.0  # log10 units kept below each clip's maximum

# How a clip of N samples counts its real mel frames L. "floor": N // 160 (Qwen-Audio v1's
# reference, and Whisper's). "ceil": ceil(N / 160) (transformers' WhisperFeatureExtractor /
# Qwen2AudioProcessor, whose attention mask samples every 160th sample): when N % 160 != 0 the
# frame N // 160 of the padded reference, which holds the clip's last samples, counts too.
RealLength = Literal["floor", "ceil"]

__all__ = [  # decoding lives in lalm.audio_decode; the front end is imported from here
    "MAX_CHANNELS", "MAX_SOURCE_RATE", "MIN_SOURCE_RATE", "SAMPLE_RATE", "AudioSource",
    "Seconds", "load_audio", "stream_audio",
    "CHUNK_LENGTH", "HOP_LENGTH", "LOG_FLOOR_RANGE", "LOOKAHEAD_FRAMES", "N_FFT", "N_FRAMES",
    "N_FREQ",
    "N_SAMPLES", "RealLength", "audio_token_count", "batch_log_mel", "log_mel_padded",
    "log_mel_spectrogram", "mel_filters", "mel_length", "spec_augment",
]


# ---------------------------------------------------------------------------------------------
# Log-mel
# ---------------------------------------------------------------------------------------------


def mel_filters(n_mels: int) -> Tensor:
    """The slaney-style mel filterbank Whisper uses (librosa's default), computed here.

    Triangles on the slaney mel scale (linear below 1 kHz, logarithmic above) between 0 Hz and
    8 kHz, each scaled to unit area (``2 / bandwidth``); computed in float64, cast to float32.

    Args:
        n_mels: number of mel bins (80 for Qwen-Audio, 128 for Qwen2-Audio).

    Returns:
        float32 [n_mels, 201] filter weights over the one-sided STFT bins.
    """
    return _mel_filters(n_mels).clone()


@functools.lru_cache(maxsize=8)
def _mel_filters(n_mels: int) -> Tensor:
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels < 1:
        raise AudioError(f"n_mels must be a positive integer, got {n_mels!r}")
    f_sp = 200.0 / 3  # Hz per mel on the linear part
    min_log_hz, log_step = 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(hz: float) -> float:
        return hz / f_sp if hz < min_log_hz else min_log_mel + np.log(hz / min_log_hz) / log_step

    mels = np.linspace(hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz = np.where(mels < min_log_mel, mels * f_sp,
                  min_log_hz * np.exp(log_step * (mels - min_log_mel)))
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, N_FREQ)
    width = np.diff(hz)  # [n_mels + 1]
    ramps = hz[:, None] - fft_hz[None, :]  # [n_mels + 2, 201]
    rising = -ramps[:-2] / width[:-1, None]
    falling = ramps[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz[2:] - hz[:-2]))[:, None]
    return torch.from_numpy(weights.astype(np.float32))


@functools.lru_cache(maxsize=8)
def _sparse_mel_filters(n_mels: int) -> Tensor:
    """`mel_filters` as a CSR matrix: ~400 of its n_mels x 201 weights are nonzero."""
    with warnings.catch_warnings():  # "sparse CSR support is in beta"; the product is stable
        warnings.simplefilter("ignore", UserWarning)
        return _mel_filters(n_mels).to_sparse_csr()


@functools.lru_cache(maxsize=4)
def _hann_window(device: torch.device) -> Tensor:
    return torch.hann_window(N_FFT, periodic=True, device=device)


def audio_token_count(mel_len: int | Tensor) -> int | Tensor:
    """Number of audio tokens for ``mel_len`` real mel frames (both checkpoint families).

    The conv stem (k3 s1 p1, then k3 s2 p1) gives ``n = (L - 1) // 2 + 1`` frames, and the
    stride-2 average pool ``(n - 2) // 2 + 1`` (= ``n // 2``) tokens.

    Args:
        mel_len: real mel length L (int, or an int64 tensor of any shape).

    Returns:
        The token count, of the same kind as ``mel_len``.
    """
    if (mel_len < 0).any() if isinstance(mel_len, Tensor) else mel_len < 0:
        raise AudioError(f"mel length must be >= 0, got {mel_len}")
    n = (mel_len - 1) // 2 + 1
    return (n - 2) // 2 + 1


def mel_length(n_samples: int, real_length: RealLength = "floor") -> int:
    """Real mel length L of a clip of ``n_samples`` samples (see `RealLength`).

    Clips longer than 30 s keep all their frames, as the references' no-truncation mode does:
    L is at most ``max(n_samples, 480000) // 160``.

    Raises:
        AudioError: unknown ``real_length``.
    """
    if real_length == "floor":
        return n_samples // HOP_LENGTH
    if real_length == "ceil":
        return min(-(-n_samples // HOP_LENGTH), max(n_samples, N_SAMPLES) // HOP_LENGTH)
    raise AudioError(f"real_length must be 'floor' or 'ceil', got {real_length!r}")


def log_mel_spectrogram(
    audio: np.ndarray | Tensor, n_mels: int, lookahead: int = 0, real_length: RealLength = "floor"
) -> Tensor:
    """Log-mel of one clip over its real length, equal to the 30-s padded reference's frames.

    With N samples the clip has L = N // 160 real frames (or ceil(N / 160): `RealLength`).
    Frame t here equals frame t of the reference, which zero-pads the waveform to 30 s (480000
    samples; a longer clip is taken whole, as transformers' no-truncation mode does),
    reflect-pads 200 samples at each end, drops the last STFT frame and floors at (max over all
    its frames - 8). Only the frames up to N // 160 + 2 can hold signal, so those are all that
    is computed: the left edge is reflected, the right edge sees the zeros (or the far
    reflection) the padded signal has there.

    Args:
        audio: float [N] samples at 16 kHz (numpy or torch; a tensor keeps its device).
        n_mels: mel bins (80 for Qwen-Audio, 128 for Qwen2-Audio).
        lookahead: frames to return after the real length, computed as the reference computes
            frames L, L+1, ...; where the reference has no such frame (clips of 30 s or more)
            they are 0, as the encoder's zero padding sees them.
        real_length: how L counts a last partial hop (`RealLength`): "floor" (v1) gives
            N // 160, "ceil" (Qwen2-Audio) ceil(N / 160).

    Returns:
        float32 [n_mels, L + lookahead].

    Raises:
        AudioError: not 1-D float samples, shorter than one hop (160 samples), NaN/Inf, or
            so loud that the power overflows float32.
    """
    return _log_mel([audio], n_mels, lookahead, real_length, single=True)[0][0]


def log_mel_padded(audio: np.ndarray | Tensor, n_mels: int) -> Tensor:
    """The references' 30-s variant: the clip cut or zero-padded to 480000 samples.

    Args:
        audio: float [N] samples at 16 kHz; samples past 30 s are dropped, as the references do.
        n_mels: mel bins.

    Returns:
        float32 [n_mels, 3000]: exactly the reference's input features (``input_features`` of
        transformers' WhisperFeatureExtractor, ``input_audios`` of Qwen-Audio).
    """
    clip = audio[:N_SAMPLES]
    return log_mel_spectrogram(clip, n_mels, lookahead=N_FRAMES - clip.shape[0] // HOP_LENGTH)


def batch_log_mel(
    audios: list[np.ndarray | Tensor], n_mels: int, real_length: RealLength = "floor"
) -> tuple[Tensor, Tensor]:
    """Log-mel of several clips, each over its real length plus 2 lookahead frames.

    Each clip's rows equal ``log_mel_spectrogram(clip, n_mels, lookahead=2)``: the encoder's conv
    stem reads frames L and L+1 of a clip, so they travel with it. One batched STFT and one mel
    product serve the whole batch.

    Args:
        audios: B float [N_b] clips at 16 kHz, all on one device.
        n_mels: mel bins.
        real_length: how L counts a last partial hop (`RealLength`; "ceil" for Qwen2-Audio).

    Returns:
        features: float32 [B, n_mels, T] with T = max(L) + 2; zeros after each clip's L_b + 2.
        feature_lens: int64 [B], the real lengths L_b (`LOOKAHEAD_FRAMES` not included).
    """
    if not audios:
        raise AudioError("batch_log_mel needs at least one clip")
    return _log_mel(audios, n_mels, LOOKAHEAD_FRAMES, real_length, single=False)


def _waveform(audio: np.ndarray | Tensor, name: str) -> Tensor:
    x = torch.from_numpy(np.asarray(audio)) if not isinstance(audio, Tensor) else audio
    if x.ndim != 1 or not x.is_floating_point():
        raise AudioError(f"{name}: expected 1-D float samples at 16 kHz, got "
                         f"{x.dtype} {tuple(x.shape)} (load_audio gives them)")
    if x.shape[0] < HOP_LENGTH:
        raise AudioError(f"{name}: {x.shape[0]} samples is shorter than one {HOP_LENGTH}-sample "
                         "hop, so it has no mel frame")
    return x.to(torch.float32)


def _reference_signals(waves: list[Tensor], n_frames: list[int]) -> Tensor:
    """The padded reference signal around each clip's first frames: [B, S], zeros after.

    Frame t covers original samples [160 t - 200, 160 t + 200). The reference signal is the clip
    zero-padded to P = max(N, 480000) and reflected by 200 samples at both ends; row b holds its
    first 160 (n_frames[b] - 1) + 400 samples, so a plain (uncentred) STFT of the row gives
    exactly the reference's frames 0..n_frames[b]-1.
    """
    half = N_FFT // 2
    lengths = [HOP_LENGTH * (f - 1) + N_FFT for f in n_frames]
    rows = waves[0].new_zeros(len(waves), max(lengths))
    for row, x, length in zip(rows, waves, lengths):
        padded, core = max(x.shape[0], N_SAMPLES), length - half  # original samples [0, core)
        kept = min(x.shape[0], core)
        row[half: half + kept] = x[:kept]
        if core > padded:  # the last kept frames reach past P: the reflection of the padded clip
            reach = core - padded
            row[half + padded: half + core] = row[half + padded - 1 - reach:
                                                  half + padded - 1].flip(0)
        row[:half] = row[half + 1: 2 * half + 1].flip(0)
    return rows


def _log_mel(
    audios: list[np.ndarray | Tensor],
    n_mels: int,
    lookahead: int,
    real_length: RealLength,
    single: bool,
) -> tuple[Tensor, Tensor]:
    """Shared body of `log_mel_spectrogram` and `batch_log_mel`: ([B, n_mels, T], [B])."""
    if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
        raise AudioError(f"lookahead must be a non-negative integer, got {lookahead!r}")
    filters = _sparse_mel_filters(n_mels)
    names = ["audio"] if single else [f"audio {b}" for b in range(len(audios))]
    waves = [_waveform(a, name) for a, name in zip(audios, names)]
    device = waves[0].device
    lens = [mel_length(w.shape[0], real_length) for w in waves]
    kept = [max(w.shape[0], N_SAMPLES) // HOP_LENGTH for w in waves]  # frames the reference keeps
    computed = [min(n + max(lookahead, 3), k) for n, k in zip(lens, kept)]
    returned = [min(n + lookahead, k) for n, k in zip(lens, kept)]
    spec = torch.stft(_reference_signals(waves, computed), N_FFT, HOP_LENGTH,
                      window=_hann_window(device), center=False,
                      return_complex=True)  # [B, 201, F], laid out as [B, F, 201]
    power = torch.addcmul(spec.real.square(), spec.imag, spec.imag)  # |X|^2, same layout
    n_frames = power.shape[-1]
    # one sparse [n_mels, 201] @ [201, B * F] product: a slaney filter covers a few bins only
    mel = filters.to(device) @ power.transpose(1, 2).reshape(-1, N_FREQ).T.contiguous()
    mel = mel.clamp_(min=1e-10).log10_().view(n_mels, -1, n_frames)  # [n_mels, B, F]
    features = mel.new_zeros(len(waves), n_mels, max(lens) + lookahead)
    for b, (wave, n_computed, n_returned) in enumerate(zip(waves, computed, returned)):
        # frames past L + 2 hold only zeros, so they never raise the max the floor is taken from
        peak = mel[:, b, :n_computed].max()
        if not torch.isfinite(peak):
            problem = ("contains NaN or Inf samples" if not torch.isfinite(wave).all() else
                       f"power overflows float32 (peak |sample| {wave.abs().max().item():.3g})")
            raise AudioError(f"{names[b]}: {problem}")
        out = features[b, :, :n_returned]
        torch.clamp(mel[:, b, :n_returned], min=peak - LOG_FLOOR_RANGE, out=out)
        out.add_(4.0).div_(4.0)
    return features, torch.tensor(lens, dtype=torch.int64, device=device)


def spec_augment(
    features: Tensor,
    feature_lens: Tensor,
    *,
    freq_masks: int = 2,
    freq_width: int = 27,
    time_masks: int = 2,
    time_width: int = 100,
    max_time_ratio: float = 0.2,
    mask_value: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SpecAugment masking (Park et al., 2019) inside each clip's real frames.

    Each clip gets ``freq_masks`` bands of f ~ U{0..freq_width} mel bins and ``time_masks``
    spans of t ~ U{0..min(time_width, max_time_ratio * L)} frames, at uniform positions, all
    set to ``mask_value``. Frames at or past a clip's real length L (lookahead, padding) are
    never touched. All randomness comes from ``generator`` (a CPU generator), so a seeded
    generator gives the same masks on any device.

    Args:
        features: float [B, n_mels, T] log-mel features (``batch_log_mel`` output).
        feature_lens: int [B] real lengths L_b <= T.
        freq_masks: frequency bands per clip.
        freq_width: widest frequency band, in mel bins.
        time_masks: time spans per clip.
        time_width: widest time span, in frames.
        max_time_ratio: a time span is also at most this fraction of the clip's L.
        mask_value: value written into masked cells.
        generator: source of randomness; the global CPU generator when None.

    Returns:
        A masked copy of ``features`` ([B, n_mels, T], same dtype and device).
    """
    if features.ndim != 3 or feature_lens.shape != features.shape[:1]:
        raise AudioError(f"spec_augment needs features [B, n_mels, T] and feature_lens [B], got "
                         f"{tuple(features.shape)} and {tuple(feature_lens.shape)}")
    batch, n_mels, width = features.shape
    lens = feature_lens.detach().to("cpu", torch.int64)
    if (lens < 0).any() or (lens > width).any():
        raise AudioError(f"feature_lens must lie in 0..{width}, got {lens.tolist()}")

    def spans(n: int, longest: Tensor, extent: Tensor) -> tuple[Tensor, Tensor]:
        """n random [start, end) spans per clip, width <= longest, inside 0..extent: [B, n]."""
        size = (torch.rand(batch, n, generator=generator) * (longest[:, None] + 1)).floor()
        start = (torch.rand(batch, n, generator=generator) * (extent[:, None] - size + 1)).floor()
        return start.long(), (start + size).long()

    freq_cap = torch.full((batch,), min(freq_width, n_mels))
    f_start, f_end = spans(freq_masks, freq_cap, torch.full((batch,), n_mels))
    time_cap = torch.minimum(torch.full((batch,), time_width), (lens * max_time_ratio).long())
    t_start, t_end = spans(time_masks, time_cap, lens)
    bins, frames = torch.arange(n_mels), torch.arange(width)

    def covered(axis: Tensor, start: Tensor, end: Tensor) -> Tensor:  # [B, len(axis)]
        inside = (axis[None, None, :] >= start[..., None]) & (axis[None, None, :] < end[..., None])
        return inside.any(dim=1)

    real = frames[None, :] < lens[:, None]  # [B, T]
    mask = (covered(bins, f_start, f_end)[:, :, None] & real[:, None, :]) | covered(
        frames, t_start, t_end)[:, None, :]  # [B, n_mels, T]
    return features.masked_fill(mask.to(features.device), mask_value)
