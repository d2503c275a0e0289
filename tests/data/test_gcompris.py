"""sparsecc.data.gcompris: the Qt resource reader, which images count as photos, and the training crops."""

from __future__ import annotations

import io
import json
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sparsecc.data import DataUnavailableError, training_inputs
from sparsecc.data import gcompris as gc
from sparsecc.data.photos import photo


def _rcc(files: dict[str, tuple[bytes, bool]], version: int = 3) -> bytes:
    """A Qt binary resource bundle holding ``{path: (bytes, zlib-compressed)}``: the format's writer side,
    so that the reader is checked against a layout built from the format, not from its own code."""
    tree: dict = {}
    for path in files:
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[leaf] = path
    names, data = bytearray(), bytearray()
    name_at: dict[str, int] = {}

    def name(n: str) -> int:
        if n not in name_at:
            name_at[n] = len(names)
            names.extend(struct.pack(">HI", len(n), 0) + n.encode("utf-16-be"))
        return name_at[n]

    nodes: list[bytes] = [b""]
    pending = [(0, "", tree)]  # breadth first: each directory's children are consecutive nodes
    while pending:
        index, label, sub = pending.pop(0)
        first = len(nodes)
        children = sorted(sub.items())
        nodes.extend([b""] * len(children))
        nodes[index] = struct.pack(">IHII", name(label), 0x02, len(children), first)
        for k, (child, value) in enumerate(children):
            if isinstance(value, dict):
                pending.append((first + k, child, value))
            else:
                body, packed = files[value]
                stored = struct.pack(">I", len(body)) + zlib.compress(body) if packed else body
                nodes[first + k] = struct.pack(">IHHHI", name(child), 0x01 if packed else 0, 0, 0, len(data))
                data.extend(struct.pack(">I", len(stored)) + stored)
    pad = b"\0" * 8 if version >= 2 else b""
    blob_tree = b"".join(n + pad for n in nodes)
    header = 24 if version >= 3 else 20
    data_at, names_at = header, header + len(data)
    tree_at = names_at + len(names)
    head = b"qres" + struct.pack(">4I", version, tree_at, data_at, names_at) + (b"\0" * 4 if version >= 3 else b"")
    return head + bytes(data) + bytes(names) + blob_tree


def _png(rgb_or_rgba: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_rgba).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_files_reads_every_file_plain_or_compressed(version):
    files = {"a/b/one.txt": (b"first", False), "a/two.bin": (bytes(range(256)) * 4, True), "three": (b"", False)}
    got = dict(gc.rcc_files(_rcc(files, version)))
    assert got == {k: v for k, (v, _) in files.items()}


def test_rcc_files_rejects_what_is_not_a_bundle():
    with pytest.raises(ValueError, match="qres"):
        list(gc.rcc_files(b"RIFF0000WEBP"))
    with pytest.raises(ValueError, match="version 9"):
        list(gc.rcc_files(b"qres" + struct.pack(">4I", 9, 0, 0, 0)))


