"""Run sparse layers on sparsecc's ExecuTorch kernels where they measure faster than XNNPACK.

With ``custom_ops`` on (the ``executorch-custom-ops`` target), the private
copy of the program is rewritten before it goes to the edge dialect: each
prunable ``aten.linear`` and 1x1 ``conv2d`` (stride 1, no padding, one group,
NCHW; a following eval-mode BatchNorm folded in, as XNNPACK would fold it)
whose float32 weight is at least `MIN_SPARSITY` zeros is timed in the
ExecuTorch runtime (`custom_op_timing`): XNNPACK's dense layer against
``sparsecc::et_sparse_linear`` / ``et_sparse_conv1x1`` over the weight in
CSR and in the widest BSR block (16, 8, 4, 2) that its zeros fill to
`MIN_FILL`. A layer runs the custom op when its fastest sparse format (plus,
for a conv, the layout conversions leaving XNNPACK costs: ``boundary_s``)
takes at most ``margin`` of the dense time; its weight then lives in the ``.pte`` only
compressed, as three constants (``<fqn>_et_crow_indices``, ``_col_indices``,
``_values``). Everything else is lowered as before (XNNPACK, portable).

The ``.pte`` then calls kernels from ``libsparsecc_executorch.so``
(`sparsecc.kernels.et_library`), which must be loaded before the program.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.program import ProgramEditor
from sparsecc.kernels.executorch_ops import define_ops

from .delegation import op_name
from .custom_op_layers import Candidate, compressed_targets, find_candidates
from .custom_op_timing import time_layers

__all__ = ["apply_custom_ops", "mark_delegation", "MIN_SPARSITY", "DEFAULT_MARGIN"]

aten = torch.ops.aten

MIN_SPARSITY = 0.5  # below this a sparse format hardly beats a dense GEMM: not timed
DEFAULT_MARGIN = 0.95  # sparse must take at most this fraction of dense time


def _rewrite(prepared: ExportedProgram, chosen: Mapping[str, tuple[Candidate, kernels.CompressedWeight]]
             ) -> ExportedProgram:
    """``prepared`` with each chosen layer calling its custom op over the compressed constants."""
    define_ops()
    ed = ProgramEditor(prepared)
    nodes = {n.name: n for n in ed.graph.nodes}
    for fqn, (c, cw) in chosen.items():
        user = nodes[c.node]
        last = nodes[c.bn] if c.bn is not None else user
        consts = [ed.add_constant(t, v, name="c_" + t.replace(".", "_"))
                  for t, v in zip(compressed_targets(fqn), (cw.crow_indices, cw.col_indices, cw.values))]
        if c.bias is None:
            bias = None
        elif c.bias_node is not None:
            bias = nodes[c.bias_node]
        else:
            target = f"{fqn}_et_bias"
            bias = ed.add_constant(target, c.bias, name="c_" + target.replace(".", "_"))
        op = torch.ops.sparsecc.et_sparse_conv1x1.default if c.op == "conv1x1" else \
            torch.ops.sparsecc.et_sparse_linear.default
        args = (user.args[0], *consts, bias, cw.shape[0], cw.shape[1])
        with ed.graph.inserting_before(user):
            new = ed.graph.call_function(op, args)
        new.meta["val"] = ed.fake_call(op, *args)
        for key in ("nn_module_stack", "stack_trace", "source_fn_stack", "from_node"):
            if key in last.meta:
                new.meta[key] = last.meta[key]
        if last.target == aten._native_batch_norm_legit_no_training.default:
            for g in list(last.users):  # getitem 0: the normalized output
                g.replace_all_uses_with(new)
                ed.graph.erase_node(g)
        else:
            last.replace_all_uses_with(new)
        dropped = [last] + ([user] if last is not user else [])
        inputs = {a for d in dropped for a in d.all_input_nodes if a.op == "placeholder"}
        for d in dropped:
            ed.graph.erase_node(d)
        for p in inputs:
            if not p.users and ed.spec_of(p) is not None and ed.spec_of(p).target is not None:
                ed.remove_input(p)
    return ed.finish()


def apply_custom_ops(prepared: ExportedProgram, source: ExportedProgram, extra: Mapping[str, Any],
                     threads: int | None) -> tuple[ExportedProgram, dict[str, Any], dict[str, Any]]:
    """Time and rewrite ``prepared``; return it, the manifest record and ``{fqn: compressed weight}``.

    ``extra`` keys: ``custom_ops_margin`` (`DEFAULT_MARGIN`), ``custom_ops_rounds`` (7),
    ``custom_ops_tokens`` (rows per timed call; default each layer's own on the example).
    """
    from sparsecc.kernels import et_library  # builds nothing on import; loaded by the timing

    t0 = time.perf_counter()
    margin = float(extra.get("custom_ops_margin", DEFAULT_MARGIN))
    rounds = int(extra.get("custom_ops_rounds", 7))
    tokens = extra.get("custom_ops_tokens")
    cands, why_not = find_candidates(prepared, source)
    timed, empty = [], []
    for c in cands:
        if c.sparsity < MIN_SPARSITY:
            why_not[c.fqn] = f"{c.sparsity:.0%} zeros, under the {MIN_SPARSITY:.0%} a sparse format needs: not timed"
        else:
            (timed if int(torch.count_nonzero(c.weight)) else empty).append(c)
    medians = time_layers(timed, rounds=rounds, tokens=int(tokens) if tokens else None, threads=threads)
    layers, chosen = [], {}
    for c in timed + empty:
        if c.fqn not in medians:  # all zeros: the op writes the bias alone, nothing to time
            med, boundary, best, faster, speedup = {}, 0.0, "csr", True, None
        else:
            med, boundary = medians[c.fqn]["median_s"], medians[c.fqn]["boundary_s"]
            best = min((k for k in med if k != "dense"), key=med.__getitem__)
            speedup = med["dense"] / (med[best] + boundary)  # a conv also pays for leaving XNNPACK
            faster = med[best] + boundary <= margin * med["dense"]
        block = 1 if best == "csr" else int(best[3:])
        entry: dict[str, Any] = {
            "fqn": c.fqn, "layer": c.layer, "node": c.node, "op": c.target, "shape": list(c.weight.shape),
            "tokens": medians[c.fqn]["tokens"] if med else None, "sparsity": round(c.sparsity, 4), "median_s": med,
            "boundary_s": boundary,
            "choice": best if faster else "dense", "format": "csr" if block == 1 else f"bsr {block}x{block}",
            "speedup": speedup, "batchnorm_folded": c.bn,
        }
        if faster:
            cw = kernels.compress(c.weight, block)
            chosen[c.fqn] = (c, cw)
            entry.update(stored_values=cw.nnz, compressed_bytes=cw.nbytes)
        layers.append(entry)
    program = _rewrite(prepared, chosen) if chosen else prepared
    record = {
        "ops": sorted({chosen[f][0].target + ".out" for f in chosen}), "margin": margin, "rounds": rounds,
        "threads": medians.get("__threads__"), "timing_program": medians.get("__program__"),
        "isa": et_library.library_isa() if timed else None, "layers": layers, "replaced": len(chosen),
        "not_candidates": why_not, "time_s": round(time.perf_counter() - t0, 3),
    }
    compressed = {f: {"weight": cw, "torch_shape": list(c.weight.shape) + ([1, 1] if c.op == "conv1x1" else []),
                      "op": c.target, "bn": c.bn} for f, (c, cw) in chosen.items()}
    return program, record, compressed


def mark_delegation(report: dict[str, Any], record: Mapping[str, Any], edge_program: ExportedProgram) -> None:
    """Point the delegation report's replaced layers (and their op nodes) at the custom op, in place."""
    timed = {e["fqn"]: e for e in record.get("layers", [])}
    targets = {s.arg.name: s.target for s in edge_program.graph_signature.input_specs if hasattr(s.arg, "name")}
    suffix = compressed_targets("")[0]
    op_node = {}  # fqn -> the op node, found through its crow_indices constant
    for n in edge_program.graph.nodes:
        if n.op == "call_function" and op_name(n).startswith("sparsecc.et_sparse") and len(n.args) > 1:
            target = targets.get(getattr(n.args[1], "name", ""), "") or ""
            if target.endswith(suffix):
                op_node[target[: -len(suffix)]] = n.name
    for e in report["nodes"]:
        if e["node"] in op_node.values():
            e.update(where="custom_op", reason=None)
    for e in report["layers"]:
        rec = timed.get(e["fqn"])
        if rec is None:
            continue
        if e["fqn"] in op_node:
            e.update(where="custom_op", delegate=None, nodes=[op_node[e["fqn"]]], reason=None)
        e["custom_op"] = {"op": rec["op"], "choice": rec["choice"], "format": rec["format"],
                          "speedup": None if rec["speedup"] is None else round(rec["speedup"], 3)}
    report["summary"]["custom_op_nodes"] = sum(e["where"] == "custom_op" for e in report["nodes"])
    report["summary"]["portable_nodes"] = sum(e["where"] == "portable" for e in report["nodes"])
