"""Streaming safetensors I/O: one tensor in memory at a time, in either direction.

The `safetensors` package reads through mmap, so every page it touches counts
against the process's memory until the file is closed; converting a multi-GB
checkpoint would then hold the source file and the converted copy at once.
Here each tensor is read with `readinto` into its own buffer, and written
tensor by tensor behind a header computed up front. The format is 8 bytes of
little-endian header length, a JSON header of name -> dtype, shape and byte
range, then the raw bytes.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from megatron_rm.errors import CheckpointError

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}
INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


@dataclass(frozen=True)
class TensorInfo:
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    """Absolute byte offset in the file."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class SafetensorsFile:
    """The header of one .safetensors file, checked against the file's size, and its tensors."""

    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file ({size} bytes)")
            (header_len,) = struct.unpack("<Q", head)
            if header_len > size - 8:
                raise CheckpointError(f"{path}: truncated (header of {header_len} bytes in a "
                                      f"{size}-byte file)")
            try:
                header = json.loads(f.read(header_len))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{path}: unreadable safetensors header: {error}") from None
        header.pop("__metadata__", None)
        self.tensors: dict[str, TensorInfo] = {}
        for name, entry in header.items():
            if entry["dtype"] not in DTYPES:
                raise CheckpointError(f"{path}: tensor {name} has dtype {entry['dtype']}, which "
                                      f"cannot be converted (supported: {', '.join(DTYPES)})")
            begin, end = entry["data_offsets"]
            info = TensorInfo(DTYPES[entry["dtype"]], tuple(entry["shape"]), 8 + header_len + begin)
            if end - begin != info.nbytes:
                raise CheckpointError(f"{path}: tensor {name} spans {end - begin} bytes but its "
                                      f"shape {list(info.shape)} needs {info.nbytes}")
            if info.start + info.nbytes > size:
                raise CheckpointError(f"{path}: truncated: tensor {name} ends at byte "
                                      f"{info.start + info.nbytes} of a {size}-byte file")
            self.tensors[name] = info

    def read(self, name: str) -> torch.Tensor:
        info = self.tensors[name]
        tensor = torch.empty(info.shape, dtype=info.dtype)
        with self.path.open("rb") as f:
            f.seek(info.start)
            if info.nbytes and f.readinto(tensor.view(-1).view(torch.uint8).numpy()) != info.nbytes:
                raise CheckpointError(f"{self.path}: truncated while reading tensor {name}")
        return tensor


class SafetensorsFolder:
    """Every tensor of a Hugging Face folder: `model.safetensors` or a sharded index."""

    def __init__(self, folder: Path):
        index = folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {}
            for shard in sorted(set(weight_map.values())):
                if not (folder / shard).is_file():
                    raise CheckpointError(f"{folder / shard}: missing (listed in {index})")
                files[shard] = SafetensorsFile(folder / shard)
            self.files = {name: files[shard] for name, shard in weight_map.items()}
            for name, file in self.files.items():
                if name not in file.tensors:
                    raise CheckpointError(f"{file.path}: has no tensor {name} ({index} says it does)")
        elif (folder / SINGLE).is_file():
            single = SafetensorsFile(folder / SINGLE)
            self.files = {name: single for name in single.tensors}
        else:
            others = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pt"))
            hint = f" (found {', '.join(others)}: save the model with safe_serialization=True)" if others else ""
            raise CheckpointError(f"{folder}: no {SINGLE} or {INDEX}{hint}")

    def names(self) -> list[str]:
        return list(self.files)

    def info(self, name: str) -> TensorInfo:
        return self.files[name].tensors[name]

    def read(self, name: str) -> torch.Tensor:
        return self.files[name].read(name)


def write_sharded(folder: Path, plan: Iterable[tuple[str, torch.dtype, tuple[int, ...]]],
                  make: Callable[[str], torch.Tensor], max_shard_bytes: int) -> list[Path]:
    """Write the planned tensors in order, `make(name)` producing each when its turn comes.

    Shards close at `max_shard_bytes` (a tensor larger than that gets a shard of its
    own). One shard is `model.safetensors`; several are numbered and listed in
    `model.safetensors.index.json`, the layout `from_pretrained` reads.
    """
    shards: list[list[tuple[str, torch.dtype, tuple[int, ...]]]] = [[]]
    shard_bytes = 0
    for entry in plan:
        nbytes = math.prod(entry[2]) * entry[1].itemsize
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(entry)
        shard_bytes += nbytes
    if len(shards) == 1:
        names = [SINGLE]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for name, entries in zip(names, shards):
        _write_file(folder / name, entries, make)
    if len(shards) > 1:
        weight_map = {entry[0]: name for name, entries in zip(names, shards) for entry in entries}
        total = sum(math.prod(shape) * dtype.itemsize for entries in shards for _, dtype, shape in entries)
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                "weight_map": weight_map}, indent=2))
    return [folder / name for name in names]


def _write_file(path: Path, entries, make) -> None:
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in entries:
        nbytes = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(encoded)))
        f.write(encoded)
        for name, dtype, shape in entries:
            tensor = make(name)
            if tensor.dtype != dtype or tuple(tensor.shape) != tuple(shape):
                raise AssertionError(f"{name}: planned {dtype} {list(shape)}, made "
                                     f"{tensor.dtype} {list(tensor.shape)}")
            f.write(memoryview(tensor.contiguous().view(-1).view(torch.uint8).numpy()))
