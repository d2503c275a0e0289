"""Run the torch.onnx dynamo exporter on an `ExportedProgram`.

Failures become `LoweringError`s that name the FX node and op at fault (an op
without an ONNX translation, say) and the module it sits in. The exporter
names dynamic dims after their sympy symbols (``s77``); `dim_names` turns
those into readable axis names (``batch``, ``seq``) that `rename_dims`
writes into the model's inputs, outputs and value infos.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import TYPE_CHECKING, Any, Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.backends.base import LoweringError

from . import _deps

if TYPE_CHECKING:
    import onnx

__all__ = ["export_program", "dim_names", "rename_dims", "rename_symbols"]

_NODE_RE = re.compile(r"Error when translating node %(\w+) : .*?target=([\w.:]+)")
_NO_FUNCTION_RE = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)', overload='([^']+)'\)>")
_SYMBOL_RE = re.compile(r"\b[a-z]\d+\b")


def _causes(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    while exc is not None and exc not in chain:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return chain


def _describe_failure(program: ExportedProgram, exc: BaseException) -> str:
    """One line naming the node, op and module at fault, as far as they can be found."""
    texts = [str(e) for e in _causes(exc)]
    node_name = op = None
    for text in texts:
        if node_name is None and (mt := _NODE_RE.search(text)):
            node_name, op = mt[1], mt[2].removeprefix("torch.ops.")
    missing = next((mt for t in texts if (mt := _NO_FUNCTION_RE.search(t))), None)
    if missing and op is None:
        op = f"{missing[1]}.{missing[2]}"
    msg = "ONNX export failed"
    if node_name is not None:
        node = next((n for n in program.graph.nodes if n.name == node_name), None)
        stack = node.meta.get("nn_module_stack") if node is not None else None
        path = list(stack.values())[-1][0] if stack else ""
        msg += f" at node '{node_name}' (op {op})" + (f" in module '{path}'" if path else "")
    elif op is not None:
        msg += f" at op {op}"
    if missing:
        msg += ": the op has no ONNX translation; add one with LowerOptions.extra['custom_translation_table']"
    root = _causes(exc)[-1]
    first_line = (str(root).strip().splitlines() or [""])[0]
    return f"{msg} [{type(root).__name__}: {first_line}]"


def export_program(
    program: ExportedProgram,
    opset: int | None = None,
    custom_translation_table: Mapping[Any, Any] | None = None,
) -> "onnx.ModelProto":
    """The program as an ONNX model (weights inline), or a `LoweringError`."""
    _deps.onnx()
    _deps.onnxscript()
    kwargs: dict[str, Any] = {"dynamo": True, "verbose": False, "optimize": True}
    if opset is not None:
        kwargs["opset_version"] = opset
    if custom_translation_table:
        kwargs["custom_translation_table"] = dict(custom_translation_table)
    # The registry logs one warning per torchvision op when torchvision is
    # absent; sparsecc never needs those ops.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # The exporter warns about pytree internals on every call; not the user's concern.
            warnings.simplefilter("ignore", FutureWarning)
            onnx_program = torch.onnx.export(program, (), **kwargs)
        return onnx_program.model_proto
    except Exception as e:  # the exporter raises many types; all become one, with the cause
        raise LoweringError(_describe_failure(program, e)) from e
    finally:
        registry_log.setLevel(level)


def dim_names(program: ExportedProgram, names: Mapping[str, Mapping[int, str]] | None = None) -> dict[str, str]:
    """Map each dynamic-dim symbol of the user inputs to an axis name.

    ``names`` (``{input: {axis: name}}``, as in torch.onnx's ``dynamic_axes``)
    wins. Otherwise a symbol is named after where it first appears: axis 0 is
    ``batch``, axis 1 of a 2-D or 3-D input (token ids ``[B, T]``, hidden
    states ``[B, T, D]``) is ``seq``, anything else ``<input>_dim<axis>``.
    """
    names = {k: dict(v) for k, v in (names or {}).items()}
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out: dict[str, str] = {}
    taken: set[str] = set()
    for inp in program.graph_signature.user_inputs:
        val = placeholders[inp].meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, d in enumerate(val.shape):
            if not isinstance(d, torch.SymInt) or not d.node.expr.is_Symbol:
                continue
            sym = str(d.node.expr)
            if sym in out:
                continue
            if axis in names.get(inp, {}):
                name = names[inp][axis]
            elif axis == 0:
                name = "batch"
            elif axis == 1 and val.dim() in (2, 3):
                name = "seq"
            else:
                name = f"{inp}_dim{axis}"
            base, i = name, 1
            while name in taken:  # two different symbols never share a name
                i += 1
                name = f"{base}_{i}"
            out[sym] = name
            taken.add(name)
    return out


def rename_symbols(text: str, mapping: Mapping[str, str]) -> str:
    """``text`` with every shape symbol (``s77``) in ``mapping`` replaced by its name."""
    return _SYMBOL_RE.sub(lambda mt: mapping.get(mt[0], mt[0]), text)


def rename_dims(model: "onnx.ModelProto", mapping: Mapping[str, str]) -> None:
    """Rename symbolic dims in place, also inside expressions such as ``2*s77``."""
    if not mapping:
        return
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_param = rename_symbols(dim.dim_param, mapping)
