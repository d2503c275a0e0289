"""Photographs from Debian's ``gcompris-qt-data``, cropped into training images.

GCompris (GPL-3+) is an educational suite; a few of its activities show real
photographs, stored as WebP inside Qt resource bundles (``.rcc``): tools,
windmills, solar panels, fish, dams (``categorization``), wild and farm animals
(``erase``, ``explore_world_animals``, ``explore_farm_animals``) and buildings
(``explore_monuments``). These are whole scenes, object and surroundings, as
ImageNet's photos are, where `sparsecc.data.stamps` gives cut-outs.

`fetch_gcompris_photos` reads those bundles (`rcc_files`, a reader of Qt's
resource format), keeps the opaque images with at least `MIN_SIDE` pixels a side
and `PHOTO_COLOURS` colours (drawings and icons have fewer), drops any that
looks like an evaluation photo (`EVALUATION_PHOTOS`, compared by a 16x16
average hash), and copies the rest into the cache (``gcompris-photos/``) with an
``index.json`` written last. The bundles come from ``$SPARSECC_GCOMPRIS`` (a
folder of ``.rcc`` files), ``/usr/share/gcompris-qt/rcc`` when installed, or
the package itself (``apt-get download``, unpacked with ``dpkg-deb``).

`training_images` makes seeded random-resized crops of them (`random_crop_pixels`).
"""

from __future__ import annotations

import io
import json
import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from sparsecc.data.cache import DataUnavailableError, atomic_write, cached_index, data_dir
from sparsecc.data.debian import package_files

if TYPE_CHECKING:
    from sparsecc.data.calibration import ImageBatches

__all__ = ["GCOMPRIS_DEB", "RCC_DIR", "PHOTO_ACTIVITIES", "MIN_SIDE", "PHOTO_COLOURS", "rcc_files",
           "fetch_gcompris_photos", "gcompris_photos", "training_images"]

GCOMPRIS_DEB = "gcompris-qt-data"
RCC_DIR = Path("/usr/share/gcompris-qt/rcc")  # where the Debian package installs the bundles
PHOTO_ACTIVITIES = ("categorization", "erase", "explore_farm_animals", "explore_world_animals", "explore_monuments")
IMAGE_SUFFIXES = (".webp", ".jpg", ".jpeg", ".png")
MIN_SIDE = 112  # the tools in `categorization` are 320 px long and thin; crops are resized anyway
PHOTO_COLOURS = 1500
_LOOKALIKE_BITS = 24  # of 256 hash bits: closer than this to an evaluation photo counts as the same picture
_INDEX_VERSION = 1


def _cache() -> Path:
    return data_dir() / "gcompris-photos"


