"""`TorchSparseBackend`: measure each layer, rewrite the winners to sparse kernels, save the program.

``lower`` times every candidate layer at its example activation shape (dense
torch against sparsecc's CSR/BSR kernels and torch's MKL ones, see
`sparsecc.kernel_select`), rewrites the layers where a sparse kernel won by
the margin (`RewriteSparseKernelsPass`), and writes:

- ``program.pt2``: the rewritten program (compressed weights as constants,
  sparsecc metadata kept), loadable with `load_sparse_program`;
- ``kernels.json``: per layer the kernel, the measured medians and gain, and
  why it runs sparse or stays dense; also in ``Artifact.meta["kernels"]``.

Backend-specific `LowerOptions.extra` keys: ``kernel_margin`` (default 1.1),
``kernel_min_sparsity`` (0.3), ``kernel_blocks`` ([4, 8, 16]),
``kernel_include_torch`` (True: also try torch's MKL products),
``kernel_fixed`` (``"bsr8"``, ``"csr"``, ``"int8_bsr8"``, ``"int8_g4"``, ...: use
that kernel wherever it fits, without measuring), ``kernel_dense_reference``
(``"best"``: a sparse kernel must beat the faster of torch and ONNX Runtime
dense; ``"torch"``: torch's only). Layers quantized by
`sparsecc.passes.QuantizeWeightsPass` are timed against dense int8 too. Layers are timed with ``LowerOptions.threads``
intra-op threads (default 1: the count a latency-bound deployment usually
runs, and the only one that times cleanly on a busy machine).

Activation sparsity: linear layers whose inputs carry
`sparsecc.passes.ActivationSparsityPass` thresholds run the activation-sparse
kernel (`RewriteActivationSparsePass`), and with ``exact_relu`` (False) so do
linear layers fed by a ReLU; ``Artifact.meta["activation_kernels"]`` lists them.
``gemv_max_tokens`` (``"auto"``: 8 when the program has activation thresholds,
else 0) also times the remaining linear layers called on that few tokens
against the kernel as a dense gemv and moves the faster ones
(``meta["gemv_timings_ms"]``).

Block-sparse attention (`sparsecc.passes.BlockSparseAttentionPass`) runs on the
kernel that skips the unkept key blocks (`RewriteBlockSparseAttentionPass`);
``meta["block_sparse_attention"]`` lists the call sites.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.export import ExportedProgram

import sparsecc.kernels as kernels
from sparsecc.core.analyze import find_prunable_weights
from sparsecc.backends.base import (
    Artifact,
    Backend,
    LayerCheck,
    LowerOptions,
    PatternCheck,
    Runner,
    Support,
    TensorSpec,
    check_inputs,
    user_input_specs,
    user_output_names,
)
from sparsecc.core.ir import MaskSpec
from sparsecc.backends.torch_sparse.kernel_select import (
    DEFAULT_MARGIN,
    DEFAULT_MIN_SPARSITY,
    KernelChoice,
    KernelPlan,
    find_kernel_layers,
    fixed_kernels,
    select_kernels,
)
from sparsecc.plan.masks import check_pattern
from sparsecc.backends.torch_sparse.int8_select import INT8_KERNELS
from sparsecc.backends.torch_sparse.rewrite_activation_sparse import RewriteActivationSparsePass
from sparsecc.backends.torch_sparse.rewrite_block_sparse_attention import RewriteBlockSparseAttentionPass
from sparsecc.backends.torch_sparse.rewrite_sparse_kernels import (RewriteSparseKernelsPass, compressed_targets,
                                                                    int8_targets)
from sparsecc.core.program import load_program, save_program, state_tensor, tensor_leaves

__all__ = ["TorchSparseBackend", "TorchSparseRunner", "load_sparse_program", "MODEL_FILE", "KERNELS_FILE"]

MODEL_FILE = "program.pt2"
KERNELS_FILE = "kernels.json"


def load_sparse_program(path: str | Path) -> ExportedProgram:
    """Load a ``program.pt2`` that may call sparsecc's kernels (builds them on first use)."""
    kernels.load()
    return load_program(path)


