"""Reading and writing safetensors checkpoints: single file or Hugging Face-style shards.

Reading is memory-mapped: the returned tensors keep the file's dtype and (all but the small
ones) are views of private copy-on-write mappings of the file, one per tensor, so loading a model
with `load_state_dict(assign=True)` copies nothing, a cast copies one tensor at a time, and a
tensor dropped (cast, quantised) gives its pages back.
Directories published with PyTorch `.bin` weights (`pytorch_model.bin` or its shards) are read
too, with `torch.load(weights_only=True)`: no code in the file runs.
Writing goes to a temporary file in the same directory and is renamed into place, so a reader
never sees a half-written file; the shard index is written after its shards.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import torch
from safetensors.torch import save_file
from torch import Tensor

from lalm.checkpoint.hf_json import read_json
from lalm.errors import CheckpointError
from lalm.files import write_atomic  # re-exported: checkpoint writers use it from here

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BIN_FILE = "pytorch_model.bin"
BIN_INDEX_FILE = "pytorch_model.bin.index.json"


_ST_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2, "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
# Tensors smaller than this are copied out of the file; larger ones are views of their own
# mapping, which is unmapped when the tensor is freed (a cast or a quantisation at load then
# returns the file's pages instead of keeping every page it read mapped).
MAP_MIN_BYTES = 1 << 20
_MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on the JSON header


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of one safetensors file, memory-mapped copy-on-write.

    Each tensor of at least `MAP_MIN_BYTES` is a view of its own private mapping of its byte
    range (pages are read from the file when first touched, and count as the file's cache, not
    as new memory); smaller tensors (norms, biases) are copied. Nothing is converted: a bf16
    tensor in the file is a bf16 tensor here.

    Raises:
        CheckpointError: the file is missing, truncated (half-written) or not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            entries, start = _read_header(handle, size, path)
            return {name: _map_tensor(handle, start, entry)
                    for name, entry in entries.items()}
    except OSError as err:
        raise CheckpointError(f"cannot read {path} (truncated or not safetensors?): {err}") from err


def _read_header(handle: BinaryIO, size: int, path: Path
                 ) -> tuple[dict[str, tuple[torch.dtype, list[int], int, int]], int]:
    """The tensor table of a safetensors file and where its data starts.

    Returns:
        ({name: (dtype, shape, begin, end)} with byte offsets into the data, data start).
    """
    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"cannot read {path} (truncated or not safetensors?): {why}")

    raw = handle.read(8)
    if len(raw) < 8:
        raise bad("shorter than its 8-byte header length")
    n_header = int.from_bytes(raw, "little")
    if n_header > min(_MAX_HEADER_BYTES, size - 8):
        raise bad(f"header of {n_header} bytes in a file of {size}")
    try:
        header = json.loads(handle.read(n_header).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise bad(f"header is not JSON ({err})") from None
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    start, n_data = 8 + n_header, size - 8 - n_header
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _ST_DTYPES[info["dtype"]]
            shape = [int(n) for n in info["shape"]]
            begin, end = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as err:
            raise bad(f"tensor {name!r}: bad entry {info!r} ({err!r})") from None
        numel = math.prod(shape)
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= n_data \
                or end - begin != numel * dtype.itemsize:
            raise bad(f"tensor {name!r} ({info['dtype']} {shape}) at bytes {begin}..{end} does "
                      f"not fit the {n_data} data bytes")
        entries[name] = (dtype, shape, begin, end)
    return entries, start


def _map_tensor(handle: BinaryIO, start: int,
                entry: tuple[torch.dtype, list[int], int, int]) -> Tensor:
    dtype, shape, begin, end = entry
    nbytes, offset = end - begin, start + begin
    if nbytes < MAP_MIN_BYTES or offset % dtype.itemsize:
        handle.seek(offset)
        data = bytearray(handle.read(nbytes))
        if len(data) != nbytes:
            raise OSError("file ends inside a tensor")
        return (torch.frombuffer(data, dtype=dtype).reshape(shape) if nbytes
                else torch.empty(shape, dtype=dtype))
    page = offset - offset % mmap.ALLOCATIONGRANULARITY
    mapped = mmap.mmap(handle.fileno(), offset + nbytes - page, access=mmap.ACCESS_COPY,
                       offset=page)
    return torch.frombuffer(mapped, dtype=dtype, count=nbytes // dtype.itemsize,
                            offset=offset - page).reshape(shape)


def read_torch_bin(path: str | Path) -> dict[str, Tensor]:
    """All tensors of one PyTorch `.bin` state-dict file, loaded with `weights_only=True`
    (memory-mapped when it is a zip archive, as every file of torch >= 1.6 is).

    Raises:
        CheckpointError: the file is missing, truncated or not a state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True,
                           mmap=zipfile.is_zipfile(path))
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:
        raise CheckpointError(f"cannot read {path} (truncated or not a PyTorch file?): {err}") \
            from err
    if not isinstance(state, dict) or not all(isinstance(t, Tensor) for t in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def read_checkpoint_dir(directory: str | Path) -> dict[str, Tensor]:
    """The weights of a checkpoint directory: `model.safetensors`, or shards listed in
    `model.safetensors.index.json`; failing those `pytorch_model.bin` or the shards listed in
    `pytorch_model.bin.index.json`. Each shard must hold exactly the keys the index gives it.

    Raises:
        CheckpointError: no weights, a missing or unreadable shard, or shards and index disagree.
    """
    directory = Path(directory)
    layouts = ((INDEX_FILE, SINGLE_FILE, read_safetensors),
               (BIN_INDEX_FILE, BIN_FILE, read_torch_bin))
    for index_name, single_name, read in layouts:
        if (directory / index_name).is_file():
            return _read_shards(directory, index_name, read)
        if (directory / single_name).is_file():
            return read(directory / single_name)
    raise CheckpointError(
        f"no {SINGLE_FILE}, {INDEX_FILE}, {BIN_FILE} or {BIN_INDEX_FILE} in {directory}"
    )


def _read_shards(
    directory: Path, index_name: str, read: Callable[[Path], dict[str, Tensor]]
) -> dict[str, Tensor]:
    index_path = directory / index_name
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
        raise CheckpointError(f"{index_path} is not a valid shard index: it needs a non-empty "
                              '"weight_map" object of tensor name -> shard file name')
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        found = read(_shard_path(directory, shard, index_path))
        expected = {key for key, name in weight_map.items() if name == shard}
        if set(found) != expected:
            missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
            raise CheckpointError(
                f"shard {directory / shard} disagrees with {index_name}: missing {missing[:10]}, "
                f"unlisted {extra[:10]}"
            )
        tensors.update(found)
    return tensors


def _shard_path(directory: Path, shard: str, index_path: Path) -> Path:
    """``directory / shard`` for a shard name of an index, which must name a file inside the
    checkpoint folder: a relative path without ``..`` (an index that reaches out, say to
    ``../../x.safetensors``, is refused). Symlinks inside the folder are followed wherever
    they point: the folder's owner made them, and the Hugging Face cache lays out every
    snapshot as links to ``../../blobs``.

    Raises:
        CheckpointError: an empty or absolute name, or one with ``..``, a backslash or NUL.
    """
    name = PurePosixPath(shard)
    if not shard or "\0" in shard or "\\" in shard or name.is_absolute() or ".." in name.parts:
        raise CheckpointError(f"{index_path}: shard name {shard!r} is not a file inside the "
                              f"checkpoint folder {directory}")
    return directory / shard


def write_json(path: Path, data: object) -> None:
    """Write pretty JSON atomically."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_checkpoint_dir(
    tensors: Mapping[str, Tensor], directory: str | Path, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write weights as `model.safetensors`, or as shards plus an index when they exceed
    `max_shard_bytes` (Hugging Face names `model-00001-of-0000N.safetensors`).

    Returns:
        The files written, the index (if any) last.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards = _plan_shards(tensors, max_shard_bytes)
    metadata = {"format": "pt"}
    if len(shards) == 1:
        path = directory / SINGLE_FILE
        _write_shard(path, shards[0], metadata)
        return [path]
    written, weight_map = [], {}
    for number, shard in enumerate(shards, start=1):
        path = directory / f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        _write_shard(path, shard, metadata)
        weight_map.update(dict.fromkeys(shard, path.name))
        written.append(path)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    write_json(directory / INDEX_FILE, index)
    return [*written, directory / INDEX_FILE]


def _plan_shards(
    tensors: Mapping[str, Tensor], max_shard_bytes: int | None
) -> list[dict[str, Tensor]]:
    shards: list[dict[str, Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        tensor = tensors[name]
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    return shards


def _write_shard(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    # safetensors refuses views that share storage; contiguous copies only where needed.
    plain = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    write_atomic(path, lambda tmp: save_file(plain, tmp, metadata=metadata))


__all__ = [
    "BIN_FILE",
    "BIN_INDEX_FILE",
    "INDEX_FILE",
    "SINGLE_FILE",
    "read_checkpoint_dir",
    "read_safetensors",
    "read_torch_bin",
    "write_atomic",
    "write_checkpoint_dir",
    "write_json",
]
