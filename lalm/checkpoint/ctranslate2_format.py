"""Reader (and a small writer) for CTranslate2's ``model.bin`` binary format.

The layout, all integers little-endian (binary versions 1 to 6)::

    u32  binary_version
    str  spec name, e.g. "WhisperSpec"                 (version >= 2)
    u32  spec revision                                 (version >= 2)
    u32  number of variables, then for each variable:
         str  name, '/'-separated scopes ("encoder/layer_0/ffn/linear_0/weight")
         u8   rank, then rank x u32 dimensions
         u8   dtype id (0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16)
              and u32 payload size in bytes           (version >= 4)
         or   u8 item size and u32 element count      (version < 4)
         raw  payload, row-major
    u32  number of aliases, then (str alias, str target) pairs   (version >= 3)

where ``str`` is a u16 length that counts a trailing NUL byte, then the UTF-8 bytes and the NUL.
A variable equal to an earlier one (alphabetical order) is stored once and aliased. A quantized
weight ``.../weight`` comes with ``.../weight_scale``: int8 weights carry one float scale per
output row (``float = int8 / scale[row]``), int16 weights one scalar scale for the whole tensor.

`CT2File` indexes the file without reading payloads (the file is memory-mapped), so taking the
encoder of a large model reads only the encoder's bytes.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from lalm.errors import CheckpointError

#: Newest binary version this reader understands (CTranslate2 4.x writes 6).
MAX_BINARY_VERSION = 6

#: dtype ids of the format, in id order.
DTYPES: tuple[torch.dtype, ...] = (
    torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16,
)
_ITEM_SIZE_DTYPES = {4: torch.float32, 2: torch.int16, 1: torch.int8}  # versions < 4
_NUMPY_OF = {  # bfloat16 has no numpy dtype: read its bits as uint16 and reinterpret
    torch.float32: np.float32, torch.int8: np.int8, torch.int16: np.int16,
    torch.int32: np.int32, torch.float16: np.float16, torch.bfloat16: np.uint16,
}


class _Cursor:
    """Sequential little-endian reads over a buffer, failing with the file's name."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf, self.path, self.pos = buf, path, 0

    def take(self, n: int, what: str) -> int:
        """Advance by ``n`` bytes and return the start offset."""
        if self.pos + n > len(self.buf):
            raise CheckpointError(
                f"{self.path}: truncated while reading {what} ({n} bytes at offset {self.pos}, "
                f"file has {len(self.buf)} bytes)")
        start, self.pos = self.pos, self.pos + n
        return start

    def unpack(self, fmt: str, what: str) -> int:
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.buf, start)[0]

    def string(self, what: str) -> str:
        n = self.unpack("<H", f"the length of {what}")
        start = self.take(n, what)
        raw = bytes(self.buf[start:start + n])
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"{self.path}: {what} at offset {start} is not NUL-terminated")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: {what} at offset {start} is not UTF-8") from e


