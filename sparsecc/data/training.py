"""Training data by name, for recovery (``recovery: {data: NAME}``): English prose or composited photos.

Both sources are disjoint from what `sparsecc.quality.evaluate` evaluates on:

- ``prose``, ``wiki``, ``paragraphs``, ``noised-paragraphs``, ``cropped-paragraphs`` (`sparsecc.data.prose`),
  ``glosses`` (WordNet's definitions, `sparsecc.data.glosses`): text for language
  models and sentence encoders, alone or joined by ``+`` (``paragraphs+glosses``);
- ``stamps`` (`sparsecc.data.stamps`): Tux Paint's cut-out photographs pasted on
  calibration-photo crops, for ImageNet classifiers;
- ``gcompris`` (`sparsecc.data.gcompris`): random crops of GCompris's photographs of
  animals, tools and buildings, for ImageNet classifiers;
- ``gcompris-mix``: the same crops blended pairwise (mixup,
  `sparsecc.data.calibration.mixup_pixels`): more distinct images from the same
  247 photographs.
"""

from __future__ import annotations

from typing import Any, Callable

from sparsecc.data import gcompris, stamps
from sparsecc.data.calibration import ImageBatches, mixup_pixels
from sparsecc.data.prose import PROSE_SOURCES
from sparsecc.data.prose import training_inputs as prose_inputs

__all__ = ["TRAINING_SOURCES", "IMAGE_SOURCES", "training_inputs"]


def _mixed(make: Callable[..., ImageBatches]) -> Callable[..., ImageBatches]:
    """An image source whose views are blended pairwise (`calibration.mixup_pixels`)."""

    def make_mixed(spec: Any, samples: int, batch_size: int = 8, seed: int = 0) -> ImageBatches:
        views = make(spec, samples, batch_size, seed)
        return ImageBatches(mixup_pixels(views.pixels, seed + 7), {"mean": views.mean, "std": views.std},
                            views.batch_size)
    return make_mixed


_IMAGE_MAKERS = {"stamps": stamps.training_images, "gcompris": gcompris.training_images,
                 "gcompris-mix": _mixed(gcompris.training_images)}
IMAGE_SOURCES = tuple(_IMAGE_MAKERS)
TRAINING_SOURCES = PROSE_SOURCES + IMAGE_SOURCES


def training_inputs(spec: Any, name: str, samples: int, seq_len: int | None = None, batch_size: int = 8,
                    seed: int = 0) -> list[tuple[tuple, dict]]:
    """Training batches ``(args, kwargs)`` of source ``name`` for zoo model ``spec``: ``samples``
    LM windows, or ``samples // batch_size`` batches of sentences, paragraphs or images."""
    if name in IMAGE_SOURCES:
        return _IMAGE_MAKERS[name](spec, samples, batch_size, seed)
    if all(part in PROSE_SOURCES for part in name.split("+")):  # one source, or several joined by '+'
        return prose_inputs(spec, name, samples, seq_len, batch_size, seed)
    raise ValueError(f"unknown training data {name!r}; the sources are {', '.join(TRAINING_SOURCES)}, "
                     "besides calibration and synthetic")
