"""Calibration data: the batches a model is calibrated on and the loss objective, and the calibration error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from sparsecc.errors import UsageError

__all__ = ["STAT_KINDS", "Batch", "Progress", "CalibrationError", "CalibrationData"]

STAT_KINDS = ("act_sq", "hessian", "taylor")
Progress = Callable[[int, int, str], None]
Batch = tuple[tuple[Any, ...], dict[str, Any]]

class CalibrationError(UsageError, ValueError):
    """Calibration cannot run: bad batches, an unknown objective, a weight it cannot calibrate."""


@dataclass
class CalibrationData:
    """Calibration batches and the loss that gradient-based criteria and budgets use.

    ``batches`` are ``(args, kwargs)`` pairs, each one call of the model.
    ``objective`` is ``"auto"`` (next-token cross-entropy when the batch has
    ``input_ids`` and the output has a vocabulary axis, else cross-entropy
    against the model's own top-1 prediction for 2-D logits, else half the
    mean squared output), one of ``"lm"``, ``"self_ce"``, ``"output_norm"``,
    or a callable ``(outputs, args, kwargs) -> scalar loss``.
    """

    batches: list[Batch]
    objective: str | Callable[[Any, tuple, dict], torch.Tensor] = "auto"
    # Statistics passes join same-shape batches along axis 0 (taken to be the batch axis)
    # for speed; turn off for a model whose axis 0 is not independent samples.
    join_batches: bool = True

    def __post_init__(self) -> None:
        norm: list[Batch] = []
        for i, b in enumerate(self.batches):
            if isinstance(b, torch.Tensor):
                b = ((b,), {})
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and isinstance(b[0], (tuple, list))
                    and isinstance(b[1], Mapping)):
                raise CalibrationError(f"calibration batch {i} must be (args tuple, kwargs dict) or a tensor, "
                                       f"got {type(b).__name__}")
            norm.append((tuple(b[0]), dict(b[1])))
        if not norm:
            raise CalibrationError("calibration data has no batches")
        if not callable(self.objective) and self.objective not in ("auto", "lm", "self_ce", "output_norm"):
            raise CalibrationError(f"unknown calibration objective {self.objective!r}; "
                                   "known: auto, lm, self_ce, output_norm, or a callable")
        self.batches = norm

    def __len__(self) -> int:
        return len(self.batches)