class CT2File(Mapping[str, Tensor]):
    """A CTranslate2 ``model.bin``, indexed; a read-only mapping from variable name to tensor.

    Aliases resolve to their target (and ``alias + "_scale"`` to ``target + "_scale"``). Values
    are returned as stored (int8/int16/float16/...); `dequantized` gives float32 weights.

    Attributes:
        path: the file.
        binary_version: format version (1-6).
        spec: model specification name, e.g. ``"WhisperSpec"`` ("" for version 1 files).
        spec_revision: revision of that specification.
        aliases: alias name -> stored variable name.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Index ``path`` (a ``model.bin`` file or a folder holding one).

        Raises:
            CheckpointError: missing file, unsupported version, truncated or malformed content.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "model.bin"
        if not path.is_file():
            raise CheckpointError(f"{path}: no CTranslate2 model.bin there")
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            self._buf: mmap.mmap | bytes = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
        self._index: dict[str, tuple[tuple[int, ...], torch.dtype, int]] = {}
        self.aliases: dict[str, str] = {}
        self._parse()

    def _parse(self) -> None:
        cur = _Cursor(self._buf, self.path)
        self.binary_version = cur.unpack("<I", "the binary version")
        if not 1 <= self.binary_version <= MAX_BINARY_VERSION:
            raise CheckpointError(
                f"{self.path}: binary version {self.binary_version} is not a CTranslate2 version "
                f"lalm reads (1..{MAX_BINARY_VERSION}); is this a CTranslate2 model.bin?")
        self.spec, self.spec_revision = "", 1
        if self.binary_version >= 2:
            self.spec = cur.string("the spec name")
            self.spec_revision = cur.unpack("<I", "the spec revision")
        for i in range(cur.unpack("<I", "the variable count")):
            name = cur.string(f"the name of variable #{i}")
            rank = cur.unpack("<B", f"the rank of {name!r}")
            shape = tuple(cur.unpack("<I", f"the shape of {name!r}") for _ in range(rank))
            if self.binary_version >= 4:
                type_id = cur.unpack("<B", f"the dtype of {name!r}")
                if type_id >= len(DTYPES):
                    raise CheckpointError(f"{self.path}: variable {name!r} has unknown dtype id "
                                          f"{type_id}")
                dtype = DTYPES[type_id]
                nbytes = cur.unpack("<I", f"the size of {name!r}")
            else:
                item_size = cur.unpack("<B", f"the item size of {name!r}")
                if item_size not in _ITEM_SIZE_DTYPES:
                    raise CheckpointError(f"{self.path}: variable {name!r} has item size "
                                          f"{item_size}")
                dtype = _ITEM_SIZE_DTYPES[item_size]
                nbytes = cur.unpack("<I", f"the size of {name!r}") * item_size
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if nbytes != expected:
                raise CheckpointError(f"{self.path}: variable {name!r} of shape {shape} {dtype} "
                                      f"declares {nbytes} bytes, expected {expected}")
            self._index[name] = (shape, dtype, cur.take(nbytes, f"the data of {name!r}"))
        if self.binary_version >= 3:
            for i in range(cur.unpack("<I", "the alias count")):
                alias = cur.string(f"alias #{i}")
                target = cur.string(f"the target of alias {alias!r}")
                if target not in self._index:
                    raise CheckpointError(f"{self.path}: alias {alias!r} points to missing "
                                          f"variable {target!r}")
                self.aliases[alias] = target
        if cur.pos != len(self._buf):
            raise CheckpointError(f"{self.path}: {len(self._buf) - cur.pos} unexpected bytes "
                                  f"after the last record")

    def _resolve(self, name: str) -> str:
        if name in self._index:
            return name
        if name in self.aliases:
            return self.aliases[name]
        for suffix in ("_scale", "_zero"):  # an alias carries its target's quantization scale
            stem = name[: -len(suffix)]
            if name.endswith(suffix) and stem in self.aliases:
                return self.aliases[stem] + suffix
        return name

    def __getitem__(self, name: str) -> Tensor:
        """The stored tensor (a copy), in its stored dtype; rank-0 for scalars."""
        key = self._resolve(name)
        if key not in self._index:
            raise KeyError(name)
        shape, dtype, offset = self._index[key]
        count = int(np.prod(shape, dtype=np.int64))
        array = np.frombuffer(self._buf, dtype=_NUMPY_OF[dtype], count=count, offset=offset)
        tensor = torch.from_numpy(array.copy()).reshape(shape)
        return tensor.view(torch.bfloat16) if dtype == torch.bfloat16 else tensor

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._resolve(name) in self._index

    def __iter__(self) -> Iterator[str]:
        yield from self._index
        yield from self.aliases

    def __len__(self) -> int:
        return len(self._index) + len(self.aliases)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of a variable without reading it."""
        if name not in self:
            raise KeyError(name)
        return self._index[self._resolve(name)][0]

    def dequantized(self, name: str) -> Tensor:
        """A weight as float32, undoing int8 (per-row scale) or int16 (scalar scale) storage.

        Args:
            name: variable name, e.g. ``"encoder/layer_0/ffn/linear_0/weight"``.

        Returns:
            Tensor float32 of the variable's shape.

        Raises:
            CheckpointError: the variable is missing, has a zero point (AWQ-style storage,
                not supported), or is an integer tensor without its ``_scale``.
        """
        if name not in self:
            raise CheckpointError(f"{self.path}: variable {name!r} is missing")
        value = self[name]
        if not value.dtype.is_floating_point:
            if name + "_zero" in self:
                raise CheckpointError(f"{self.path}: {name!r} uses zero-point (AWQ) storage, "
                                      f"which lalm does not read")
            if name + "_scale" not in self:
                raise CheckpointError(f"{self.path}: integer variable {name!r} has no "
                                      f"{name + '_scale'!r}")
            scale = self[name + "_scale"].float()
            if scale.dim() == 1:  # int8: one scale per output row (conv weights: per channel)
                scale = scale.reshape(-1, *[1] * (value.dim() - 1))
            return value.float() / scale
        return value.float()

    def close(self) -> None:
        """Release the memory map (tensors already returned stay valid: they are copies)."""
        if isinstance(self._buf, mmap.mmap):
            self._buf.close()


def write_ct2_file(
    path: str | os.PathLike[str],
    spec: str,
    spec_revision: int,
    variables: Mapping[str, Tensor],
    aliases: Mapping[str, str] | None = None,
) -> None:
    """Write a binary-version-6 ``model.bin`` (atomically: written beside, then renamed).

    Args:
        path: destination file.
        spec: specification name, e.g. ``"WhisperSpec"``.
        spec_revision: specification revision.
        variables: name -> tensor of a dtype in `DTYPES`, stored in sorted name order.
        aliases: alias name -> name of a stored variable.

    Raises:
        CheckpointError: a tensor of a dtype the format cannot hold, or an alias to nothing.
    """
    def string(s: str) -> bytes:
        raw = s.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", MAX_BINARY_VERSION), string(spec),
             struct.pack("<II", spec_revision, len(variables))]
    for name in sorted(variables):
        value = variables[name].detach().cpu().contiguous()
        if value.dtype not in DTYPES:
            raise CheckpointError(f"variable {name!r}: dtype {value.dtype} has no CTranslate2 id")
        bits = value.view(torch.int16) if value.dtype == torch.bfloat16 else value
        payload = bits.numpy().tobytes()
        parts += [string(name), struct.pack(f"<B{value.dim()}I", value.dim(), *value.shape),
                  struct.pack("<BI", DTYPES.index(value.dtype), len(payload)), payload]
    aliases = dict(aliases or {})
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in sorted(aliases.items()):
        if target not in variables:
            raise CheckpointError(f"alias {alias!r} points to missing variable {target!r}")
        parts += [string(alias), string(target)]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(path)
