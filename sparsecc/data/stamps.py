"""Cut-out photographs from Debian's ``tuxpaint-stamps-default``, composited into training images.

Tux Paint's stamps (GPL-2) are about 800 PNGs with transparent backgrounds:
animals, plants, food, vehicles, tools, buildings. Most are photographs of the
kind of object ImageNet classifiers were trained on, some are drawings. The
photographs are told from the drawings by their colours: a stamp counts as a
photo when its opaque pixels hold at least `PHOTO_COLOURS` distinct colours
(drawings are flat fills) and its shorter side has at least `MIN_SIDE` pixels;
316 of the 796 pass, about one in five of them a shaded drawing.

`fetch_stamps` copies those into the cache (``tuxpaint-stamps/``) with an
``index.json`` written last, from ``$SPARSECC_STAMPS`` or
``/usr/share/tuxpaint/stamps`` when installed, else from the package itself
(``apt-get download``, unpacked with ``dpkg-deb``; no root needed).

`stamp_composites` builds training views from them: each view is a seeded
random crop of a calibration photo (`CALIBRATION_PHOTOS`), or a plain colour,
with one stamp pasted on at 40-95% of the side, flipped at random. None of it
is an evaluation photo (`EVALUATION_PHOTOS`), so image models can be trained
on it and evaluated as before.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sparsecc.data.cache import DataUnavailableError, atomic_write, cached_index, data_dir
from sparsecc.data.debian import package_files

if TYPE_CHECKING:
    from sparsecc.data.calibration import ImageBatches

__all__ = ["STAMPS_DEB", "STAMPS_DIR", "PHOTO_COLOURS", "MIN_SIDE", "fetch_stamps", "stamp_photos", "stamp_pixels",
           "stamp_composites", "is_photo", "training_images"]

STAMPS_DEB = "tuxpaint-stamps-default"
STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")  # where the Debian package installs them
PHOTO_COLOURS = 1500
MIN_SIDE = 96
_PLAIN_BACKGROUND = 0.3  # share of views on a plain colour, as product photos often are
_INDEX_VERSION = 1


def _cache() -> Path:
    return data_dir() / "tuxpaint-stamps"


def is_photo(rgba: np.ndarray) -> bool:
    """Whether an RGBA stamp ``[H, W, 4]`` is a photograph by the module's rule (colours, size)."""
    if min(rgba.shape[:2]) < MIN_SIDE:
        return False
    opaque = rgba[..., 3] > 128
    if not opaque.any():
        return False
    rgb = rgba[opaque][:, :3].astype(np.int64)
    return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])) >= PHOTO_COLOURS


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGBA"), dtype=np.uint8)


def _pngs_from_folder(folder: Path):
    for path in sorted(folder.rglob("*.png")):
        yield path.relative_to(folder).as_posix(), path.read_bytes()


def fetch_stamps() -> Path:
    """Copy the photo stamps into the cache (see the module docstring); returns the cache folder."""
    out = _cache()
    if (out / "index.json").is_file():
        return out
    env = os.environ.get("SPARSECC_STAMPS")
    folder = Path(env) if env else (STAMPS_DIR if STAMPS_DIR.is_dir() else None)
    if env and not folder.is_dir():
        raise DataUnavailableError(f"SPARSECC_STAMPS={env} is not a folder")
    with tempfile.TemporaryDirectory(prefix="sparsecc-stamps-") as tmp:
        pngs = _pngs_from_folder(folder) if folder else package_files(STAMPS_DEB, STAMPS_DIR, ".png", Path(tmp))
        kept, seen = [], 0
        for rel, data in pngs:
            seen += 1
            try:
                rgba = _decode(data)
            except OSError:
                continue  # not a readable PNG: not a stamp we can use
            if is_photo(rgba):
                name = rel.replace("/", "__")
                atomic_write(out / name, data)
                kept.append({"file": name, "stamp": rel, "shape": list(rgba.shape[:2])})
    if not kept:
        raise DataUnavailableError(f"none of the {seen} stamps found is a photo by the rule "
                                   f"(>= {PHOTO_COLOURS} colours, >= {MIN_SIDE} px)")
    index = {"version": _INDEX_VERSION, "source": str(folder) if folder else f"apt-get download {STAMPS_DEB}",
             "seen": seen, "rule": {"colours": PHOTO_COLOURS, "min_side": MIN_SIDE}, "stamps": kept}
    atomic_write(out / "index.json", json.dumps(index, indent=1).encode())
    return out


