"""An LRU cache of encoded clips, keyed by a hash of their samples (`Pipeline.encode_audio`).

The same audio sent twice (a client re-sending a clip, a conversation's earlier clips, several
questions about one recording) goes through the encoder once: the second time its rows come
from here. The key is a BLAKE2b digest of the clip's float32 16-kHz samples, so only identical
audio hits, and the rows are the encoder's output for it: outputs with and without the cache
are the same (tests/unit/test_engine_caches.py). The cache is bounded by the bytes of the rows
it holds; the least recently used clips leave first.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
import torch
from torch import Tensor

DEFAULT_ENCODER_CACHE_MIB = 64.0


def audio_digest(samples: np.ndarray) -> bytes:
    """BLAKE2b-128 digest of a clip's samples ([N] float32 at 16 kHz)."""
    data = np.ascontiguousarray(samples, dtype=np.float32)
    return hashlib.blake2b(data.tobytes(), digest_size=16).digest()


def rows_digest(rows: Tensor) -> bytes:
    """BLAKE2b-128 digest of a clip's encoded rows ([R, D], any dtype): what identifies the
    embeddings of its audio slots (prefix reuse keys)."""
    data = rows.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data.tobytes(), digest_size=16).digest()


class EncoderCache:
    """Encoded clips by `audio_digest`, least recently used out beyond ``max_mib``.

    Args:
        max_mib: size bound in MiB of the rows held (0 disables the cache).

    Attributes:
        hits, misses: lookups that found / did not find the clip.
    """

    def __init__(self, max_mib: float = DEFAULT_ENCODER_CACHE_MIB) -> None:
        if not max_mib >= 0:
            raise ValueError(f"encoder cache size must be >= 0 MiB, got {max_mib!r}")
        self.max_bytes = int(max_mib * 2**20)
        self.hits = self.misses = 0
        self._rows: OrderedDict[bytes, Tensor] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def bytes(self) -> int:
        """Bytes of the rows held."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> Tensor | None:
        """A clip's [R, D] rows, or None (counted as a hit or a miss)."""
        with self._lock:
            rows = self._rows.get(key)
            if rows is None:
                self.misses += 1
                return None
            self._rows.move_to_end(key)
            self.hits += 1
            return rows

    def put(self, key: bytes, rows: Tensor) -> None:
        """Keep a clip's rows (a clip larger than the whole cache is not kept)."""
        size = rows.numel() * rows.element_size()
        with self._lock:
            if size > self.max_bytes or key in self._rows:
                return
            self._rows[key] = rows
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, old = self._rows.popitem(last=False)
                self._bytes -= old.numel() * old.element_size()
