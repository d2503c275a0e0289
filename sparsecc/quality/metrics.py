"""Quality metrics: pure functions, tested against independent computations."""

from __future__ import annotations

import math

import numpy as np
import torch

from sparsecc.quality.task import EvalError

__all__ = ["perplexity_from_nll", "pearson", "spearman", "top_k_agreement", "mean_kl", "ridge_probe_accuracy"]


def perplexity_from_nll(nll_sum: float, tokens: int) -> float:
    if tokens < 1:
        raise EvalError("no tokens were scored")
    return math.exp(nll_sum / tokens)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    return float(xc @ yc / denom) if denom > 0 else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get the mean of the ranks they span."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


def top_k_agreement(logits: torch.Tensor, ref_logits: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows where the reference's top-1 class is among ``logits``' top k."""
    ref_top = ref_logits.argmax(-1)
    top = logits.topk(k, dim=-1).indices
    return float((top == ref_top[:, None]).any(-1).double().mean())


def mean_kl(logits: torch.Tensor, ref_logits: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(ref) || softmax(logits)), in nats."""
    lp = torch.log_softmax(logits.double(), -1)
    lq = torch.log_softmax(ref_logits.double(), -1)
    return float((lq.exp() * (lq - lp)).sum(-1).mean())


def ridge_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                         lam: float, classes: int) -> float:
    """Closed-form ridge regression to one-hot labels on standardized features; test accuracy."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = (np.asarray(train_x, np.float64) - mu) / sd
    b = (np.asarray(test_x, np.float64) - mu) / sd
    y = np.eye(classes)[train_y]
    intercept = y.mean(0)  # the features are centred, so the intercept is the label mean
    w = np.linalg.solve(a.T @ a + lam * np.eye(a.shape[1]), a.T @ (y - intercept))
    pred = (b @ w + intercept).argmax(1)
    return float((pred == test_y).mean())