@pytest.fixture
def rcc_folder(tmp_path, monkeypatch):
    """Bundles like GCompris's: a photo, an icon with transparency, a small photo, a flat drawing and a copy
    of an evaluation photo in a photo activity; a photo in an activity that is not read."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (160, 240, 3), dtype=np.uint8)
    icon = np.concatenate([noise, np.zeros((160, 240, 1), np.uint8)], -1)
    drawing = np.zeros((200, 200, 3), np.uint8)
    drawing[50:150, 50:150] = (0, 200, 0)
    coffee = photo("coffee")
    src = tmp_path / "rcc"
    src.mkdir()
    root = "gcompris/src/activities/categorization/resource/images/"
    (src / "categorization.rcc").write_bytes(_rcc({
        root + "tools/hammer.webp": (_png(noise, "WEBP"), False),
        root + "tools/icon.png": (_png(icon), False),
        root + "tools/tiny.png": (_png(noise[:gc.MIN_SIDE - 1]), False),
        root + "tools/drawing.png": (_png(drawing), True),
        root + "others/cup.jpg": (_png(coffee[..., :3], "JPEG"), False),
        root + "categorization.qml": (b"import QtQuick 2.12", True),
    }))
    (src / "lang.rcc").write_bytes(_rcc({"words/apple.png": (_png(noise), False)}))
    monkeypatch.setenv("SPARSECC_GCOMPRIS", str(src))
    monkeypatch.setenv("SPARSECC_DATA", str(tmp_path / "cache"))
    return src


def test_only_opaque_photos_are_kept_and_evaluation_lookalikes_are_dropped(rcc_folder):
    out = gc.fetch_gcompris_photos()
    index = json.loads((out / "index.json").read_text())
    assert [p["photo"].rsplit("/", 1)[1] for p in index["photos"]] == ["hammer.webp"]
    assert index["seen"] == 5  # the five images of categorization; lang is not a photo activity
    (dropped,) = index["dropped_as_evaluation_lookalikes"]
    assert dropped["photo"].endswith("cup.jpg") and dropped["looks_like"] == ["coffee"]
    (rgb,) = gc.gcompris_photos()
    assert rgb.shape == (160, 240, 3) and rgb.dtype == np.uint8  # WebP is lossy: shape, not bytes


def test_a_missing_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECC_GCOMPRIS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SPARSECC_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataUnavailableError, match="nowhere"):
        gc.gcompris_photos()


def test_training_inputs_are_seeded_crops_kept_8_bit(rcc_folder):
    spec = SimpleNamespace(name="tiny-imagenet-net", task="image-classification",
                           extras={"image_size": 32, "mean": 0.5, "std": 0.25})
    batches = training_inputs(spec, "gcompris", samples=12, batch_size=4, seed=1)
    assert len(batches) == 3 and batches.pixels.dtype == np.uint8 and batches.pixels.shape == (12, 3, 32, 32)
    (x,), kwargs = batches[2]
    assert kwargs == {} and x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= (0 - 0.5) / 0.25 and float(x.max()) <= (1 - 0.5) / 0.25
    again = training_inputs(spec, "gcompris", samples=12, batch_size=4, seed=1)
    assert np.array_equal(again.pixels, batches.pixels)
    assert not np.array_equal(training_inputs(spec, "gcompris", samples=12, batch_size=4, seed=2).pixels,
                              batches.pixels)
    text_model = SimpleNamespace(name="minilm", task="feature-extraction", extras={})
    with pytest.raises(ValueError, match="minilm.*image_size"):
        training_inputs(text_model, "gcompris", samples=8)


def test_mixed_views_blend_two_crops_of_the_same_set(rcc_folder):
    spec = SimpleNamespace(name="tiny-imagenet-net", task="image-classification",
                           extras={"image_size": 32, "mean": 0.5, "std": 0.25})
    crops = training_inputs(spec, "gcompris", samples=16, batch_size=4, seed=3).pixels
    mixed = training_inputs(spec, "gcompris-mix", samples=16, batch_size=4, seed=3)
    assert mixed.pixels.dtype == np.uint8 and mixed.pixels.shape == crops.shape
    assert (mixed.mean, mixed.std) == (0.5, 0.25)
    assert np.array_equal(mixed.pixels, training_inputs(spec, "gcompris-mix", samples=16, batch_size=4,
                                                        seed=3).pixels)
    # every mixed view is l * a + (1 - l) * b of its own crop a and one other crop b, to rounding
    a = crops.astype(np.float64)
    m = mixed.pixels.astype(np.float64)
    for i in range(len(crops)):
        fits = []
        for j in range(len(crops)):
            d = a[i] - a[j]
            lam = float((d * (m[i] - a[j])).sum() / max((d * d).sum(), 1e-9)) if j != i else 1.0
            fits.append(np.abs(lam * a[i] + (1 - lam) * a[j] - m[i]).max() if 0 <= lam <= 1 else np.inf)
        assert min(fits) <= 1.0, f"view {i} is no blend of two crops"  # rounding, and l fitted
    assert not np.array_equal(mixed.pixels, crops)
