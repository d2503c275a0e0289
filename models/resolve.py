"""Resolve a MODEL argument: a zoo name, or ``path/to/file.py:factory``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import torch

from sparsecc.errors import SparseccError, UsageError
from sparsecc.models import ModelSpec, get_model, list_models

__all__ = ["resolve_model", "ModelReferenceError", "ModelFactoryError"]


class ModelReferenceError(UsageError, ValueError):
    """A MODEL argument that names no zoo model, no file, or no factory in the file."""


class ModelFactoryError(SparseccError, RuntimeError):
    """The user's model file or factory raised; the message names the reference and the exception type."""


def resolve_model(ref: str) -> ModelSpec:
    """Build the model named by ``ref``.

    ``file.safetensors`` is a sparse checkpoint written by ``prune-streamed``,
    loaded into the model it belongs to. ``file.py:factory`` calls ``factory()``, which returns a `ModelSpec`, or a
    tuple ``(model, example_args[, example_kwargs[, dynamic_shapes]])``.
    """
    if ref.endswith(".safetensors") and Path(ref).is_file():  # a sparse checkpoint from prune-streamed
        from .decoder_block import load_decoder_checkpoint

        return load_decoder_checkpoint(ref)
    if ":" in ref and ref.split(":", 1)[0].endswith(".py"):
        path_text, factory_name = ref.rsplit(":", 1)
        return _from_file(Path(path_text), factory_name, ref)
    try:
        return get_model(ref)
    except KeyError:
        raise ModelReferenceError(
            f"unknown model {ref!r}: use a zoo name ({', '.join(list_models())}) or path/to/file.py:factory"
        ) from None


def _from_file(path: Path, factory_name: str, ref: str) -> ModelSpec:
    if not path.is_file():
        raise ModelReferenceError(f"model file not found: {path}")
    name = f"sparsecc_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as e:  # the user's code: say whose and what, keep the traceback as the cause
        raise ModelFactoryError(f"{path}: importing the model file raised {type(e).__name__}: {e}") from e
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ModelReferenceError(f"{path} has no callable named {factory_name!r}")
    try:
        out: Any = factory()
    except Exception as e:
        raise ModelFactoryError(f"{ref}: the factory raised {type(e).__name__}: {e}") from e
    if isinstance(out, ModelSpec):
        return out
    if isinstance(out, tuple) and 2 <= len(out) <= 4 and isinstance(out[0], torch.nn.Module):
        model, args, kwargs, dyn = (*out, None, None)[:4]
        args = args if isinstance(args, tuple) else (args,)
        return ModelSpec(ref, model, args, kwargs or {}, dyn)
    raise ModelReferenceError(
        f"{ref}: the factory must return a ModelSpec or (model, example_args[, example_kwargs[, dynamic_shapes]]), "
        f"got {type(out).__name__}"
    )
