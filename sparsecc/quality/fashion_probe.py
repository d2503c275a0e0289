"""``fashion-probe``: a ridge probe on the features before the classifier, on Fashion-MNIST."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecc.data import fashion_mnist
from sparsecc.quality.forwards import Forward
from sparsecc.quality.metrics import ridge_probe_accuracy
from sparsecc.quality.task import BATCH, EvalError, EvalOptions, batches, image_size, normalize_images, tick

__all__ = ["collect_probe", "score_probe"]


def _fashion_subset(split: str, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = fashion_mnist(split)
    if count > len(images):
        raise EvalError(f"asked for {count} Fashion-MNIST {split} images; there are {len(images)}")
    idx = np.sort(np.random.default_rng(seed + (0 if split == "train" else 1)).permutation(len(images))[:count])
    return images[idx], labels[idx]


def _upsample(images: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    t = torch.nn.functional.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t.expand(-1, 3, -1, -1).contiguous().numpy()


def collect_probe(fwd: Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    size = image_size(spec)
    if fwd._features is None:
        raise EvalError(fwd.no_features_reason)
    out = {}
    bs = fwd.max_batch(opts.batch_size or BATCH["fashion-probe"])
    total = opts.probe_train + opts.probe_test
    done = 0
    for split, count in (("train", opts.probe_train), ("test", opts.probe_test)):
        images, labels = _fashion_subset(split, count, opts.seed)
        feats = []
        for i, j in batches(len(images), bs):
            f = fwd.features((normalize_images(_upsample(images[i:j], size), spec),), {})
            feats.append(f.reshape(f.shape[0], -1).double())
            done += j - i
            tick(progress, "Fashion-MNIST features", done, total)
        out[split] = (torch.cat(feats).numpy(), labels)
    return out


def score_probe(raw, ref, opts):
    (tx, ty), (vx, vy) = raw["train"], raw["test"]
    acc = ridge_probe_accuracy(tx, ty, vx, vy, opts.probe_lambda * len(tx), 10)
    metrics = {"probe_accuracy": acc}
    if ref is not None:
        (rtx, rty), (rvx, rvy) = ref["train"], ref["test"]
        metrics["dense_probe_accuracy"] = ridge_probe_accuracy(rtx, rty, rvx, rvy, opts.probe_lambda * len(rtx), 10)
    return metrics, {"train": len(tx), "test": len(vx), "features": int(tx.shape[1]),
                     "lambda": opts.probe_lambda * len(tx), "seed": opts.seed}
