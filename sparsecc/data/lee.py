"""The Lee corpus (news prose) from the ``gensim==4.4.0`` wheel's test data, and LM windows over it.

``lee_background.cor`` (300 documents, ~60k words), ``lee.cor`` (50
documents), ``similarities0-1.txt`` (human similarity ratings of those 50,
a 50x50 upper-triangular matrix), ``pang_lee_polarity.cor`` (200 labelled
sentences, latin-1). The wheel is fetched with ``pip download --no-deps``
and only these four files are kept; gensim is never installed.

Language-model windows (`lm_windows`): ``lee_background.cor`` is read as one
text (documents separated by newlines) and tokenized once, without special
tokens. The first ``len(tokens) // 2`` tokens are the **calibration** split,
the rest the **evaluation** split. Windows of ``window`` tokens start at the
beginning of their split and advance by ``stride`` (default ``window``: no
overlap); the tail shorter than a window is dropped.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sparsecc.data.cache import FETCH_HINT, DataUnavailableError, atomic_write, data_dir, run_tool

__all__ = [
    "GENSIM_VERSION", "GENSIM_FILES", "LM_SPLITS", "fetch_gensim_data", "lee_background_text",
    "lee_documents", "lee_similarities", "polarity_sentences", "lee_background_sentences",
    "lm_tokens", "lm_windows",
]

GENSIM_VERSION = "4.4.0"
GENSIM_FILES = ("lee_background.cor", "lee.cor", "similarities0-1.txt", "pang_lee_polarity.cor")
LM_SPLITS = ("calibration", "evaluation")


def _gensim_dir() -> Path:
    return data_dir() / f"gensim-{GENSIM_VERSION}"


def _installed_gensim_data() -> Path | None:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(list(spec.submodule_search_locations)[0]) / "test" / "test_data"
    return d if all((d / f).is_file() for f in GENSIM_FILES) else None


def fetch_gensim_data() -> Path:
    """Download the gensim wheel (no dependencies) and keep its four Lee/polarity files."""
    out = _gensim_dir()
    if all((out / f).is_file() for f in GENSIM_FILES):
        return out
    with tempfile.TemporaryDirectory(prefix="sparsecc-gensim-") as tmp:
        run_tool([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "--quiet", f"gensim=={GENSIM_VERSION}", "-d", tmp], Path(tmp))
        wheels = sorted(Path(tmp).glob("gensim-*.whl"))
        if not wheels:
            raise DataUnavailableError(f"pip download gensim=={GENSIM_VERSION} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in GENSIM_FILES:
                atomic_write(out / name, z.read(f"gensim/test/test_data/{name}"))
    return out


def _gensim_file(name: str) -> Path:
    local = _gensim_dir() / name
    if local.is_file():
        return local
    installed = _installed_gensim_data()
    if installed is not None:
        return installed / name
    try:
        return fetch_gensim_data() / name
    except DataUnavailableError as e:
        raise DataUnavailableError(
            f"{name} (gensim=={GENSIM_VERSION} test data) is not in {_gensim_dir()} and could not be "
            f"fetched ({e}); run: {FETCH_HINT}"
        ) from e


def lee_background_text() -> str:
    """``lee_background.cor``: 300 news documents, one per line."""
    return _gensim_file("lee_background.cor").read_text(encoding="utf-8")


def lee_documents() -> list[str]:
    """The 50 documents of ``lee.cor`` that `lee_similarities` rates."""
    # latin-1: the file has one non-ASCII byte, a pound sign (0xa3).
    docs = [d.strip() for d in _gensim_file("lee.cor").read_text(encoding="latin-1").splitlines()]
    return [d for d in docs if d]


def lee_similarities() -> np.ndarray:
    """Human similarity ratings of the 50 Lee documents: a symmetric 50x50 matrix, 1 on the diagonal.

    The file holds the upper triangle; the lower half is filled from it.
    """
    rows = [[float(v) for v in line.split()] for line in
            _gensim_file("similarities0-1.txt").read_text().splitlines() if line.strip()]
    m = np.array(rows, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"similarities0-1.txt is not a square matrix: shape {m.shape}")
    upper = np.triu(m)
    return upper + np.triu(m, 1).T


def polarity_sentences() -> list[tuple[str, int]]:
    """``pang_lee_polarity.cor``: (sentence, label) with label 1 = positive, 0 = negative."""
    out = []
    for line in _gensim_file("pang_lee_polarity.cor").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        tag, _, text = line.partition(" ")
        if tag not in ("__label__pos", "__label__neg"):
            raise ValueError(f"pang_lee_polarity.cor: unexpected label {tag!r}")
        out.append((text.strip(), int(tag == "__label__pos")))
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")


def lee_background_sentences(split: str = "calibration") -> list[str]:
    """Sentences of the first (calibration) or second (evaluation) 150 ``lee_background`` documents."""
    _check_split(split)
    docs = [d.strip() for d in lee_background_text().splitlines() if d.strip()]
    half = docs[: len(docs) // 2] if split == "calibration" else docs[len(docs) // 2 :]
    return [s.strip() for d in half for s in _SENTENCE_END.split(d) if len(s.split()) >= 3]


# -- language-model windows --------------------------------------------------------------

_TOKEN_CACHE: dict[tuple, list[int]] = {}


def _check_split(split: str) -> None:
    if split not in LM_SPLITS:
        raise ValueError(f"split must be one of {LM_SPLITS}, got {split!r}")


def lm_tokens(tokenizer: Any, split: str) -> list[int]:
    """The token ids of one half of ``lee_background`` (tokenized once per tokenizer, cached)."""
    _check_split(split)
    key = (getattr(tokenizer, "name_or_path", ""), type(tokenizer).__name__, len(tokenizer), id(tokenizer))
    if key not in _TOKEN_CACHE:
        _TOKEN_CACHE[key] = list(tokenizer(lee_background_text(), add_special_tokens=False)["input_ids"])
    ids = _TOKEN_CACHE[key]
    mid = len(ids) // 2
    return ids[:mid] if split == "calibration" else ids[mid:]


def lm_windows(tokenizer: Any, split: str, window: int = 256, stride: int | None = None,
               n: int | None = None) -> "torch.LongTensor":  # noqa: F821
    """Token windows ``[n, window]`` of one half of ``lee_background`` (see the module docstring)."""
    import torch

    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    stride = window if stride is None else int(stride)
    if not 1 <= stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    ids = lm_tokens(tokenizer, split)
    available = 0 if len(ids) < window else (len(ids) - window) // stride + 1
    if n is None:
        n = available
    if n < 1 or n > available:
        raise ValueError(
            f"asked for {n} windows of {window} tokens (stride {stride}) from the {split} half of "
            f"lee_background, which has {len(ids)} tokens: {available} windows are available"
        )
    t = torch.tensor(ids, dtype=torch.long)
    return torch.stack([t[i * stride : i * stride + window] for i in range(n)])