def stamp_photos() -> list[np.ndarray]:
    """The photo stamps as uint8 RGBA ``[H, W, 4]``, in the index's (sorted) order."""
    folder = _cache()
    index = cached_index(folder, fetch_stamps, "the Tux Paint stamps")
    return [_decode((folder / s["file"]).read_bytes()) for s in index["stamps"]]


def stamp_composites(count: int, size: int, seed: int = 0, stamps: list[np.ndarray] | None = None,
                     backgrounds: list[np.ndarray] | None = None) -> np.ndarray:
    """`stamp_pixels` as floats in [0, 1]."""
    return stamp_pixels(count, size, seed, stamps, backgrounds).astype(np.float32) / 255.0


def stamp_pixels(count: int, size: int, seed: int = 0, stamps: list[np.ndarray] | None = None,
                 backgrounds: list[np.ndarray] | None = None) -> np.ndarray:
    """``count`` seeded views ``[count, 3, size, size]``, uint8: one stamp on a photo crop or plain colour.

    ``stamps`` (RGBA) default to `stamp_photos`, ``backgrounds`` (RGB) to the calibration photos.
    """
    from PIL import Image

    from sparsecc.data.calibration import random_crop_pixels
    from sparsecc.data.photos import CALIBRATION_PHOTOS, photo

    if count < 1 or size < 8:
        raise ValueError(f"need count >= 1 and size >= 8, got count={count}, size={size}")
    stamps = stamp_photos() if stamps is None else stamps
    if not stamps:
        raise ValueError("no stamps to composite")
    backgrounds = [photo(p) for p in CALIBRATION_PHOTOS] if backgrounds is None else backgrounds
    rng = np.random.default_rng(seed)
    scenes = random_crop_pixels(backgrounds, size, count, seed=seed + 1)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
    for i in range(count):
        if rng.random() < _PLAIN_BACKGROUND:
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            canvas = Image.new("RGB", (size, size), colour)
        else:
            canvas = Image.fromarray(np.ascontiguousarray(scenes[i].transpose(1, 2, 0)))
        stamp = Image.fromarray(stamps[int(rng.integers(len(stamps)))])
        if rng.random() < 0.5:
            stamp = stamp.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = rng.uniform(0.4, 0.95) * size / max(stamp.size)
        w, h = max(1, round(stamp.width * scale)), max(1, round(stamp.height * scale))
        stamp = stamp.resize((w, h), Image.BILINEAR)
        x, y = int(rng.integers(size - w + 1)), int(rng.integers(size - h + 1))
        canvas.paste(stamp, (x, y), stamp)
        out[i] = np.asarray(canvas).transpose(2, 0, 1)
    return out


def training_images(spec: Any, samples: int, batch_size: int = 8, seed: int = 0) -> ImageBatches:
    """``samples // batch_size`` batches of `stamp_pixels` for an ImageNet classifier ``spec``
    (``extras['image_size']``), normalized with its mean and std as each batch is read."""
    from sparsecc.data.calibration import ImageBatches

    extras = getattr(spec, "extras", {}) or {}
    if getattr(spec, "task", "") != "image-classification" or "image_size" not in extras:
        raise ValueError(f"training data 'stamps' is photos for ImageNet classifiers; model "
                         f"{getattr(spec, 'name', '?')!r} (task {getattr(spec, 'task', '')!r}) has no image_size")
    n = max(1, samples // batch_size)
    return ImageBatches(stamp_pixels(n * batch_size, int(extras["image_size"]), seed=seed), extras, batch_size)
