"""Safetensors read one tensor at a time and written as a stream: format, order, atomicity, errors."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sparsecc.core.safetensors_io import CheckpointError, SafetensorsReader, SafetensorsWriter

TENSORS = {"a": torch.randn(3, 5), "b": torch.arange(7), "c": torch.randn(4, 4).to(torch.bfloat16)}


def _write(path, tensors=TENSORS, metadata=None):
    with SafetensorsWriter(path, [(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()]) as w:
        for k, v in tensors.items():
            w.write(k, v)
        w.finish(metadata)
    return path


def test_written_file_reads_back_with_the_safetensors_package(tmp_path):
    path = _write(tmp_path / "x.safetensors", metadata={"sparsecc": json.dumps({"pattern": "2:4"})})
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["sparsecc"]) == {"pattern": "2:4"}
        for k, v in TENSORS.items():
            assert torch.equal(f.get_tensor(k), v)
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left


def test_reader_reads_files_of_the_safetensors_package(tmp_path):
    save_file(TENSORS, tmp_path / "y.safetensors", metadata={"m": "1"})
    r = SafetensorsReader(tmp_path / "y.safetensors")
    assert r.metadata == {"m": "1"} and set(r.names()) == set(TENSORS)
    for k, v in TENSORS.items():
        assert torch.equal(r.read(k), v)
    assert torch.equal(r.read_rows("a", torch.tensor([2, 0])), TENSORS["a"][[2, 0]])
    assert b"".join(r.chunks("a", size=7)) == TENSORS["a"].numpy().tobytes()


def test_a_failure_while_writing_leaves_nothing(tmp_path):
    out = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError):
        with SafetensorsWriter(out, [("a", torch.float32, (2,)), ("b", torch.float32, (2,))]) as w:
            w.write("a", torch.ones(2))
            raise RuntimeError("crash in the middle")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_wrong_order_shape_and_missing_tensors(tmp_path):
    entries = [("a", torch.float32, (2,)), ("b", torch.float32, (3,))]
    with SafetensorsWriter(tmp_path / "x.safetensors", entries) as w:
        with pytest.raises(CheckpointError, match="out of order; 'a' is next"):
            w.write("b", torch.ones(3))
        with pytest.raises(CheckpointError, match=r"'a' is F32\[3\], listed as F32\[2\]"):
            w.write("a", torch.ones(3))
        w.write("a", torch.ones(2))
        with pytest.raises(CheckpointError, match="'b' and 0 after it were never written"):
            w.finish()
    assert list(tmp_path.iterdir()) == []


def test_truncated_and_foreign_files_name_the_file_and_tensor(tmp_path):
    path = _write(tmp_path / "x.safetensors")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match=r"cut.safetensors: tensor 'c' BF16\[4, 4\] needs 32 bytes"):
        SafetensorsReader(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(CheckpointError, match="junk.safetensors: not a safetensors file"):
        SafetensorsReader(junk)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(CheckpointError, match="bad.safetensors: the safetensors header is not JSON"):
        SafetensorsReader(bad)
    with pytest.raises(CheckpointError, match="has no tensor 'zz'"):
        SafetensorsReader(path).read("zz")
