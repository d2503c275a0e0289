"""``photo-agreement``: top-1/top-5 agreement and KL to the dense model on 8 views of the evaluation photos."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sparsecc.data import EVALUATION_PHOTOS, photo
from sparsecc.quality.forwards import Forward
from sparsecc.quality.metrics import mean_kl, top_k_agreement
from sparsecc.quality.task import BATCH, EvalError, EvalOptions, batches, image_size, normalize_images, tick

__all__ = ["collect_photos", "score_photos"]


def _photo_views(size: int) -> tuple[np.ndarray, list[str]]:
    """Every evaluation photo in 8 views, float [0, 1], ``[N, 3, size, size]``."""
    from PIL import Image

    def resize_short(img: Image.Image, short: int) -> Image.Image:
        w, h = img.size
        s = short / min(w, h)
        return img.resize((max(short, round(w * s)), max(short, round(h * s))), Image.BILINEAR)

    def crop(img: Image.Image, x: int, y: int) -> np.ndarray:
        return np.asarray(img.crop((x, y, x + size, y + size)), np.float32) / 255.0

    views, labels = [], []
    for name in EVALUATION_PHOTOS:
        img = Image.fromarray(photo(name))
        small = resize_short(img, round(size * 256 / 224))
        w, h = small.size
        cx, cy = (w - size) // 2, (h - size) // 2
        big = resize_short(img, round(size * 320 / 224))
        bw, bh = big.size
        zoom = crop(big, (bw - size) // 2, (bh - size) // 2)
        center = crop(small, cx, cy)
        for label, v in (("center", center), ("center-flip", center[:, ::-1]), ("top-left", crop(small, 0, 0)),
                         ("top-right", crop(small, w - size, 0)), ("bottom-left", crop(small, 0, h - size)),
                         ("bottom-right", crop(small, w - size, h - size)), ("zoom", zoom), ("zoom-flip", zoom[:, ::-1])):
            views.append(v.transpose(2, 0, 1))
            labels.append(f"{name}/{label}")
    return np.stack(views).astype(np.float32), labels


def collect_photos(fwd: Forward, spec, opts: EvalOptions, progress) -> dict[str, Any]:
    x, labels = _photo_views(image_size(spec))
    bs = fwd.max_batch(opts.batch_size or BATCH["photo-agreement"])
    logits = []
    for i, j in batches(len(x), bs):
        logits.append(fwd((normalize_images(x[i:j], spec),), {})[0].float())
        tick(progress, "photos", j, len(x))
    return {"logits": torch.cat(logits), "views": labels}


_SURE = 0.5  # the dense model's top-1 probability above which a view counts as sure


def score_photos(raw, ref, opts):
    details = {"images": len(raw["views"]), "photos": len(raw["views"]) // 8, "views_per_photo": 8}
    if ref is None:
        raise EvalError("photo-agreement compares with the dense model, and none was given")
    lg, rl = raw["logits"], ref["logits"]
    metrics = {"top1_agreement": top_k_agreement(lg, rl, 1), "top5_agreement": top_k_agreement(lg, rl, 5),
               "kl_to_dense": mean_kl(lg, rl)}
    # views where the dense model is sure (top-1 probability above 1/2): a flip there is a real
    # error, not a tie between near-equal classes changing order
    sure = torch.softmax(rl.double(), -1).max(-1).values > _SURE
    details["dense_sure_views"] = int(sure.sum())
    if bool(sure.any()):
        metrics["top1_agreement_sure"] = top_k_agreement(lg[sure], rl[sure], 1)
    return metrics, details