class TorchSparseRunner(Runner):
    """The rewritten program as a callable on flat tensors, under `torch.inference_mode`."""

    def __init__(self, path: Path, inputs: Sequence[TensorSpec], threads: int | None = None):
        if threads is not None:
            torch.set_num_threads(int(threads))
        self.inputs = list(inputs)
        program = load_sparse_program(path)
        self.module = program.module()
        self._in_spec = program.call_spec.in_spec

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_inputs(self.inputs, inputs)
        args, kwargs = tuple(inputs), {}
        if self._in_spec is not None and self._in_spec.num_leaves == len(inputs):
            args, kwargs = torch.utils._pytree.tree_unflatten(list(inputs), self._in_spec)  # keyword inputs
        with torch.inference_mode():
            out = self.module(*args, **kwargs)
        return tensor_leaves(out)


def _output_specs(program: ExportedProgram) -> list[TensorSpec]:
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    names = user_output_names(program)
    specs = []
    for name, arg in zip(names, torch.utils._pytree.tree_leaves(out_node.args[0])):
        val = arg.meta.get("val") if isinstance(arg, torch.fx.Node) else None
        if isinstance(val, torch.Tensor):
            shape = tuple(d if isinstance(d, int) else str(d) for d in val.shape)
            specs.append(TensorSpec(name, shape, str(val.dtype).removeprefix("torch.")))
    return specs


def _plan(program: ExportedProgram, options: LowerOptions) -> KernelPlan:
    extra = options.extra
    fixed = extra.get("kernel_fixed")
    if fixed:
        kind = "int8_g4" if str(fixed) == "int8_g4" else str(fixed).rstrip("0123456789")
        block = 1 if kind == "int8_g4" else int(str(fixed)[len(kind):] or 8)
        return fixed_kernels(program, kind, block, min_sparsity=float(extra.get("kernel_min_sparsity", 0.0)))
    return select_kernels(
        program,
        margin=float(extra.get("kernel_margin", DEFAULT_MARGIN)),
        min_sparsity=float(extra.get("kernel_min_sparsity", DEFAULT_MIN_SPARSITY)),
        blocks=tuple(extra.get("kernel_blocks", (4, 8, 16))),
        include_torch=bool(extra.get("kernel_include_torch", True)),
        threads=options.threads if options.threads is not None else 1,
        progress=extra.get("kernel_progress"),
        dense_reference=str(extra.get("kernel_dense_reference", "best")),
    )


