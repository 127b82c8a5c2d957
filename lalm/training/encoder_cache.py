"""A frozen encoder's output, computed once per clip instead of once per step.

With ``parts.encoder: frozen`` the encoder's output for a clip never changes during a run, yet
an ordinary step recomputes it (audio decoding, log-mel, conv stem, every block) for every clip
of every batch. `EncodedDataset` computes it once, when the run starts, and serves it in place of
the log-mel: its items carry ``encoder_states`` ([N_k, D_enc] per clip) instead of
``features``, `lalm.data.collate.collate` pads them into ``batch["encoder_states"]``, and
`AudioLanguageModel.forward` sends them straight to the projector.

Exactness: each clip's states are what ``model.encoder`` computes for that clip alone (batch of
one, real length + 2 lookahead frames, as `AudioTextDataset` hands it over), bit for bit. An
uncached step runs the encoder on padded batches, which equals the clip alone up to float
rounding (the model's batched-equals-single invariant), so a cached run follows the uncached one
to within that rounding (tests/unit/test_encoder_cache.py checks both).

Costs: memory for the states (float32, N_k x D_enc per clip: ~0.3 MB for 5 s of audio with
Whisper tiny) and one encoder pass per clip up front.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lalm.data.dataset import AudioTextDataset
from lalm.errors import ConfigError
from lalm.model.encoder import AudioEncoder


@torch.no_grad()
def encode_clip(encoder: AudioEncoder, features: Tensor, feature_len: int) -> Tensor:
    """The encoder's output for one clip alone.

    Args:
        encoder: the (frozen) audio encoder.
        features: [M, L + 2] float32 log-mel of the clip (2 lookahead frames).
        feature_len: L, the real mel length.

    Returns:
        [N, D_enc] float32 on the CPU, N = (L - 1) // 2 + 1 valid encoder positions.
    """
    device = encoder.stem_weight.device
    x, x_lens = encoder(features[None].to(device, encoder.stem_weight.dtype),
                        torch.tensor([feature_len], device=device))
    return x[0, : int(x_lens[0])].float().cpu()


class EncodedDataset(Dataset):
    """`AudioTextDataset` items with each clip's log-mel replaced by its encoder output.

    Item dict: the `AudioTextDataset` item (``id``, ``ids``, ``labels``, ``audio_slot_mask``)
    with ``features`` = [] and ``feature_lens`` = int64 [0], plus ``encoder_states``: a list of
    [N_k, D_enc] float32 tensors, one per clip in prompt order.

    Args:
        dataset: the items to encode (audio is read once, here).
        encoder: the frozen encoder (no parameter may require gradients).
        progress: print a line every 100 items (with the elapsed time) to stderr.

    Raises:
        ConfigError: the encoder has trainable parameters (its output would go stale).
        DataError: an item whose audio or prompt cannot be used (from `dataset`).
    """

    def __init__(self, dataset: AudioTextDataset, encoder: AudioEncoder,
                 progress: bool = False) -> None:
        if any(p.requires_grad for p in encoder.parameters()):
            raise ConfigError("the encoder cache needs a frozen encoder (parts.encoder: frozen)")
        self.dataset = dataset
        self.examples = dataset.examples
        was_training = encoder.training
        encoder.eval()
        t0 = time.perf_counter()
        try:
            self.items = []
            for index in range(len(dataset)):
                item = dataset[index]  # a bad one (data.on_bad_item: skip) passes through
                self.items.append(item if "bad_item" in item else self._encode(item, encoder))
                if progress and (index + 1) % 100 == 0:
                    print(f"  encoded {index + 1}/{len(dataset)} items "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        finally:
            encoder.train(was_training)

    @staticmethod
    def _encode(item: dict[str, Any], encoder: AudioEncoder) -> dict[str, Any]:
        states = [encode_clip(encoder, f, int(n))
                  for f, n in zip(item["features"], item["feature_lens"])]
        return {**item, "features": [], "feature_lens": item["feature_lens"][:0],
                "encoder_states": states}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]

    @property
    def lengths(self) -> tuple[list[int], list[list[int]]]:
        """The wrapped dataset's batching sizes (tokens per item, mel frames per clip)."""
        return self.dataset.lengths