def rcc_files(data: bytes) -> Iterator[tuple[str, bytes]]:
    """``(path, bytes)`` of every file in a Qt binary resource bundle (``rcc`` format 1-3).

    The header gives the offsets of the tree (fixed-size nodes), the names (UTF-16) and the data
    (length-prefixed; zlib-compressed entries carry their own length first). Zstd-compressed
    entries are skipped: Qt stores images as they are, since compressing them gains nothing."""
    if data[:4] != b"qres":
        raise ValueError("not a Qt resource bundle (no 'qres' magic)")
    version, tree, payload, names = struct.unpack(">4I", data[4:20])
    if not 1 <= version <= 3:
        raise ValueError(f"Qt resource bundle version {version} is not known (1-3)")
    node_size = 14 + (8 if version >= 2 else 0)  # version 2 added a modification time per node

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", data[names + offset:names + offset + 2])
        return data[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(node: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        at = tree + node * node_size
        name_offset, flags = struct.unpack(">IH", data[at:at + 6])
        path = prefix + name(name_offset) if node else ""
        if flags & 0x02:  # a directory: child count, first child
            count, first = struct.unpack(">II", data[at + 6:at + 14])
            for child in range(first, first + count):
                yield from walk(child, path + "/" if path else "")
            return
        (offset,) = struct.unpack(">I", data[at + 10:at + 14])
        (size,) = struct.unpack(">I", data[payload + offset:payload + offset + 4])
        body = data[payload + offset + 4:payload + offset + 4 + size]
        if flags & 0x04:
            return  # zstd
        yield path, zlib.decompress(body[4:]) if flags & 0x01 else body

    yield from walk(0, "")


def _average_hash(rgb: np.ndarray) -> np.ndarray:
    from PIL import Image

    small = np.asarray(Image.fromarray(rgb).convert("L").resize((16, 16), Image.BILINEAR), dtype=np.float32)
    return (small > small.mean()).reshape(-1)


def _evaluation_hashes() -> list[tuple[str, np.ndarray]]:
    from sparsecc.data.photos import EVALUATION_PHOTOS, photo

    out = []
    for p in EVALUATION_PHOTOS:
        img = photo(p)
        out.append((p, _average_hash(np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3])))
    return out


def _decode(data: bytes) -> np.ndarray | None:
    """RGB ``[H, W, 3]``, or None for an image with transparency (an icon or a cut-out)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        if "A" in im.getbands() and im.getchannel("A").getextrema()[0] < 255:
            return None
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _is_photo(rgb: np.ndarray) -> bool:
    if min(rgb.shape[:2]) < MIN_SIDE:
        return False
    flat = rgb.reshape(-1, 3)[::3].astype(np.int64)
    return len(np.unique(flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2])) >= PHOTO_COLOURS


def _bundles(tmp: Path) -> tuple[Iterator[tuple[str, bytes]], str]:
    env = os.environ.get("SPARSECC_GCOMPRIS")
    folder = Path(env) if env else (RCC_DIR if RCC_DIR.is_dir() else None)
    if env and not folder.is_dir():
        raise DataUnavailableError(f"SPARSECC_GCOMPRIS={env} is not a folder")
    if folder is not None:
        found = ((p.name, p.read_bytes()) for p in sorted(folder.glob("*.rcc")))
        return found, str(folder)
    return package_files(GCOMPRIS_DEB, RCC_DIR, ".rcc", tmp), f"apt-get download {GCOMPRIS_DEB}"


def fetch_gcompris_photos() -> Path:
    """Copy the photographs of `PHOTO_ACTIVITIES` into the cache (see the module docstring)."""
    out = _cache()
    if (out / "index.json").is_file():
        return out
    evaluation = _evaluation_hashes()
    kept, seen, dropped = [], 0, []
    with tempfile.TemporaryDirectory(prefix="sparsecc-gcompris-") as tmp:
        bundles, source = _bundles(Path(tmp))
        for bundle, data in bundles:
            activity = bundle.removesuffix(".rcc")
            if activity not in PHOTO_ACTIVITIES:
                continue
            for path, body in rcc_files(data):
                if not path.lower().endswith(IMAGE_SUFFIXES):
                    continue
                seen += 1
                try:
                    rgb = _decode(body)
                except OSError:
                    continue  # not an image PIL reads
                if rgb is None or not _is_photo(rgb):
                    continue
                h = _average_hash(rgb)
                like = [p for p, e in evaluation if int((h != e).sum()) < _LOOKALIKE_BITS]
                if like:
                    dropped.append({"photo": f"{activity}:{path}", "looks_like": like})
                    continue
                name = f"{activity}__{path.replace('/', '__')}"
                atomic_write(out / name, body)
                kept.append({"file": name, "photo": f"{activity}:{path}", "shape": list(rgb.shape[:2])})
    if not kept:
        raise DataUnavailableError(f"no photograph found among {seen} images of {', '.join(PHOTO_ACTIVITIES)} "
                                   f"in {source}")
    index = {"version": _INDEX_VERSION, "source": source, "seen": seen, "dropped_as_evaluation_lookalikes": dropped,
             "rule": {"min_side": MIN_SIDE, "colours": PHOTO_COLOURS}, "photos": kept}
    atomic_write(out / "index.json", json.dumps(index, indent=1).encode())
    return out


def gcompris_photos() -> list[np.ndarray]:
    """The cached photographs, RGB ``[H, W, 3]`` uint8, fetched first when missing."""
    folder = _cache()
    index = cached_index(folder, fetch_gcompris_photos, "the GCompris photographs")
    return [_decode((folder / p["file"]).read_bytes()) for p in index["photos"]]


def training_images(spec: Any, samples: int, batch_size: int = 8, seed: int = 0) -> ImageBatches:
    """``samples // batch_size`` batches of seeded random-resized crops of the photographs for an ImageNet
    classifier ``spec`` (``extras['image_size']``), normalized with its mean and std as each batch is read."""
    from sparsecc.data.calibration import ImageBatches, random_crop_pixels

    extras = getattr(spec, "extras", {}) or {}
    if getattr(spec, "task", "") != "image-classification" or "image_size" not in extras:
        raise ValueError(f"training data 'gcompris' is photos for ImageNet classifiers; model "
                         f"{getattr(spec, 'name', '?')!r} (task {getattr(spec, 'task', '')!r}) has no image_size")
    n = max(1, samples // batch_size)
    pixels = random_crop_pixels(gcompris_photos(), int(extras["image_size"]), n * batch_size, seed=seed)
    return ImageBatches(pixels, extras, batch_size)
