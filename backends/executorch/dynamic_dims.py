"""Dynamic dims of the user inputs: names, upper bounds, and checks at run time.

ExecuTorch plans every buffer for the largest shape it can see: the upper
bound of each dynamic dim. A dim exported without a maximum
(``Dim("batch")``) has none, and ExecuTorch then silently plans for the
example's size, so a larger input fails at run time with an opaque error.
Here every unbounded dim gets an explicit bound (``LowerOptions.extra
["dim_max"]``, else the example's size, with a warning), the bounds are
written into the artifact, and the runner checks inputs against them first.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import OutputKind

from sparsecc.backends.base import InputMismatchError, TensorSpec

__all__ = [
    "DynamicDim",
    "find_dynamic_dims",
    "apply_upper_bounds",
    "specialized_dims",
    "narrow_to_lowered",
    "named_specs",
    "output_specs",
    "check_dims",
]


@dataclass(frozen=True)
class DynamicDim:
    """One shape symbol of the user inputs and the sizes the artifact accepts.

    ``bound_from`` says where ``max`` came from: ``"program"`` (the exported
    Dim range), ``"options"`` (``extra["dim_max"]``), ``"example"`` (no
    bound anywhere: the example input's size) or ``"lowering"`` (ExecuTorch's
    re-tracing narrowed the range; see `narrow_to_lowered`). ``min`` is the exported
    range's lower bound, informational only (torch.export raises 1 to 2 for
    its own reasons; ExecuTorch runs size 1 fine).
    """

    symbol: str
    name: str
    min: int
    max: int
    bound_from: str
    uses: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DynamicDim":
        return cls(d["symbol"], d["name"], int(d["min"]), int(d["max"]), d["bound_from"], tuple(d["uses"]))


def _user_input_vals(program: ExportedProgram) -> list[tuple[str, torch.Tensor]]:
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = []
    for name in program.graph_signature.user_inputs:
        val = by_name[name].meta.get("val")
        if isinstance(val, torch.Tensor):
            out.append((name, val))
    return out


def _axis_name(inp: str, axis: int, ndim: int, names: Mapping[str, Mapping[int, str]]) -> str:
    # Same convention as the ONNX backend, so both artifacts name dims alike.
    if axis in names.get(inp, {}):
        return str(names[inp][axis])
    if axis == 0:
        return "batch"
    if axis == 1 and ndim in (2, 3):
        return "seq"
    return f"{inp}_dim{axis}"


def _finite(bound: Any) -> int | None:
    try:
        return int(bound) if bound.is_finite else None
    except (AttributeError, TypeError, OverflowError):
        return None


def find_dynamic_dims(
    program: ExportedProgram,
    names: Mapping[str, Mapping[int, str]] | None = None,
    dim_max: int | Mapping[str, int] | None = None,
) -> dict[str, DynamicDim]:
    """Every dynamic dim (a bare symbol) of the user inputs, with the bound to lower with.

    ``names`` is ``{input: {axis: name}}``; ``dim_max`` an int for every
    unbounded dim or ``{name or symbol: int}``.
    """
    names = names or {}
    ranges = {str(k): v for k, v in program.range_constraints.items()}
    found: dict[str, dict[str, Any]] = {}
    taken: set[str] = set()
    for inp, val in _user_input_vals(program):
        for axis, d in enumerate(val.shape):
            if not isinstance(d, torch.SymInt) or not d.node.expr.is_Symbol:
                continue
            sym = str(d.node.expr)
            if sym in found:
                found[sym]["uses"].append(f"{inp}[{axis}]")
                continue
            name = base = _axis_name(inp, axis, val.dim(), names)
            i = 1
            while name in taken:
                i += 1
                name = f"{base}_{i}"
            taken.add(name)
            vr = ranges.get(sym)
            lower = _finite(vr.lower) if vr is not None else None
            upper = _finite(vr.upper) if vr is not None else None
            found[sym] = {"name": name, "min": lower if lower is not None else 0, "max": upper,
                          "hint": d.node.hint, "uses": [f"{inp}[{axis}]"]}

    dims: dict[str, DynamicDim] = {}
    for sym, f in found.items():
        given = dim_max.get(f["name"], dim_max.get(sym)) if isinstance(dim_max, Mapping) else dim_max
        if f["max"] is not None:
            upper, source = f["max"], "program"
        elif given is not None:
            upper, source = int(given), "options"
        else:
            upper, source = int(f["hint"]), "example"
            warnings.warn(
                f"dynamic dim {f['name']} ({sym}) has no upper bound; ExecuTorch plans memory for the "
                f"largest size, so the .pte accepts {f['name']} <= {upper} (the example's size). Export "
                f"with Dim(..., max=N) or pass LowerOptions(extra={{'dim_max': {{'{f['name']}': N}}}}).",
                stacklevel=3,
            )
        dims[sym] = DynamicDim(sym, f["name"], f["min"], upper, source, tuple(f["uses"]))
    return dims


def apply_upper_bounds(program: ExportedProgram, dims: Mapping[str, DynamicDim]) -> None:
    """Write the bounds into ``program``'s range constraints and shape env, in place.

    Only for a private copy of the program: ExecuTorch's memory planning reads
    the bounds from the shape env behind the graph's fake tensors.
    """
    from torch.utils._sympy.value_ranges import ValueRanges

    shape_env = None
    for _, val in _user_input_vals(program):
        for d in val.shape:
            if isinstance(d, torch.SymInt):
                shape_env = d.node.shape_env
                break
        if shape_env is not None:
            break
    for sym, vr in list(program.range_constraints.items()):
        dim = dims.get(str(sym))
        if dim is None or dim.bound_from == "program":
            continue
        bounded = ValueRanges(vr.lower, dim.max)
        program.range_constraints[sym] = bounded
        if shape_env is not None and sym in shape_env.var_to_range:
            shape_env.var_to_range[sym] = bounded


def narrow_to_lowered(dims: Mapping[str, DynamicDim], lowered: ExportedProgram) -> dict[str, DynamicDim]:
    """``dims`` with each ``max`` lowered to the edge program's bound where lowering narrowed it.

    ExecuTorch plans memory for the edge program's bounds, which its re-tracing
    can narrow below the exported ones (a MNIST net's batch [1, 64] became
    [2, 15] after a ``torch.export`` save / load round trip). The artifact must
    state what the ``.pte`` accepts, and the runner must check against that.
    """
    ranges = {str(k): v for k, v in lowered.range_constraints.items()}
    out = dict(dims)
    for sym, dim in dims.items():
        vr = ranges.get(sym)
        upper = _finite(vr.upper) if vr is not None else None
        if upper is not None and upper < dim.max:
            warnings.warn(
                f"ExecuTorch lowering narrowed dynamic dim {dim.name} from <= {dim.max} to <= {upper}; "
                f"the .pte accepts {dim.name} <= {upper}",
                stacklevel=2,
            )
            out[sym] = DynamicDim(dim.symbol, dim.name, dim.min, upper, "lowering", dim.uses)
    return out


def specialized_dims(before: ExportedProgram, after: ExportedProgram) -> dict[str, int]:
    """Symbols of ``before``'s user inputs that ``after`` turned into constants."""
    out: dict[str, int] = {}
    for (_, v0), (_, v1) in zip(_user_input_vals(before), _user_input_vals(after)):
        for d0, d1 in zip(v0.shape, v1.shape):
            if isinstance(d0, torch.SymInt) and d0.node.expr.is_Symbol and not isinstance(d1, torch.SymInt):
                out[str(d0.node.expr)] = int(d1)
    return out