class TorchSparseBackend(Backend):
    """The PyTorch program, with sparse CPU kernels on the layers where they measured faster."""

    name = "torch-sparse"
    extra = ""
    modules = ("torch",)

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        layers, why_not = find_kernel_layers(program)
        weights = find_prunable_weights(program)
        names = {w.fqn: w.layer for w in weights.weights}
        out = [LayerCheck(lay.layer, lay.fqn, Support.SPARSE,
                          "candidate for sparsecc's CSR/BSR kernels; lowering measures whether it pays")
               for lay in layers]
        out += [LayerCheck(names.get(fqn, fqn), fqn, Support.DENSE, f"runs dense: {why}")
                for fqn, why in why_not.items()]
        out += [LayerCheck(s.fqn, s.fqn, Support.UNSUPPORTED, s.reason) for s in weights.skipped]
        return out

    def check_artifact(self, program: ExportedProgram, artifact: Artifact) -> list[LayerCheck]:
        plan = artifact.meta.get("kernels", {})
        out = [LayerCheck(c["layer"], c["fqn"], Support.SPARSE if c["kernel"] != "dense" else Support.DENSE,
                          c["reason"]) for c in plan.get("layers", [])]
        names = {w.fqn: w.layer for w in find_prunable_weights(program).weights}
        out += [LayerCheck(names.get(fqn, fqn), fqn, Support.DENSE, f"runs dense: {why}")
                for fqn, why in plan.get("not_candidates", {}).items()]
        return out

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        kernels.load()
        timings["build_kernels"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        plan = _plan(program, options)
        timings["select_kernels"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        rewritten = RewriteSparseKernelsPass(plan.choices)(program).program
        # activation sparsity: thresholded inputs (ActivationSparsityPass) and, if asked, ReLU's exact zeros
        gemv = options.extra.get("gemv_max_tokens", "auto")
        if gemv == "auto":  # a program with activation thresholds is meant for decoding: time the gemv too
            gemv = 8 if any(n.target == torch.ops.aten.where.ScalarOther for n in rewritten.graph.nodes) else 0
        act = RewriteActivationSparsePass(exact_relu=bool(options.extra.get("exact_relu", False)),
                                          gemv_max_tokens=int(gemv))
        rewritten = act(rewritten).program
        attention = RewriteBlockSparseAttentionPass()  # BlockSparseAttentionPass's op onto the block-skipping kernel
        rewritten = attention(rewritten).program
        timings["rewrite"] = round(time.perf_counter() - t0, 4)
        t0 = time.perf_counter()
        save_program(rewritten, out_dir / MODEL_FILE)
        (out_dir / KERNELS_FILE).write_text(json.dumps(plan.to_dict(), indent=1))
        timings["save"] = round(time.perf_counter() - t0, 4)
        meta: dict[str, Any] = {"kernels": plan.to_dict(), "threads": options.threads, "timings_s": timings,
                                "activation_kernels": act.rewritten, "gemv_timings_ms": act.timings,
                                "block_sparse_attention": attention.rewritten}
        return Artifact(self.name, out_dir, {"model": MODEL_FILE, "kernels": KERNELS_FILE},
                        user_input_specs(program), _output_specs(rewritten), meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if threads is None:
            threads = artifact.meta.get("threads")
        return TorchSparseRunner(artifact.path("model"), artifact.inputs, threads)

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        """Each weight re-checked in the saved program: densified from its CSR/BSR constants, or dense."""
        program = load_sparse_program(artifact.path("model"))
        choices = {c["fqn"]: KernelChoice.from_dict(c) for c in artifact.meta.get("kernels", {}).get("layers", [])}
        dense = find_prunable_weights(program).by_fqn()
        out = []
        for spec in specs:
            choice = choices.get(spec.fqn)
            if choice is not None and choice.kernel in INT8_KERNELS:  # the int8 integers themselves
                crow, col, values, scale, sums = (state_tensor(program, t) for t in int8_targets(spec.fqn))
                blk = (1, 4) if choice.block == 1 else (choice.block, choice.block)
                iw = kernels.Int8Weight(crow, col, values, scale, sums, choice.shape, blk)
                weight, out_axis, red_axis = iw.to_dense_int(), 0, 1
                location = f"constants {int8_targets(spec.fqn)[2]} (+ indices, scales)"
                layout = f"int8 {'1x4 row groups' if choice.block == 1 else f'BSR {blk[0]}x{blk[1]}'} [out, in]"
            elif choice is not None and choice.sparse:
                crow, col, values = (state_tensor(program, t) for t in compressed_targets(spec.fqn))
                cw = kernels.CompressedWeight(crow, col, values, choice.shape, choice.block)
                weight, out_axis, red_axis = cw.to_dense(), 0, 1
                fmt = "CSR" if choice.block == 1 else f"BSR {choice.block}x{choice.block}"
                location = f"constants {compressed_targets(spec.fqn)[2]} (+ indices)"
                layout = f"{fmt} [out, in]"
            elif spec.fqn in dense:
                w = dense[spec.fqn]
                weight, out_axis, red_axis = state_tensor(program, spec.fqn), w.output_axis, w.reduction_axis
                location, layout = f"parameter {spec.fqn}", "dense, as in the source program"
            else:
                out.append(PatternCheck(spec.fqn, str(spec.pattern), "missing", "", False, 0.0,
                                        "weight not found in the saved program"))
                continue
            why, achieved = check_pattern(weight.detach(), spec.pattern, spec.target, out_axis, red_axis)
            out.append(PatternCheck(spec.fqn, str(spec.pattern), location, layout, why is None, achieved, why or ""))
        return out
