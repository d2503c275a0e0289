"""The teacher's outputs and the student-vs-teacher loss every recovery method reports.

``loss_before`` / ``loss_after`` of a `RecoveryResult` are this loss on the
training batches, so methods compare on one scale: KL at the options'
temperature for logits, cosine + relative MSE for hidden states and
embeddings (`distillation_loss`).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch.export import ExportedProgram

from sparsecc.recovery.base import Batch, RecoveryOptions

__all__ = ["distillation_loss", "float_leaves", "teacher_outputs", "TeacherOutputs", "TEACHER_CACHE_BYTES",
           "loss_kind", "output_loss", "batch_loss"]

_LOGIT_TASKS = ("causal-lm", "image-classification", "classification", "lm")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 2.0) -> torch.Tensor:
    """The loss between one student output and the teacher's (see the module docstring)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student output {list(student.shape)} does not match the teacher's {list(teacher.shape)}")
    if kind == "kl":
        t = temperature
        return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                        reduction="batchmean") * t * t
    if kind == "cosine":
        cos = 1 - F.cosine_similarity(student, teacher, dim=-1).mean()
        return cos + (student - teacher).pow(2).mean() / teacher.pow(2).mean().clamp_min(1e-12)
    if kind == "mse":
        return (student - teacher).pow(2).mean()
    raise ValueError(f"unknown distillation loss {kind!r}; use kl, cosine, mse or auto")


def float_leaves(out: Any) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def _module(model: Any) -> torch.nn.Module:
    return model.module() if isinstance(model, ExportedProgram) else model.eval()


# Teacher outputs of all batches together are kept up to this size; past it each is computed again when used.
TEACHER_CACHE_BYTES = 1 << 29


class TeacherOutputs(Sequence):
    """The teacher's floating-point outputs per batch, in batch order. Kept when all of them fit in
    `TEACHER_CACHE_BYTES`; otherwise each is computed again when asked for (the teacher never changes, so
    the values are the same): a language model's logits over 2,000 windows of 256 tokens would hold 100 GB."""

    def __init__(self, teacher: Any, batches: Sequence[Batch], budget: int | None = None) -> None:
        self._module, self._batches = _module(teacher), list(batches)
        first = self._run(0) if self._batches else []
        per_batch = sum(t.numel() * t.element_size() for t in first)
        limit = TEACHER_CACHE_BYTES if budget is None else budget
        self.stored = per_batch * len(self._batches) <= limit
        self._kept: dict[int, list[torch.Tensor]] = {0: first} if self._batches else {}
        if self.stored:
            for i in range(1, len(self._batches)):
                self._kept[i] = self._run(i)

    def _run(self, i: int) -> list[torch.Tensor]:
        a, k = self._batches[i]
        with torch.no_grad():
            return [t.detach() for t in float_leaves(self._module(*a, **k))]

    def __len__(self) -> int:
        return len(self._batches)

    def __getitem__(self, i: int) -> list[torch.Tensor]:  # type: ignore[override]
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch {i} of {len(self)}")
        i %= len(self)
        if i not in self._kept:
            out = self._run(i)
            self._kept = {i: out}  # only the last one: memory stays at one batch's outputs
            return out
        return self._kept[i]


def teacher_outputs(teacher: Any, batches: Sequence[Batch]) -> TeacherOutputs:
    """The teacher's floating-point outputs on every batch (`TeacherOutputs`: kept, or computed on use)."""
    return TeacherOutputs(teacher, batches)


def loss_kind(target: torch.Tensor, options: RecoveryOptions) -> str:
    """``options.loss``, or for ``auto``: KL for logits (an LM / classifier task, or 2-D outputs over
    more than 100 classes), cosine for everything else (hidden states, embeddings)."""
    if options.loss != "auto":
        return options.loss
    task = str(options.extra.get("task", ""))
    if task in _LOGIT_TASKS or (target.dim() == 2 and target.shape[-1] > 100):
        return "kl"
    return "cosine"


def batch_loss(outputs: Any, targets: list[torch.Tensor], options: RecoveryOptions) -> torch.Tensor:
    """Sum over output tensors of the distillation loss between student ``outputs`` and ``targets``."""
    total = torch.zeros(())
    leaves = float_leaves(outputs)
    if len(leaves) != len(targets):
        raise ValueError(f"the student returns {len(leaves)} floating outputs, the teacher {len(targets)}")
    for s, t in zip(leaves, targets):
        total = total + distillation_loss(s, t, loss_kind(t, options), options.temperature)
    return total


def output_loss(program: Any, targets: Sequence[list[torch.Tensor]], batches: Sequence[Batch],
                options: RecoveryOptions) -> float:
    """Mean `batch_loss` of ``program`` over ``batches`` (no gradients)."""
    module = _module(program)
    with torch.no_grad():
        losses = [float(batch_loss(module(*a, **k), t, options)) for (a, k), t in zip(batches, targets)]
    return sum(losses) / len(losses)
