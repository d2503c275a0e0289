"""Safetensors files read one tensor at a time and written as a stream, never whole.

The format is an 8-byte little-endian header length, a JSON header (per
tensor: dtype, shape, byte offsets into the data; ``__metadata__``: string
pairs) and the raw data. The `safetensors` package maps the whole file into
memory; here a tensor is read with plain file reads into its own buffer, so a
process holds only what it asked for (a memory limit on the process then
measures the pruning, not the page cache), and a file larger than memory is
written tensor by tensor: the header's tensor table is known in advance, its
metadata is written last into space reserved for it, and the file appears
under its name only when complete (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterable

import torch

from sparsecc.errors import UsageError

__all__ = ["CheckpointError", "SafetensorsReader", "SafetensorsWriter", "DTYPES", "dtype_name", "raw_bytes"]

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 2**20  # the format's own limit
_CHUNK = 16 * 2**20


class CheckpointError(UsageError, ValueError):
    """A checkpoint that cannot be read or written; the message names the file and the tensor at fault."""


def dtype_name(dtype: torch.dtype) -> str:
    try:
        return _NAMES[dtype]
    except KeyError:
        raise CheckpointError(f"safetensors cannot store {dtype}") from None


def raw_bytes(t: torch.Tensor) -> memoryview:
    """The bytes of a contiguous CPU tensor, without a copy."""
    t = t.detach().contiguous().cpu()
    return memoryview(t.view(torch.uint8).reshape(-1).numpy()) if t.numel() else memoryview(b"")


class SafetensorsReader:
    """One safetensors file: its table of tensors, its metadata, and tensors read on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"checkpoint not found: {self.path}")
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{self.path}: not a safetensors file ({size} bytes, no header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(_MAX_HEADER, size - 8):
                raise CheckpointError(f"{self.path}: not a safetensors file (header length {n} for a file of "
                                      f"{size} bytes)")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"{self.path}: the safetensors header is not JSON ({e})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: the safetensors header is not a JSON object")
        self.data_start = 8 + n
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self.entries: dict[str, tuple[torch.dtype, tuple[int, ...], int, int]] = {}
        data_size = size - self.data_start
        for name, e in header.items():
            try:
                dtype, shape, (begin, end) = DTYPES[e["dtype"]], tuple(int(d) for d in e["shape"]), e["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a bad header entry {e!r}") from None
            nbytes = math.prod(shape) * dtype.itemsize
            if end - begin != nbytes or begin < 0 or end > data_size:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} {e['dtype']}{list(shape)} needs {nbytes} bytes but its offsets "
                    f"are [{begin}, {end}) in {data_size} bytes of data (a truncated or corrupt file?)")
            self.entries[name] = (dtype, shape, begin, end)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def dtype(self, name: str) -> torch.dtype:
        return self._entry(name)[0]

    def nbytes(self, name: str) -> int:
        _, _, begin, end = self._entry(name)
        return end - begin

    def _entry(self, name: str):
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"{self.path} has no tensor {name!r}") from None

    def read(self, name: str) -> torch.Tensor:
        """The tensor, read into a buffer of its own."""
        dtype, shape, begin, end = self._entry(name)
        out = torch.empty(shape, dtype=dtype)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            got = f.readinto(raw_bytes(out)) if out.numel() else 0
        if got != end - begin:
            raise CheckpointError(f"{self.path}: tensor {name!r} is cut short ({got} of {end - begin} bytes)")
        return out

    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` of a 2-D tensor (an embedding table), without reading the rest."""
        dtype, shape, begin, _ = self._entry(name)
        if len(shape) != 2:
            raise CheckpointError(f"{self.path}: tensor {name!r} {list(shape)} is not a table of rows")
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= shape[0]):
            raise CheckpointError(f"{self.path}: rows up to {int(rows.max())} asked of {name!r} with {shape[0]} rows")
        out = torch.empty(len(rows), shape[1], dtype=dtype)
        row_bytes = shape[1] * dtype.itemsize
        with open(self.path, "rb") as f:
            for i, r in enumerate(rows.tolist()):
                f.seek(self.data_start + begin + r * row_bytes)
                if f.readinto(raw_bytes(out[i])) != row_bytes:
                    raise CheckpointError(f"{self.path}: tensor {name!r} is cut short at row {r}")
        return out

    def chunks(self, name: str, size: int = _CHUNK) -> Iterable[bytes]:
        """The raw bytes of a tensor, ``size`` at a time (copying without holding it whole)."""
        _, _, begin, end = self._entry(name)
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            left = end - begin
            while left:
                b = f.read(min(size, left))
                if not b:
                    raise CheckpointError(f"{self.path}: tensor {name!r} is cut short")
                left -= len(b)
                yield b


class SafetensorsWriter:
    """Writes a safetensors file tensor by tensor, in the order of ``entries``; atomic on success.

    ``entries`` are ``(name, dtype, shape)``, every tensor the file will hold.
    Use as a context manager: leaving it by an exception deletes the temporary
    file, so a crash leaves nothing under ``path``. ``metadata_bytes`` is the
    room kept for the metadata passed to `finish`.
    """

    def __init__(self, path: str | os.PathLike, entries: list[tuple[str, torch.dtype, tuple[int, ...]]],
                 metadata_bytes: int = 65536):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial-{os.getpid()}")
        self.table: dict[str, Any] = {}
        self.order: list[str] = []
        offset = 0
        for name, dtype, shape in entries:
            if name in self.table:
                raise CheckpointError(f"{self.path}: tensor {name!r} listed twice")
            nbytes = math.prod(shape) * dtype.itemsize
            self.table[name] = {"dtype": dtype_name(dtype), "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            self.order.append(name)
            offset += nbytes
        # Room for the header: the table as written, the metadata, padding to 8 bytes.
        self.header_size = 8 * math.ceil((len(json.dumps(self.table)) + metadata_bytes + 64) / 8)
        self._next = 0
        self._written = 0  # bytes of the current tensor
        self._file: Any = None

    def __enter__(self) -> "SafetensorsWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.tmp, "wb")
        self._file.write(b"\0" * (8 + self.header_size))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.tmp.exists():
            self.tmp.unlink()  # still here: not finished, so nothing may appear under the name

    def _current(self, name: str) -> tuple[str, int]:
        if self._next >= len(self.order):
            raise CheckpointError(f"{self.path}: tensor {name!r} written after the last one")
        expected = self.order[self._next]
        if name != expected:
            raise CheckpointError(f"{self.path}: tensor {name!r} written out of order; {expected!r} is next")
        begin, end = self.table[name]["data_offsets"]
        return expected, end - begin

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """The whole tensor ``name`` (the next in order), of the listed dtype and shape."""
        e = self.table.get(name)
        if e is not None and (dtype_name(tensor.dtype) != e["dtype"] or list(tensor.shape) != e["shape"]):
            raise CheckpointError(f"{self.path}: tensor {name!r} is {dtype_name(tensor.dtype)}{list(tensor.shape)}, "
                                  f"listed as {e['dtype']}{e['shape']}")
        self.write_bytes(name, raw_bytes(tensor))

    def write_bytes(self, name: str, data: bytes | memoryview) -> None:
        """Part of tensor ``name``'s raw bytes; the next tensor starts once its size is reached."""
        _, size = self._current(name)
        if self._written + len(data) > size:
            raise CheckpointError(f"{self.path}: tensor {name!r} given more than its {size} bytes")
        self._file.write(data)
        self._written += len(data)
        if self._written == size:
            self._next, self._written = self._next + 1, 0

    def finish(self, metadata: dict[str, str] | None = None) -> Path:
        """Write the header, then rename the finished file to ``path``."""
        if self._next < len(self.order):
            raise CheckpointError(f"{self.path}: tensor {self.order[self._next]!r} and {len(self.order) - self._next - 1} "
                                  "after it were never written")
        header = dict(self.table)
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        text = json.dumps(header, separators=(",", ":")).encode()
        if len(text) > self.header_size:
            raise CheckpointError(f"{self.path}: metadata of {len(text)} bytes exceeds the {self.header_size} "
                                  "reserved for the header; pass a larger metadata_bytes")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self.header_size) + text + b" " * (self.header_size - len(text)))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        os.replace(self.tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return self.path
