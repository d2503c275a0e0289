"""Calibration inputs built from the offline data, per model task.

Each item is one batch ``(args, kwargs)`` that the model (or its captured
program) takes as is; none of it overlaps what `sparsecc.quality.evaluate`
evaluates on:

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

from typing import Any, Sequence

import numpy as np

from sparsecc.data.lee import lee_background_sentences, lm_windows
from sparsecc.data.mnist import mnist_digits
from sparsecc.data.photos import CALIBRATION_PHOTOS, photo

__all__ = ["ImageBatches", "calibration_inputs", "is_digit_model", "mixup_pixels", "random_crop_pixels",
           "reference_inputs"]


def _kw_keys(spec: Any) -> list[str]:
    return list(spec.example_kwargs or {})


def random_crop_pixels(images: Sequence[np.ndarray], size: int, count: int, seed: int) -> np.ndarray:
    """``count`` seeded random-resized crops ``[count, 3, size, size]`` uint8 of RGB ``images`` (30-100% of
    the area, aspect 3/4-4/3, random flips)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = np.empty((count, 3, size, size), dtype=np.uint8)
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
        arr = np.asarray(Image.fromarray(img[y : y + ch, x : x + cw]).resize((size, size), Image.BILINEAR))
        if rng.random() < 0.5:
            arr = arr[:, ::-1]
        out[i] = arr.transpose(2, 0, 1)
    return out


def mixup_pixels(pixels: np.ndarray, seed: int) -> np.ndarray:
    """Each uint8 view ``[N, C, H, W]`` blended with another view of the set, ``l * a + (1 - l) * b`` with
    ``l ~ U(0, 1)`` (seeded): images no photograph shows, on which a teacher's answers are softer, so
    that a student distilled from few photographs matches the teacher's whole function, not only its
    answers on those photographs (Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", 2022)."""
    rng = np.random.default_rng(seed)
    partner = rng.permutation(len(pixels))
    weight = rng.uniform(0.0, 1.0, size=len(pixels)).astype(np.float32)
    out = np.empty_like(pixels)
    for i in range(0, len(pixels), 256):  # in chunks: the float copy of thousands of views would be GBs
        j = slice(i, i + 256)
        w = weight[j, None, None, None]
        mixed = w * pixels[j].astype(np.float32) + (1.0 - w) * pixels[partner[j]].astype(np.float32)
        out[j] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


class ImageBatches(Sequence):
    """Images ``[N, C, H, W]`` as batches ``((images,), {})`` of ``batch_size``, normalized as
    ``(x - mean) / std`` from a spec's ``extras`` when a batch is read: thousands of training views
    stay in memory as the 8-bit pixels they are (19,200 views at 224 are 2.9 GB, 11.6 GB as floats).

    ``pixels`` are uint8 (read as ``x / 255``) or floats in [0, 1]."""

    def __init__(self, pixels: np.ndarray, extras: dict[str, Any], batch_size: int) -> None:
        if pixels.ndim != 4 or batch_size < 1:
            raise ValueError(f"need images [N, C, H, W] and batch_size >= 1, got shape {pixels.shape}, "
                             f"batch_size={batch_size}")
        if pixels.dtype != np.uint8 and not np.issubdtype(pixels.dtype, np.floating):
            raise ValueError(f"images must be uint8 or floats in [0, 1], got {pixels.dtype}")
        self.pixels, self.batch_size = pixels, int(batch_size)
        self.mean, self.std = float(extras.get("mean", 0.0)), float(extras.get("std", 1.0))

    def __len__(self) -> int:
        return -(-len(self.pixels) // self.batch_size)

    def __getitem__(self, i):  # type: ignore[override]
        import torch

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        i %= len(self)
        x = torch.from_numpy(np.ascontiguousarray(self.pixels[i * self.batch_size:(i + 1) * self.batch_size]))
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        return (((x - self.mean) / self.std,), {})


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
        return ImageBatches(random_crop_pixels(photos, size, n * bs, seed=seed), extras, bs)
    if task == "image-classification" and is_digit_model(spec):
        bs = batch_size or 8
        images, _ = mnist_digits("calibration")
        if n * bs > len(images):
            raise ValueError(f"asked for {n} batches of {bs} digits; {len(images)} calibration digits exist")
        order = np.random.default_rng(seed).permutation(len(images))[: n * bs]
        return ImageBatches(images[order][:, None], extras, bs)
    return reference_inputs(spec, n, seq_len, batch_size, seed)


def is_digit_model(spec: Any) -> bool:
    args = getattr(spec, "example_args", ()) or ()
    return len(args) == 1 and hasattr(args[0], "shape") and tuple(args[0].shape[1:]) == (1, 28, 28)


def reference_inputs(spec, n, seq_len, batch_size, seed) -> list[tuple[tuple, dict]]:
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
