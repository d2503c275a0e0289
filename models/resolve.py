"""Resolve a MODEL argument: a zoo name, or ``path/to/file.py:factory``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from sparsecc.models import ModelSpec, get_model, list_models

__all__ = ["resolve_model"]


def resolve_model(ref: str) -> ModelSpec:
    """Build the model named by ``ref``.

    ``file.py:factory`` calls ``factory()``, which returns a `ModelSpec`, or a
    tuple ``(model, example_args[, example_kwargs[, dynamic_shapes]])``.
    """
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        path_text, factory_name = ref.rsplit(":", 1)
        return _from_file(Path(path_text), factory_name, ref)
    try:
        return get_model(ref)
    except KeyError:
        raise ValueError(
            f"unknown model {ref!r}: use a zoo name ({', '.join(list_models())}) or path/to/file.py:factory"
        ) from None


def _from_file(path: Path, factory_name: str, ref: str) -> ModelSpec:
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    name = f"sparsecc_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise AttributeError(f"{path} has no callable named {factory_name!r}")
    out: Any = factory()
    if isinstance(out, ModelSpec):
        return out
    if isinstance(out, tuple) and 2 <= len(out) <= 4 and isinstance(out[0], torch.nn.Module):
        model, args, kwargs, dyn = (*out, None, None)[:4]
        args = args if isinstance(args, tuple) else (args,)
        return ModelSpec(ref, model, args, kwargs or {}, dyn)
    raise TypeError(
        f"{ref}: the factory must return a ModelSpec or (model, example_args[, example_kwargs[, dynamic_shapes]]), "
        f"got {type(out).__name__}"
    )
