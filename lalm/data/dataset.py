"""Training items: an `Example` -> token ids, labels and log-mel features, for either family.

The prompt comes from `lalm.data.render.render_prompt` (through `lalm.prompt`, which writes every
tag), each clip's audio tokens are expanded to its real length, and the target follows:

    ids    = prompt ids (audio slots expanded)      + target ids + [end]
    labels = -100 for every prompt position          + target ids + [end]

``end`` closes the answer: ``<|im_end|>`` after a ChatML reply (Qwen2-Audio, Qwen-Audio-Chat),
``<|endoftext|>`` after a Qwen-Audio (v1) task prompt's answer. The loss therefore falls only on
the target and its end token; prompt text, audio slots and (in `collate`) padding are -100.

Multi-turn chats (stage-2 SFT) learn every assistant turn: the earlier assistant turns inside
the prompt keep their labels too, each turn's content and its ``<|im_end|>``. The ChatML
scaffolding around them (``<|im_start|>assistant\n``, the ``\n`` after ``<|im_end|>``), system
and user turns and audio slots stay -100. (`PreferenceDataset` scores only the final answer:
``all_turns=False``.) Text-only items (no audio) are ordinary items with no clips.

Item dict (`AudioTextDataset.__getitem__`; K = clips of the item, in prompt order, S = tokens,
M = mel bins, L_k = real mel frames of clip k):

    {
        "id": str,                          # the example id
        "ids": int64 [S],                   # prompt + target + end
        "labels": int64 [S],                # -100 outside the assistant turns (+ end tokens)
        "audio_slot_mask": bool [S],        # True where audio rows go (tokenizer.audio_slot_ids)
        "features": [float32 [M, L_k + 2]], # per clip, 2 lookahead frames (lalm.audio contract)
        "feature_lens": int64 [K],          # L_k
    }

`lalm.data.collate.collate` turns a list of items into the model's batch.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset

from lalm.audio import (
    SAMPLE_RATE,
    RealLength,
    audio_token_count,
    log_mel_spectrogram,
    mel_length,
    stream_audio,
)
from lalm.data.formats import read_examples
from lalm.data.manifest import AudioRef, Example
from lalm.data.render import render_prompt, render_target, task_spec
from lalm.errors import AudioTooLongError, DataError, LalmError
from lalm.model.lalm import IGNORE_INDEX
from lalm.prompt import FamilySpec
from lalm.tokenizer import Tokenizer

Seconds = float
LOOKAHEAD = 2  # mel frames each clip carries after its real length (the conv stem reads them)


def prompt_audio_order(example: Example, family: FamilySpec) -> list[int]:
    """Indices into `example.audios` in the order the rendered prompt hears them.

    A v1 task prompt hears the first clip; a chat hears the clips its turns (before the answer)
    refer to, in turn order; a single-turn chat all clips in order.
    """
    if task_spec(example, family) is not None:
        return [0]
    turns = example.messages[:-1]
    if not turns:
        return list(range(len(example.audios)))
    return [i for m in turns for i in m.audios]


def load_clip(ref: AudioRef, max_seconds: Seconds | None = None) -> np.ndarray:
    """The samples of one clip window: float32 [N] at 16 kHz.

    The file is decoded block by block (`lalm.audio.stream_audio`) only up to the window's end,
    so a short window of a long recording never holds the recording; a window that runs to the
    end of its file is decoded under ``offset + max_seconds`` (refused from the header where it
    declares its length).

    Raises:
        AudioError: the file cannot be decoded.
        DataError: the window lies past the end of the file or is longer than `max_seconds`.
    """
    start = round(ref.offset * SAMPLE_RATE)
    end = None if ref.duration is None else start + round(ref.duration * SAMPLE_RATE)
    if max_seconds is not None and end is not None and end - start > max_seconds * SAMPLE_RATE:
        raise DataError(f"audio {ref.path}: {ref.duration:.2f} s is longer than "
                        f"{max_seconds:g} s; split it")
    limit = None if end is not None or max_seconds is None else ref.offset + max_seconds
    blocks, n = [], 0
    try:
        for block in stream_audio(ref.path, max_seconds=limit):
            blocks.append(block)
            n += block.shape[0]
            if end is not None and n >= end:
                break  # the window is decoded: the rest of the file is never read
    except AudioTooLongError as e:
        raise DataError(f"audio {ref.path}: the window from {ref.offset} s is longer than "
                        f"{max_seconds:g} s ({e}); split it") from e
    audio = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
    end = audio.shape[0] if end is None else end
    if start >= audio.shape[0] or end > audio.shape[0]:
        raise DataError(f"audio {ref.path}: window [{ref.offset}, {end / SAMPLE_RATE}) s lies "
                        f"past the end ({audio.shape[0] / SAMPLE_RATE} s)")
    return audio[start:end]


def _estimated_frames(ref: AudioRef, real_length: RealLength) -> int:
    """Mel frames of a clip from its header (exact for 16 kHz files), without decoding it
    where the header gives its length (else its samples are counted block by block)."""
    if ref.duration is not None:
        return mel_length(round(ref.duration * SAMPLE_RATE), real_length)
    try:
        info = sf.info(ref.path)
        seconds = info.frames / info.samplerate - ref.offset
    except (sf.LibsndfileError, RuntimeError, OSError):
        n_samples = sum(b.shape[0] for b in stream_audio(ref.path))
        seconds = n_samples / SAMPLE_RATE - ref.offset
    return mel_length(round(seconds * SAMPLE_RATE), real_length)


class AudioTextDataset(Dataset):
    """Examples as training items (see the module docstring for the item dict).

    Args:
        examples: the examples; relative audio paths are relative to `audio_root`.
        tokenizer: the family's tokenizer (its family picks the prompt format).
        n_mels: mel bins of the model (80 for Qwen-Audio, 128 for Qwen2-Audio).
        audio_root: folder relative audio paths start from.
        max_audio_seconds: longer clips are an error (the encoder sees 30 s); None: no limit.
        all_turns: label every assistant turn of a chat (SFT); False: only the final answer.
        row_counts: [K] real mel lengths -> [K] audio rows per clip, the model's own rule
            (`AudioLanguageModel.audio_row_counts`; with the v1 BOS/EOS rows); None: the
            Whisper-style stem's 25 tokens per second (`lalm.audio.audio_token_count`), which
            Qwen-Audio, Qwen2-Audio and Qwen2.5-Omni share and Qwen3-ASR does not.
    """

    def __init__(self, examples: Sequence[Example], tokenizer: Tokenizer, n_mels: int,
                 audio_root: str | os.PathLike[str] = ".",
                 max_audio_seconds: Seconds | None = 30.0, all_turns: bool = True,
                 row_counts: Callable[[Tensor], Tensor] | None = None) -> None:
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.family = tokenizer.family
        self.real_length = self.family.real_length  # the pipeline's rule: train = inference
        self.n_mels = n_mels
        self.audio_root = Path(audio_root)
        self.max_audio_seconds = max_audio_seconds
        self.all_turns = all_turns
        self.row_counts = row_counts
        self._slot_ids = torch.tensor(sorted(tokenizer.audio_slot_ids))
        # what opens an assistant turn after <|im_start|>: the role and its newline, encoded as
        # both families' chat prompts encode them ("assistant", "\n")
        self._assistant_header = tokenizer.encode("assistant") + tokenizer.encode("\n")

    @classmethod
    def from_manifest(cls, path: str | os.PathLike[str], tokenizer: Tokenizer, n_mels: int,
                      fmt: str | None = None, **kwargs: object) -> AudioTextDataset:
        """A dataset over a manifest file in any `lalm.data.formats` format."""
        return cls(read_examples(path, fmt), tokenizer, n_mels, **kwargs)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.examples)

    def _clips(self, example: Example) -> list[AudioRef]:
        refs = [example.audios[i] for i in prompt_audio_order(example, self.family)]
        return [AudioRef(str(self.audio_root / r.path), r.offset, r.duration) for r in refs]

    def _token_ids(self, example: Example, mel_lens: Sequence[int]
                   ) -> tuple[list[int], list[tuple[int, int]]]:
        """(prompt + target + end ids, the [start, end) spans that carry labels) for clips of
        `mel_lens` real frames: the earlier assistant turns (with `all_turns`), then the answer.
        """
        tok = self.tokenizer
        prompt = render_prompt(example, self.family, self.audio_root)
        if self.row_counts is None:
            counts = [int(audio_token_count(n)) for n in mel_lens]
        else:
            rows = self.row_counts(torch.tensor(list(mel_lens), dtype=torch.int64))
            counts = [int(n) - self.family.boundary_rows for n in rows]
        prompt_ids = prompt.encode(tok, counts).ids
        # a target may hold the family's tags (v1 timestamps, silence, note fields), never slots
        target_ids = tok.encode(render_target(example, self.family),
                                allowed_special=self.family.text_specials)
        chat = task_spec(example, self.family) is None
        end = tok.im_end_id if chat else tok.eod_id
        ids = prompt_ids + target_ids + [end]
        spans = self._assistant_spans(example, prompt_ids) if chat and self.all_turns else []
        return ids, [*spans, (len(prompt_ids), len(ids))]

    def _assistant_spans(self, example: Example, prompt_ids: list[int]) -> list[tuple[int, int]]:
        """[start, end) of each assistant turn's content + ``<|im_end|>`` inside a chat prompt.

        Raises:
            DataError: the turns found differ from the example's earlier assistant messages (a
                reply whose first token merges with the header, e.g. one starting with a
                newline).
        """
        tok, header = self.tokenizer, self._assistant_header
        spans = []
        for start, token in enumerate(prompt_ids):
            body = start + 1 + len(header)  # the prompt's own last header opens the answer
            if token == tok.im_start_id and body < len(prompt_ids) \
                    and prompt_ids[start + 1: body] == header:
                spans.append((body, prompt_ids.index(tok.im_end_id, body) + 1))
        expected = sum(m.role == "assistant" for m in example.messages[:-1])
        if len(spans) != expected:
            raise DataError(f"found {len(spans)} of its {expected} earlier assistant turns in "
                            f"the token ids; a reply must not start with a newline")
        return spans

    def __getitem__(self, index: int) -> dict[str, object]:
        """The item dict of example `index` (module docstring).

        Raises:
            DataError: naming the example, when its audio, prompt or target cannot be used.
        """
        example = self.examples[index]
        try:
            features = [log_mel_spectrogram(load_clip(ref, self.max_audio_seconds), self.n_mels,
                                            lookahead=LOOKAHEAD, real_length=self.real_length)
                        for ref in self._clips(example)]
            mel_lens = [f.shape[1] - LOOKAHEAD for f in features]
            ids, spans = self._token_ids(example, mel_lens)
        except LalmError as e:
            raise DataError(f"example {example.id!r}: {e}") from e
        ids_t = torch.tensor(ids, dtype=torch.int64)
        labels = torch.full_like(ids_t, IGNORE_INDEX)
        for start, end in spans:
            labels[start:end] = ids_t[start:end]
        return {
            "id": example.id,
            "ids": ids_t,
            "labels": labels,
            "audio_slot_mask": torch.isin(ids_t, self._slot_ids),
            "features": features,
            "feature_lens": torch.tensor(mel_lens, dtype=torch.int64),
        }

    @functools.cached_property
    def lengths(self) -> tuple[list[int], list[list[int]]]:
        """Sizes for batching, without decoding audio: (tokens per item, mel frames per clip).

        Token counts are exact for 16 kHz files and windows (other rates: estimated from the
        header, within a frame).
        """
        tokens, frames = [], []
        for example in self.examples:
            try:
                mel_lens = [_estimated_frames(ref, self.real_length)
                            for ref in self._clips(example)]
                tokens.append(len(self._token_ids(example, mel_lens)[0]))
            except LalmError as e:
                raise DataError(f"example {example.id!r}: {e}") from e
            frames.append(mel_lens)
        return tokens, frames

