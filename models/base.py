"""What the zoo hands out: a model with the inputs it is captured and run with."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """A model ready to capture.

    ``example_args`` / ``example_kwargs`` are what `torch.export` traces with;
    ``dynamic_shapes`` follows `torch.export.export`'s argument of that name
    (None means all shapes static). ``make_inputs(batch, seq)`` returns fresh
    (args, kwargs) of another allowed shape, for parity checks and benchmarks;
    it may ignore ``seq`` for models without a sequence axis.
    """

    name: str
    model: torch.nn.Module
    example_args: tuple[Any, ...]
    example_kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic_shapes: Any = None
    description: str = ""
    make_inputs: Callable[[int, int], tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    # What the output means, e.g. "image-classification", "feature-extraction", "causal-lm".
    task: str = ""
    # Loader-specific companions of the model: a tokenizer, input normalization, ...
    extras: dict[str, Any] = field(default_factory=dict)
