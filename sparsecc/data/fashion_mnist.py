"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX files, 60k train / 10k test).

Looked for in ``$SPARSECC_FASHION_MNIST`` when set, else ``/usr/share/datasets/fashion-mnist/``
and the cache's ``fashion-mnist/`` folder.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from sparsecc.data.cache import DataUnavailableError, data_dir

__all__ = ["FASHION_MNIST_DIR", "fashion_mnist", "fashion_mnist_dir"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def _fashion_dirs() -> list[Path]:
    return [Path(os.environ["SPARSECC_FASHION_MNIST"])] if os.environ.get("SPARSECC_FASHION_MNIST") else [
        FASHION_MNIST_DIR, data_dir() / "fashion-mnist"]


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k): uint8 ``[N, 28, 28]`` and int64 labels."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for d in _fashion_dirs():
        img, lab = d / f"{prefix}-images-idx3-ubyte.gz", d / f"{prefix}-labels-idx1-ubyte.gz"
        if img.is_file() and lab.is_file():
            return _read_idx(img), _read_idx(lab).astype(np.int64)
    raise DataUnavailableError(
        f"Fashion-MNIST is not installed (looked in {', '.join(str(d) for d in _fashion_dirs())}): "
        "apt-get install dataset-fashion-mnist (Debian/Ubuntu; `make data` does it when run as root), "
        "or set SPARSECC_FASHION_MNIST to a folder with the four *-ubyte.gz files"
    )


def fashion_mnist_dir() -> Path:
    """The folder the test split is read from (the first one that has it)."""
    return next(d for d in _fashion_dirs() if (d / "t10k-images-idx3-ubyte.gz").is_file())
