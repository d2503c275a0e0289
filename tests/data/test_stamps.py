"""sparsecc.data.stamps: which stamps count as photos, and the composited training views."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sparsecc.data import TRAINING_SOURCES, DataUnavailableError, training_inputs
from sparsecc.data import stamps as st


def _noise_stamp(side: int, seed: int) -> np.ndarray:
    """A photo-like RGBA stamp: random colours inside an opaque disc, transparent around it."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, (side, side, 4), dtype=np.uint8)
    yy, xx = np.mgrid[:side, :side]
    rgba[..., 3] = np.where((yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (side / 2.2) ** 2, 255, 0)
    return rgba


@pytest.fixture
def stamp_folder(tmp_path, monkeypatch):
    """A stamps folder like Tux Paint's: one photo, one flat drawing, one photo too small, one broken file."""
    src = tmp_path / "stamps"
    (src / "animals" / "mammals").mkdir(parents=True)
    (src / "symbols").mkdir()
    Image.fromarray(_noise_stamp(128, 0)).save(src / "animals" / "mammals" / "ox.png")
    drawing = np.zeros((128, 128, 4), np.uint8)
    drawing[20:100, 20:100] = (200, 30, 30, 255)
    Image.fromarray(drawing).save(src / "symbols" / "square.png")
    Image.fromarray(_noise_stamp(40, 1)).save(src / "animals" / "tiny.png")
    (src / "symbols" / "broken.png").write_bytes(b"not a png")
    monkeypatch.setenv("SPARSECC_STAMPS", str(src))
    monkeypatch.setenv("SPARSECC_DATA", str(tmp_path / "cache"))
    return src


def test_only_photos_are_kept_and_the_index_is_written_last(stamp_folder, tmp_path):
    out = st.fetch_stamps()
    index = json.loads((out / "index.json").read_text())
    assert [s["stamp"] for s in index["stamps"]] == ["animals/mammals/ox.png"]
    assert index["seen"] == 4 and index["rule"] == {"colours": st.PHOTO_COLOURS, "min_side": st.MIN_SIDE}
    photos = st.stamp_photos()
    assert len(photos) == 1 and photos[0].shape == (128, 128, 4)
    np.testing.assert_array_equal(photos[0], _noise_stamp(128, 0))


def test_a_missing_stamps_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECC_STAMPS", str(tmp_path / "nowhere"))
    monkeypatch.setenv("SPARSECC_DATA", str(tmp_path / "cache"))
    with pytest.raises(DataUnavailableError, match="nowhere"):
        st.stamp_photos()


def test_is_photo_rule():
    assert st.is_photo(_noise_stamp(st.MIN_SIDE, 2))
    assert not st.is_photo(_noise_stamp(st.MIN_SIDE - 1, 2))  # too small
    flat = np.full((200, 200, 4), 255, np.uint8)
    assert not st.is_photo(flat)  # one colour
    assert not st.is_photo(np.zeros((200, 200, 4), np.uint8))  # fully transparent


def test_composites_paste_one_stamp_on_a_background_and_are_seeded():
    red = np.zeros((60, 30, 4), np.uint8)
    red[...] = (255, 0, 0, 255)
    blue = np.zeros((300, 300, 3), np.uint8)
    blue[...] = (0, 0, 255)
    size = 64
    x = st.stamp_composites(40, size, seed=3, stamps=[red], backgrounds=[blue])
    assert x.shape == (40, 3, size, size) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    is_red = (x[:, 0] == 1.0) & (x[:, 1] == 0.0) & (x[:, 2] == 0.0)
    # The stamp's long side is 40-95% of the view: at least (0.4 * 64) x (0.2 * 64) pixels, less resampled edges.
    assert (is_red.sum((1, 2)) >= 0.8 * (0.4 * size) * (0.2 * size)).all()
    on_blue = ((x[:, 2] == 1.0) & (x[:, 0] == 0.0)).any((1, 2))
    assert 0 < (~on_blue).sum() < 40  # some views are on a plain colour instead of the photo crop
    np.testing.assert_array_equal(x, st.stamp_composites(40, size, seed=3, stamps=[red], backgrounds=[blue]))
    assert not np.array_equal(x, st.stamp_composites(40, size, seed=4, stamps=[red], backgrounds=[blue]))


def test_composites_reject_bad_arguments():
    with pytest.raises(ValueError, match="count"):
        st.stamp_composites(0, 64, stamps=[_noise_stamp(128, 0)], backgrounds=[np.zeros((80, 80, 3), np.uint8)])
    with pytest.raises(ValueError, match="no stamps"):
        st.stamp_composites(2, 64, stamps=[], backgrounds=[np.zeros((80, 80, 3), np.uint8)])


def test_training_inputs_routes_stamps_to_image_models(stamp_folder):
    spec = SimpleNamespace(name="tiny-imagenet-net", task="image-classification",
                           extras={"image_size": 32, "mean": 0.5, "std": 0.25})
    batches = training_inputs(spec, "stamps", samples=10, batch_size=4, seed=0)
    assert len(batches) == 2
    (x,), kwargs = batches[0]
    assert kwargs == {} and x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert float(x.min()) >= (0 - 0.5) / 0.25 and float(x.max()) <= (1 - 0.5) / 0.25
    assert "stamps" in TRAINING_SOURCES and "paragraphs" in TRAINING_SOURCES
    # thousands of views stay 8-bit until a batch is read
    assert batches.pixels.dtype == np.uint8 and batches.pixels.shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(batches.pixels.astype(np.float32) / 255.0,
                                  st.stamp_composites(8, 32, seed=0))


def test_training_inputs_name_what_is_wrong():
    text_model = SimpleNamespace(name="minilm", task="feature-extraction", extras={"tokenizer": object()})
    with pytest.raises(ValueError, match="minilm"):
        training_inputs(text_model, "stamps", samples=8)
    with pytest.raises(ValueError, match="stamps.*calibration and synthetic|paragraphs"):
        training_inputs(text_model, "imagenet", samples=8)
