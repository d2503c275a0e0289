"""What every evaluation task shares: its options, its error, the `Task` record and batching helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from sparsecc.errors import SparseccError

__all__ = ["EvalError", "EvalOptions", "Task", "Progress", "BATCH", "batches", "tick", "normalize_images", "image_size"]


Progress = Callable[[str, int, int], None]


class EvalError(SparseccError, ValueError):
    """An evaluation cannot run: unknown task, a task that does not fit the model, missing data or build."""


@dataclass
class EvalOptions:
    """Knobs of the protocols; the defaults are the documented protocol."""

    window: int = 256
    stride: int | None = None
    max_windows: int | None = None  # None: every window of the evaluation half
    batch_size: int | None = None  # None: per task (see BATCH)
    probe_train: int = 2000
    probe_test: int = 1000
    probe_lambda: float = 0.1
    max_digits: int | None = None
    seed: int = 0


# Batch size per task when EvalOptions.batch_size is None.
BATCH = {"perplexity": 4, "lee-similarity": 10, "photo-agreement": 16, "fashion-probe": 32, "digit-accuracy": 250}


@dataclass(frozen=True)
class Task:
    """One evaluation protocol: ``collect`` runs a model on the data, ``score`` turns raw outputs into metrics."""

    name: str
    description: str
    primary: str  # the metric sweeps plot
    higher_is_better: bool
    collect: Callable  # (forward, spec, options, progress) -> raw outputs
    score: Callable  # (raw, reference raw or None, options) -> (metrics, details)
    needs_reference: bool = True


def batches(n: int, size: int):
    """``(start, end)`` of consecutive batches of ``size`` over ``n`` items."""
    for i in range(0, n, size):
        yield i, min(n, i + size)


def tick(progress: Progress | None, desc: str, done: int, total: int) -> None:
    if progress is not None:
        progress(desc, done, total)


def normalize_images(x: np.ndarray, spec) -> torch.Tensor:
    """``(x - mean) / std`` with the spec's normalization, as a float32 tensor."""
    ex = spec.extras or {}
    return torch.from_numpy(((x - float(ex.get("mean", 0.0))) / float(ex.get("std", 1.0))).astype(np.float32))


def image_size(spec) -> int:
    size = (spec.extras or {}).get("image_size")
    if size is None:
        raise EvalError(f"model {spec.name!r} has no extras['image_size']: the photo tasks need an ImageNet classifier")
    return int(size)
