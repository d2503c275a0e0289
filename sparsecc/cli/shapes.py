"""``--shapes``: one spelling of input shapes for every verb.

``input_ids:1x128`` fixes a shape; ``input_ids:1x16,1x128,4x256`` gives
min, opt and max, and each axis whose min and max differ becomes dynamic.
Several inputs are separated by commas too: a token with ``NAME:`` starts
the next input (``input_ids:1x128,attention_mask:1x128``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

from sparsecc.errors import UsageError

__all__ = ["InputShape", "parse_shapes", "apply_shapes", "bench_dims"]


@dataclass(frozen=True)
class InputShape:
    """One input's shapes: ``opt`` is the example; an axis is dynamic when ``min`` and ``max`` differ."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def dynamic_axes(self) -> dict[int, tuple[int, int]]:
        return {i: (lo, hi) for i, (lo, hi) in enumerate(zip(self.min, self.max)) if lo != hi}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


def _dims(text: str, where: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--shapes {where}: {text!r} is not a shape like 1x128") from None
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"--shapes {where}: every dim of {text!r} must be >= 1")
    return dims


def parse_shapes(text: str | None) -> dict[str, InputShape]:
    """``{input name: InputShape}`` from ``NAME:SHAPE[,SHAPE,SHAPE][,NAME:...]``; empty for None."""
    if not text:
        return {}
    groups: list[tuple[str, list[str]]] = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        if ":" in token:
            name, first = token.split(":", 1)
            if not name or name in {g[0] for g in groups}:
                raise UsageError(f"--shapes: input name {name!r} is empty or given twice in {text!r}")
            groups.append((name, [first]))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise UsageError(f"--shapes: {text!r} must start with an input name, e.g. input_ids:1x128")
    shapes = {}
    for name, parts in groups:
        if len(parts) not in (1, 3):
            raise UsageError(f"--shapes {name}: give one shape, or three (min,opt,max); got {len(parts)}")
        lo, opt, hi = (_dims(p, name) for p in (parts * 3 if len(parts) == 1 else parts))
        if not len(lo) == len(opt) == len(hi):
            raise UsageError(f"--shapes {name}: min, opt and max must have the same rank ({parts})")
        if any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise UsageError(f"--shapes {name}: need min <= opt <= max on every axis, got {','.join(parts)}")
        shapes[name] = InputShape(name, lo, opt, hi)
    return shapes


def _input_names(model: Any, n_args: int, kwargs: dict[str, Any]) -> list[str]:
    params = [p.name for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return params[:n_args] + list(kwargs)


def _like(example: Any, shape: tuple[int, ...], name: str) -> Any:
    import torch

    if not isinstance(example, torch.Tensor):
        raise UsageError(f"--shapes {name}: the model's example input {name!r} is not a tensor")
    if example.dim() != len(shape):
        raise UsageError(f"--shapes {name}: the model takes a rank-{example.dim()} tensor "
                         f"{tuple(example.shape)}, got rank {len(shape)} {shape}")
    gen = torch.Generator().manual_seed(0)
    if example.dtype == torch.bool or "mask" in name:
        return torch.ones(shape, dtype=example.dtype)
    if not example.dtype.is_floating_point:  # ids: stay below the largest id of the example
        high = max(int(example.max()) + 1, 1) if example.numel() else 2
        return torch.randint(0, high, shape, generator=gen, dtype=example.dtype)
    return torch.randn(shape, generator=gen, dtype=example.dtype)


def apply_shapes(spec: Any, shapes: dict[str, InputShape]) -> Any:
    """A copy of the `ModelSpec` whose example inputs have the opt shapes and whose dynamic axes are the given ranges."""
    import dataclasses

    import torch

    if not shapes:
        return spec
    names = _input_names(spec.model, len(spec.example_args), spec.example_kwargs)
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise UsageError(f"--shapes names {unknown}, but {spec.name} takes {names}")
    examples = dict(zip(names, [*spec.example_args, *spec.example_kwargs.values()]))
    new = {n: (_like(examples[n], shapes[n].opt, n) if n in shapes else examples[n]) for n in names}
    dims: dict[tuple[int, int, int], Any] = {}  # one Dim per (axis, range): batch is shared across inputs

    def dim(axis: int, lo: int, hi: int) -> Any:
        key = (axis, lo, hi)
        if key not in dims:
            label = {0: "batch", 1: "seq"}.get(axis, f"dim{axis}")
            used = {d.__name__ for d in dims.values()}
            dims[key] = torch.export.Dim(label if label not in used else f"{label}_{len(dims)}", min=lo, max=hi)
        return dims[key]

    dynamic = {n: ({a: dim(a, lo, hi) for a, (lo, hi) in shapes[n].dynamic_axes().items()} or None
                   if n in shapes else None) for n in names}
    n_args = len(spec.example_args)

    def make_inputs(batch: int, seq: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        made = {}
        for n in names:
            if n not in shapes:
                made[n] = examples[n]
                continue
            s = list(shapes[n].opt)
            for a, (lo, hi) in shapes[n].dynamic_axes().items():
                want = batch if a == 0 else seq
                s[a] = min(max(want, lo), hi)
            made[n] = _like(examples[n], tuple(s), n)
        vals = [made[n] for n in names]
        return tuple(vals[:n_args]), dict(zip(names[n_args:], vals[n_args:]))

    any_dynamic = any(v for v in dynamic.values())
    return dataclasses.replace(
        spec, example_args=tuple(new[n] for n in names[:n_args]),
        example_kwargs={n: new[n] for n in names[n_args:]},
        dynamic_shapes=dynamic if any_dynamic else None,
        make_inputs=make_inputs if any_dynamic else None,
    )


def bench_dims(shapes: dict[str, InputShape], inputs: list[dict[str, Any]], where: str) -> tuple[int | None, int | None]:
    """``(batch, seq)`` for a bundle whose inputs name their dynamic dims (``["batch", "seq"]``)."""
    by_name = {s["name"]: s for s in inputs}
    sizes: dict[str, int] = {}
    for name, shape in shapes.items():
        if shape.min != shape.max:
            raise UsageError(f"--shapes {name}: bench runs one shape per input; give one shape, not min,opt,max")
        if name not in by_name:
            raise UsageError(f"--shapes names {name!r}, but {where} has inputs {sorted(by_name)}")
        declared = by_name[name]["shape"]
        if len(declared) != len(shape.opt):
            raise UsageError(f"--shapes {name}: {where} declares rank {len(declared)} {declared}, got {shape.opt}")
        for d, size in zip(declared, shape.opt):
            if isinstance(d, str):
                if sizes.setdefault(d, size) != size:
                    raise UsageError(f"--shapes: dim {d!r} is {sizes[d]} on one input and {size} on another")
            elif d != size:
                raise UsageError(f"--shapes {name}: axis of fixed size {d} in {where} asked to be {size}")
    others = [v for k, v in sizes.items() if k != "batch"]
    if len(others) > 1 and len(set(others)) > 1:
        raise UsageError(f"--shapes: more than one dynamic dim besides batch ({sorted(sizes)}) is not supported")
    return sizes.get("batch"), (others[0] if others else None)
