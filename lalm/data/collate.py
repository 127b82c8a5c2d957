"""Batches from `AudioTextDataset` items: right padding, real lengths, masked labels.

Batch dict (B items, S = longest item's tokens, C = clips of the whole batch in item order and
prompt order within an item, M mel bins, T = longest clip's L + 2):

    {
        "ids": int64 [B, S],               # right-padded with the tokenizer's pad (endoftext) id
        "labels": int64 [B, S],            # -100 at prompt, audio slots and padding
        "token_mask": bool [B, S],         # True for real tokens
        "token_lens": int64 [B],           # real tokens per item
        "audio_slot_mask": bool [B, S],    # True where the C clips' audio rows go, row-major
        "features": float32 [C, M, T] | None,   # log-mel, zero after each clip's L_c + 2
        "feature_lens": int64 [C] | None,  # real mel lengths L_c
        "clip_counts": int64 [B],          # clips per item (they sum to C)
        "encoder_states": float32 [C, N, D_enc] | None,  # instead of features: a frozen
        "encoder_state_lens": int64 [C] | None,           # encoder's cached output (rows < lens)
        "example_ids": list[str],          # B ids ("a+b" for a packed row)
        "segment_ids": int64 [B, S] | None,  # packed rows: item number in the row, -1 at pads
    }

`model_inputs(batch)` gives the keyword arguments of `AudioLanguageModel.forward`. A padded item
computes what it computes alone: positions count real tokens only and pads are never attended.

Packing (`pack_items`, or ``Collator(pad_id, pack_tokens=N)``) puts several items in one row of
at most N tokens; ``segment_ids`` then keep them apart (each attends only to itself, positions
restart), so a packed item, too, computes what it computes alone. Its first label is -100
(prompts come first), so no loss crosses from one item into the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lalm.data.dataset import LOOKAHEAD
from lalm.errors import DataError
from lalm.model.lalm import IGNORE_INDEX

#: Batch keys that `AudioLanguageModel.forward` takes.
MODEL_INPUT_KEYS = ("ids", "features", "feature_lens", "audio_slot_mask", "token_mask", "labels",
                    "segment_ids", "encoder_states", "encoder_state_lens")


@dataclass(frozen=True)
class Collator:
    """`collate` with a fixed pad id, picklable for DataLoader workers.

    Attributes:
        pad_id: id written at padding positions (`Tokenizer.eod_id`); never read by the loss.
        pack_tokens: pack the items into rows of at most this many tokens (None: one per row).
    """

    pad_id: int
    pack_tokens: int | None = None

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        if self.pack_tokens is not None:
            items = pack_items(items, self.pack_tokens)
        return collate(items, self.pad_id)


def pack_items(items: list[dict[str, Any]], max_tokens: int) -> list[dict[str, Any]]:
    """Pack items into as few rows of at most `max_tokens` tokens as first-fit decreasing finds.

    Args:
        items: `AudioTextDataset` item dicts.
        max_tokens: tokens per row; an item longer than this gets a row of its own.

    Returns:
        Item dicts, one per row, with the items' tensors concatenated (clips in item order) and
        ``segment_ids`` int64 [S] numbering the items of the row.
    """
    rows: list[list[dict[str, Any]]] = []
    room: list[int] = []
    for item in sorted(items, key=lambda i: -len(i["ids"])):
        n = len(item["ids"])
        row = next((r for r, free in enumerate(room) if n <= free), None)
        if row is None:
            rows.append([])
            room.append(max_tokens)
            row = len(rows) - 1
        rows[row].append(item)
        room[row] -= n
    return [{
        "id": "+".join(i["id"] for i in row),
        "ids": torch.cat([i["ids"] for i in row]),
        "labels": torch.cat([i["labels"] for i in row]),
        "audio_slot_mask": torch.cat([i["audio_slot_mask"] for i in row]),
        "features": [f for i in row for f in i["features"]],
        "feature_lens": torch.cat([i["feature_lens"] for i in row]),
        "encoder_states": [s for i in row for s in i.get("encoder_states", ())],
        "segment_ids": torch.cat([torch.full((len(i["ids"]),), k, dtype=torch.int64)
                                  for k, i in enumerate(row)]),
    } for row in rows]


def _pad(rows: list[Tensor], value: int | bool) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=value)


def collate(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack items into the batch dict of the module docstring.

    Args:
        items: `AudioTextDataset` item dicts.
        pad_id: token id at padding positions.

    Raises:
        DataError: no items, or clips with different mel bins.
    """
    if not items:
        raise DataError("collate needs at least one item")
    clips: list[Tensor] = [f for item in items for f in item["features"]]
    token_lens = torch.tensor([len(item["ids"]) for item in items], dtype=torch.int64)
    batch: dict[str, Any] = {
        "ids": _pad([item["ids"] for item in items], pad_id),
        "labels": _pad([item["labels"] for item in items], IGNORE_INDEX),
        "token_mask": _pad([torch.ones(int(n), dtype=torch.bool) for n in token_lens], False),
        "token_lens": token_lens,
        "audio_slot_mask": _pad([item["audio_slot_mask"] for item in items], False),
        "features": None,
        "feature_lens": None,
        "clip_counts": torch.tensor([len(item["features"]) + len(item.get("encoder_states", ()))
                                     for item in items], dtype=torch.int64),
        "example_ids": [item["id"] for item in items],
        "segment_ids": None,
        "encoder_states": None,
        "encoder_state_lens": None,
    }
    states: list[Tensor] = [s for item in items for s in item.get("encoder_states", ())]
    if states:  # items of `lalm.training.encoder_cache.EncodedDataset`: [N_c, D_enc] per clip
        batch["encoder_states"] = _pad(states, 0)
        batch["encoder_state_lens"] = torch.tensor([len(s) for s in states], dtype=torch.int64)
    if any("segment_ids" in item for item in items):
        batch["segment_ids"] = _pad([item.get("segment_ids", torch.zeros_like(item["ids"]))
                                     for item in items], -1)
    if clips:
        n_mels = {c.shape[0] for c in clips}
        if len(n_mels) != 1:
            raise DataError(f"clips of one batch have different mel bins: {sorted(n_mels)}")
        feature_lens = torch.cat([item["feature_lens"] for item in items])
        width = int(feature_lens.max()) + LOOKAHEAD
        features = clips[0].new_zeros(len(clips), n_mels.pop(), width)
        for c, clip in enumerate(clips):
            features[c, :, : clip.shape[1]] = clip
        batch["features"], batch["feature_lens"] = features, feature_lens
    return batch


def count_items(batch: dict[str, Any]) -> int:
    """Items in a batch: one per row, or the segments of its packed rows."""
    segments = batch.get("segment_ids")
    if segments is None:
        return len(batch["example_ids"])
    return int((segments.max(dim=1).values + 1).sum())


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's `AudioLanguageModel.forward` keyword arguments (`MODEL_INPUT_KEYS`)."""
    return {key: batch[key] for key in MODEL_INPUT_KEYS}
