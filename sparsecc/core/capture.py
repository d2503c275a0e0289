"""Capture: `torch.export` (non-strict) with errors that say where and what to try."""

from __future__ import annotations

import inspect
import os
import re
from typing import Any

import torch
from torch.export import ExportedProgram
from sparsecc.errors import SparseccError

__all__ = ["CaptureError", "capture", "dynamic_axis_names"]


class CaptureError(SparseccError, RuntimeError):
    """`torch.export` failed. ``module`` and ``op`` name the culprit when known."""

    def __init__(self, message: str, module: str | None, op: str | None, hint: str, cause: BaseException):
        parts = [f"could not capture the model with torch.export: {message}"]
        if module is not None:
            parts.append(f"  in module: {module or '<root>'}")
        if op:
            parts.append(f"  at: {op}")
        if hint:
            parts.append(f"  try: {hint}")
        super().__init__("\n".join(parts))
        self.module, self.op, self.hint, self.cause = module, op, hint, cause


def capture(
    model: torch.nn.Module,
    example_args: tuple[Any, ...] = (),
    example_kwargs: dict[str, Any] | None = None,
    dynamic_shapes: Any = None,
    *,
    train: bool = False,
) -> ExportedProgram:
    """Export ``model`` with `torch.export.export(strict=False)`.

    The model is captured in eval mode (BatchNorm uses its running stats,
    dropout is off) unless ``train`` is set; its mode is restored afterwards.
    Failures raise `CaptureError` naming the module and source line at fault
    and what to try.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"capture expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    modes = {m: m.training for m in model.modules()}  # submodules may differ (frozen BN)
    model.train(train)
    try:
        return torch.export.export(
            model, example_args, example_kwargs or {}, dynamic_shapes=dynamic_shapes, strict=False
        )
    except Exception as e:
        module, where = _locate(model, e)
        raise CaptureError(_first_line(e), module, where, _hint(e), e) from e
    finally:
        for m, training in modes.items():
            m.training = training


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = lines[0] if lines else text
    # torch's explanation of a shape specialisation is on a later line.
    why = [ln for ln in lines[1:] if re.search(r"inferred to be|must be specialized|specialized it|not all values", ln, re.I)]
    return f"{type(e).__name__}: {head[:400]}" + "".join(f"\n  {ln[:400]}" for ln in why[:2])


def _locate(model: torch.nn.Module, e: BaseException) -> tuple[str | None, str | None]:
    """The model's module and source line at fault, when torch tells.

    torch trims the traceback of export errors but quotes the user frame that
    raised ("The following call raised this error: File ..., line N"); the
    module is the one whose ``forward`` source spans that line.
    """
    found = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', str(e))
    if not found:
        return None, None
    path, line, func, code = found[-1]
    line_no = int(line)
    where = f"{os.path.basename(path)}:{line_no} in {func}: {code.strip()}"
    hits = []
    for name, m in model.named_modules():
        fn = getattr(type(m), func, None)
        try:
            src = inspect.getsourcefile(fn) if fn else None
            lines, first = inspect.getsourcelines(fn) if src else ([], 0)
        except (TypeError, OSError):
            continue
        if src and os.path.samefile(src, path) and first <= line_no < first + len(lines):
            hits.append(f"{name or '<root>'} ({type(m).__name__})")
    if not hits:
        return None, where
    module = hits[0] if len(hits) == 1 else f"{hits[0]} (or {len(hits) - 1} other instances)"
    return module, where


def _hint(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}"
    if re.search(r"data.dependent|GuardOnDataDependent|Could not guard on data-dependent", text):
        return (
            "the model branches on tensor values (data-dependent control flow); rewrite the "
            "branch with torch.cond, or add torch._check(...) hints for the value"
        )
    if re.search(r"Constraints violated|specialized|ConstraintViolation|marked as dynamic", text, re.I):
        return (
            "a dimension declared dynamic is fixed by the model; drop it from dynamic_shapes, "
            "narrow its Dim range, or use torch.export.Dim.AUTO"
        )
    if re.search(r"dynamic_shapes|pytree|expected.*inputs", text, re.I):
        return "dynamic_shapes must mirror the structure of example_args/example_kwargs"
    if re.search(r"no (fake|meta)|NotImplementedError|Unsupported", text, re.I):
        return "an op has no meta/fake implementation; register one with torch.library.register_fake"
    return "run torch.export.export(model, args, strict=False) directly to see the full trace"


def dynamic_axis_names(
    program: ExportedProgram,
    model: torch.nn.Module,
    example_args: tuple[Any, ...],
    example_kwargs: dict[str, Any] | None,
    dynamic_shapes: Any,
) -> dict[str, dict[int, str]]:
    """``{user input: {axis: Dim name}}`` for every axis declared dynamic with a named Dim.

    torch.export names its symbols ``s0, s1, ...``; the user's names
    (``Dim("batch")``) are what artifacts and reports should show.
    """
    if dynamic_shapes is None:
        return {}
    kwargs = example_kwargs or {}
    if isinstance(dynamic_shapes, dict):
        bound = inspect.signature(model.forward).bind(*example_args, **kwargs)
        pairs = [(bound.arguments[k], dynamic_shapes.get(k)) for k in bound.arguments]
        # **kwargs parameters bind as one dict; the dynamic_shapes dict names its keys directly
        flat_pairs = []
        for value, spec in pairs:
            if isinstance(value, dict) and spec is None:
                flat_pairs += [(v, dynamic_shapes.get(k)) for k, v in value.items()]
            else:
                flat_pairs.append((value, spec))
        pairs = flat_pairs
    else:
        pairs = list(zip(example_args, dynamic_shapes))
    per_tensor: list[dict[int, str]] = []
    for value, spec in pairs:
        values, _ = torch.utils._pytree.tree_flatten(value)
        specs = [spec] if isinstance(value, torch.Tensor) else (
            torch.utils._pytree.tree_flatten(spec, is_leaf=lambda s: isinstance(s, dict) or s is None)[0]
            if spec is not None else [None] * len(values))
        for v, s in zip(values, specs):
            if not isinstance(v, torch.Tensor):
                continue
            axes = s.items() if isinstance(s, dict) else enumerate(s) if isinstance(s, (list, tuple)) else []
            per_tensor.append({int(a): d.__name__ for a, d in axes if d is not None and hasattr(d, "__name__")})
    names = [n for n in program.graph_signature.user_inputs]
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    tensor_inputs = [n for n in names if isinstance(by_name[n].meta.get("val"), torch.Tensor)]
    return {inp: axes for inp, axes in zip(tensor_inputs, per_tensor) if axes}
