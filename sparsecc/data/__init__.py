"""Offline data sources: text, images and digits that install from the package registries.

Import data functions from here (``from sparsecc.data import lm_windows``).
"""

from sparsecc.data.datasets import (
    DataUnavailableError,
    data_dir,
    fetch,
    lee_background_text,
    lee_documents,
    lee_similarities,
    polarity_sentences,
    lee_background_sentences,
    lm_tokens,
    lm_windows,
    mnist_digits,
    fashion_mnist,
    photo,
    photo_names,
    EVALUATION_PHOTOS,
    CALIBRATION_PHOTOS,
    PACKAGE_PHOTOS,
    calibration_inputs,
    LM_SPLITS,
)

__all__ = [
    "DataUnavailableError",
    "data_dir",
    "fetch",
    "lee_background_text",
    "lee_documents",
    "lee_similarities",
    "polarity_sentences",
    "lee_background_sentences",
    "lm_tokens",
    "lm_windows",
    "mnist_digits",
    "fashion_mnist",
    "photo",
    "photo_names",
    "EVALUATION_PHOTOS",
    "CALIBRATION_PHOTOS",
    "PACKAGE_PHOTOS",
    "calibration_inputs",
    "LM_SPLITS",
]
