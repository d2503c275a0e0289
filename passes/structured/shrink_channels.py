"""Remove the pruned channels / heads for real: a smaller program with smaller dense ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
from torch.export import ExportedProgram

from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor

from .rules import opname as _opname
from .plan import StructuredPlan, axis_keep

__all__ = ["ShrinkChannelsPass"]

aten = torch.ops.aten
_SHAPE_ARG_OPS = {"view", "reshape", "_unsafe_view", "expand"}
_SPLIT_OPS = {"split", "split_with_sizes", "chunk", "unsafe_split", "unsafe_split_with_sizes"}


class ShrinkChannelsPass(PassBase):
    """Slice every member of every planned group and rewrite the size constants.

    Parameters, buffers and constants lose the removed indices along each
    grouped axis; ``view`` / ``reshape`` / ``expand`` shapes, ``split`` sizes,
    ``slice`` bounds, conv and group-norm group counts and ``repeat_interleave``
    counts are recomputed from the kept sizes; every node's shape metadata is
    propagated again. Dynamic dimensions stay dynamic.
    """

    def __init__(self, plan: StructuredPlan):
        self.plan = plan

    def requires(self, program: ExportedProgram) -> None:
        names = {n.name for n in program.graph.nodes}
        missing = [n for n in self.plan.analysis.dims if n not in names]
        if missing:
            raise ValueError(
                f"the plan was made for another program (nodes {missing[:3]} are not in this one); "
                "plan on the program you shrink"
            )

    def call(self, program: ExportedProgram) -> PassResult:
        if not self.plan.kept:
            return PassResult(program, False)
        analysis = self.plan.analysis
        kept = self.plan.kept_by_atom()
        A = analysis.atoms
        editor = ProgramEditor(program)

        def new_size(atom: int) -> Any:
            s = A.new_size(atom, kept)
            return int(s) if not isinstance(s, int) and getattr(s, "is_number", False) else s

        # 1. slice the lifted tensors; tied copies of one tensor (a lookup table that
        #    is also the output projection) stay one tensor
        aliases: dict[int, list[str]] = {}
        for target in list(editor.state_dict) + list(editor.constants):
            t = editor.tensor(target)
            if isinstance(t, torch.Tensor):
                aliases.setdefault(id(t), []).append(target)
        for target, axes in analysis.state_axes.items():
            try:
                t = editor.tensor(target)
            except KeyError:
                continue
            sliced = t.detach() if isinstance(t, torch.nn.Parameter) else t
            changed = False
            for ax in range(len(axes)):
                k = axis_keep(analysis, target, ax, kept)
                if k is None or k.all():
                    continue
                with self.at(target):
                    sliced = sliced.index_select(ax, torch.from_numpy(np.flatnonzero(k)))
                changed = True
            if changed:
                editor.set_tensor(target, sliced.contiguous())
                new = editor.tensor(target)
                for alias in aliases.get(id(t), [target]):
                    if alias in editor.state_dict:
                        editor.state_dict[alias] = new
                    else:
                        editor.constants[alias] = new
                    try:
                        editor.node_for_target(alias).meta["val"] = editor.fake(new)
                    except KeyError:
                        continue

        # 2. rewrite size constants
        for node in editor.graph.nodes:
            if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
                continue
            with self.at(node):
                self._rewrite(node, analysis, new_size)

        # 3. new shape metadata: each axis's size from its space. Running the ops on fake
        #    tensors again would let some (aten.pad) specialise a dynamic batch, so the
        #    shapes are computed from the analysis instead; symbolic sizes stay as they are.
        mode = editor._fake_mode
        for node in editor.graph.nodes:
            if node.op != "call_function" or node.name not in analysis.dims:
                continue
            with self.at(node):
                node.meta["val"] = self._resized(node.meta.get("val"), analysis.dims[node.name], new_size, mode)
                node.meta.pop("tensor_meta", None)
        return PassResult(editor.finish(), True)

    def _resized(self, val: Any, dims: Any, new_size, mode) -> Any:
        if isinstance(val, (tuple, list)):
            return type(val)(self._resized(v, d, new_size, mode) for v, d in zip(val, dims or [None] * len(val)))
        if not isinstance(val, torch.Tensor) or dims is None:
            return val
        shape = list(val.shape)
        changed = False
        for i, d in enumerate(shape):
            if isinstance(d, int):
                ns = new_size(dims[i])
                if isinstance(ns, int) and ns != d:
                    shape[i], changed = ns, True
        if not changed:
            return val
        if mode is None:
            return torch.empty(shape, dtype=val.dtype, device="meta")
        with mode:
            return torch.empty(shape, dtype=val.dtype, device=val.device)

    def _rewrite(self, node: torch.fx.Node, analysis, new_size) -> None:
        name = _opname(node.target)
        dims = analysis.dims.get(node.name)
        extra = analysis.node_atoms.get(node.name, {})
        args = list(node.args)
        if name in _SHAPE_ARG_OPS and isinstance(args[1], (list, tuple)):
            shape = list(args[1])
            changed = False
            for i, s in enumerate(shape):
                if isinstance(s, int) and s != -1:
                    ns = new_size(dims[i])
                    if isinstance(ns, int) and ns != s:
                        shape[i], changed = ns, True
            if changed:
                args[1] = shape
                node.args = tuple(args)
        elif name == "unflatten":
            dim = args[1] if args[1] >= 0 else args[1] + len(node.args[0].meta["val"].shape)
            sizes = list(args[2])
            for i, s in enumerate(sizes):
                if isinstance(s, int) and s != -1:
                    ns = new_size(dims[dim + i])
                    if isinstance(ns, int):
                        sizes[i] = ns
            args[2] = sizes
            node.args = tuple(args)
        elif name in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution") and "groups" in extra:
            g = new_size(extra["groups"])
            pos = 8 if name in ("convolution", "_convolution") else 6
            if len(args) > pos:
                args[pos] = g
                node.args = tuple(args)
            else:
                node.kwargs = {**node.kwargs, "groups": g}
        elif name == "group_norm" and "groups" in extra:
            args[1] = new_size(extra["groups"])
            node.args = tuple(args)
        elif name == "repeat_interleave" and "repeats" in extra:
            args[1] = new_size(extra["repeats"])
            node.args = tuple(args)
            if node.kwargs.get("output_size") is not None:
                dim = node.kwargs.get("dim", args[2] if len(args) > 2 else None)
                node.kwargs = {**node.kwargs, "output_size": new_size(dims[dim])}
        elif name in _SPLIT_OPS and "parts" in extra:
            sizes = [new_size(p) for p in extra["parts"]]
            old = [int(o.shape[extra["dim"]]) for o in node.meta["val"]]
            if sizes != old:
                node.target = aten.split_with_sizes.default
                node.args = (args[0], sizes, extra["dim"])
                node.kwargs = {}
        elif name in ("slice", "narrow") and "parts" in extra:
            before, mid, _ = extra["parts"]
            start = new_size(before) if before is not None else 0
            length = new_size(mid)
            if name == "slice":
                node.args = (args[0], extra["dim"], start, start + length, 1)
            else:
                node.args = (args[0], extra["dim"], start, length)
            node.kwargs = {}
        elif name == "_assert_tensor_metadata" and (node.kwargs.get("size") is not None or node.kwargs.get("stride") is not None):
            node.kwargs = {**node.kwargs, "size": None, "stride": None}