def _rename(shape: Sequence[int | str], names: Mapping[str, str], fixed: Mapping[str, int]) -> tuple[int | str, ...]:
    return tuple(fixed.get(d, names.get(d, d)) if isinstance(d, str) else d for d in shape)


def named_specs(
    specs: Sequence[TensorSpec], dims: Mapping[str, DynamicDim], fixed: Mapping[str, int] | None = None
) -> list[TensorSpec]:
    """``specs`` with symbols replaced by dim names, and specialized dims by their size."""
    names = {s: d.name for s, d in dims.items()}
    return [TensorSpec(s.name, _rename(s.shape, names, fixed or {}), s.dtype) for s in specs]


def output_specs(program: ExportedProgram) -> list[TensorSpec]:
    """The program's tensor user outputs, with symbolic dims as symbol strings."""
    nodes = {n.name: n for n in program.graph.nodes}
    specs = []
    for s in program.graph_signature.output_specs:
        node = nodes.get(getattr(s.arg, "name", None))
        val = node.meta.get("val") if s.kind == OutputKind.USER_OUTPUT and node is not None else None
        if isinstance(val, torch.Tensor):
            shape = tuple(str(d.node.expr) if isinstance(d, torch.SymInt) else int(d) for d in val.shape)
            specs.append(TensorSpec(s.arg.name, shape, str(val.dtype).removeprefix("torch.")))
    return specs


def check_dims(dims: Sequence[DynamicDim], specs: Sequence[TensorSpec], inputs: Sequence[torch.Tensor]) -> None:
    """Raise `InputMismatchError` when a dynamic dim is above its bound or inconsistent."""
    by_name = {d.name: d for d in dims}
    seen: dict[str, tuple[int, str]] = {}
    for spec, t in zip(specs, inputs):
        for axis, d in enumerate(spec.shape):
            dim = by_name.get(d) if isinstance(d, str) else None
            if dim is None:
                continue
            size, where = int(t.shape[axis]), f"{spec.name}[{axis}]"
            if size > dim.max:
                raise InputMismatchError(
                    f"input {spec.describe()}: {dim.name}={size} at axis {axis} is above the artifact's "
                    f"bound {dim.max} (ExecuTorch planned memory for at most {dim.max}; "
                    "lower again with a larger Dim max)"
                )
            if dim.name in seen and seen[dim.name][0] != size:
                first, at = seen[dim.name]
                raise InputMismatchError(f"dim {dim.name} is {first} at {at} but {size} at {where}")
            seen.setdefault(dim.name, (size, where))
