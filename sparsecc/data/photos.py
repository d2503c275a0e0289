"""Photos that ship inside installed wheels, read with PIL (no pooch download).

scikit-image's bundled images (``skimage/data/*.png|jpg``), scikit-learn's two
sample photos and matplotlib's Grace Hopper, in two disjoint sets: the
evaluation uses `EVALUATION_PHOTOS`, calibration `CALIBRATION_PHOTOS`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from sparsecc.data.cache import DataUnavailableError

__all__ = ["EVALUATION_PHOTOS", "CALIBRATION_PHOTOS", "PACKAGE_PHOTOS", "photo", "photo_names", "photos_dir"]

# scikit-image's bundled photographs, in two disjoint sets. motorcycle_right is in
# neither: it is the stereo twin of motorcycle_left. Synthetic images (color wheel,
# logo, phantom, chessboards, horse silhouette) and the 102-pixel microaneurysms are left out.
EVALUATION_PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "coins", "hubble_deep_field", "moon",
    "motorcycle_left", "rocket", "clock_motion",
)
CALIBRATION_PHOTOS = ("brick", "grass", "gravel", "cell", "ihc", "retina", "page", "text",
                      "china", "flower", "grace_hopper")
# Calibration photos that ship with other installed packages (scikit-image's are textures,
# micrographs and pages; these three are scenes of the kind ImageNet classifiers were trained on).
PACKAGE_PHOTOS = {
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
}


def photos_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("the photos ship with scikit-image, which is not installed: "
                                   "pip install 'sparsecc[data]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"{relative} ships with {package}, which is not installed: pip install 'sparsecc[data]'")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise DataUnavailableError(f"{path} is missing: the installed {package} does not ship it")
    return path


def photo_names() -> tuple[str, ...]:
    return EVALUATION_PHOTOS + CALIBRATION_PHOTOS


def photo(name: str) -> np.ndarray:
    """One bundled scikit-image photo as uint8 RGB ``[H, W, 3]`` (grey ones replicated)."""
    from PIL import Image

    if name not in photo_names():
        raise ValueError(f"unknown photo {name!r}; known: {', '.join(photo_names())}")
    if name in PACKAGE_PHOTOS:
        path = _package_file(*PACKAGE_PHOTOS[name])
    else:
        folder = photos_dir()
        matches = [p for ext in (".png", ".jpg") if (p := folder / f"{name}{ext}").is_file()]
        if not matches:
            raise DataUnavailableError(f"{name}.png/.jpg is not in {folder}: scikit-image's bundled data is incomplete")
        path = matches[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)
