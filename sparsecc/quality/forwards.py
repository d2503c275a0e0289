"""What runs the model for a task: PyTorch modules and programs, and each backend's build in a bundle.

A `Forward` feeds inputs within the ranges the model accepts (batch and
sequence ranges of a program or of a bundle's manifest): batches are split to
the largest allowed size and padded up to the smallest (padding rows are
dropped from the outputs); an input that cannot fit is an `EvalError` naming it.
"""

from __future__ import annotations

import copy
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sparsecc.core.program import tensor_leaves
from sparsecc.quality.task import EvalError

__all__ = ["Forward", "torch_forward", "bundle_forward"]


class Forward:
    """Calls one model on (args, kwargs) batches; returns its flat output tensors.

    ``batch_range`` / ``seq_range`` are the sizes the model accepts (None: any);
    batches below the minimum are padded with copies of their last row.
    """

    def __init__(self, name: str, call: Callable[[tuple, dict], list[torch.Tensor]],
                 batch_range: tuple[int, int | None] | None = None, seq_range: tuple[int, int | None] | None = None,
                 features: Callable[[tuple, dict], torch.Tensor] | None = None, no_features_reason: str = ""):
        self.name, self._call = name, call
        self.batch_range, self.seq_range = batch_range, seq_range
        self._features, self.no_features_reason = features, no_features_reason
        self.split_on_failure = False
        self._cap: int | None = None
        self.notes: list[str] = []

    def max_batch(self, want: int) -> int:
        hi = self.batch_range[1] if self.batch_range else None
        return max(1, min(want, hi)) if hi else want

    def _fit(self, args: tuple, kwargs: dict) -> tuple[tuple, dict, int, int]:
        flat = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
        b = int(flat[0].shape[0])
        if self.seq_range and flat[0].dim() == 2 and not flat[0].is_floating_point():
            lo, hi = self.seq_range
            s = int(flat[0].shape[1])
            if s < lo or (hi is not None and s > hi):
                raise EvalError(f"{self.name}: a sequence of {s} tokens is outside the model's seq range [{lo}, {hi}]")
        pad = 0
        if self.batch_range:
            lo, hi = self.batch_range
            if hi is not None and b > hi:
                raise EvalError(f"{self.name}: batch {b} is above the model's batch range [{lo}, {hi}]")
            pad = max(0, lo - b)
        if pad:
            def grow(t):
                if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == b:
                    return torch.cat([t, t[-1:].expand(pad, *t.shape[1:])])
                return t
            args = tuple(grow(t) for t in args)
            kwargs = {k: grow(v) for k, v in kwargs.items()}
        return args, kwargs, b, b + pad

    def __call__(self, args: tuple, kwargs: dict) -> list[torch.Tensor]:
        b = _batch_of(args, kwargs)
        if self._cap is not None and b > self._cap:
            cap = self._cap  # a chunk that fails lowers self._cap; the chunking here stays
            parts = [self(*_rows(args, kwargs, i, min(b, i + cap), b)) for i in range(0, b, cap)]
            return [torch.cat([p[k] for p in parts]) if parts[0][k].dim() else parts[0][k] for k in range(len(parts[0]))]
        args, kwargs, b, fed = self._fit(args, kwargs)
        try:
            outs = self._call(args, kwargs)
        except Exception as e:
            # A runtime that fails on a batch inside the range its artifact declares (an
            # ExecuTorch buffer planned for fewer rows, say): halve the batch, and say so.
            if not self.split_on_failure or fed <= 1 or isinstance(e, EvalError):
                raise
            self._cap = max(1, fed // 2)
            self.notes.append(f"{self.name}: batch {fed} failed inside the declared batch range "
                              f"{self.batch_range} ({type(e).__name__}: {str(e)[:120]}); ran batches of at most {self._cap}")
            return self(*_rows(args, kwargs, 0, b, fed))
        return [o[:b] if o.dim() and o.shape[0] == fed else o for o in outs]

    def features(self, args: tuple, kwargs: dict) -> torch.Tensor:
        if self._features is None:
            raise EvalError(self.no_features_reason or f"{self.name}: features before the classifier are not available")
        args, kwargs, b, fed = self._fit(args, kwargs)
        f = self._features(args, kwargs)
        return f[:b] if f.shape[0] == fed else f


def _batch_of(args: tuple, kwargs: dict) -> int:
    flat = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    return int(flat[0].shape[0])


def _rows(args: tuple, kwargs: dict, i: int, j: int, b: int) -> tuple[tuple, dict]:
    """Rows i:j of every batched input (those whose first dim is ``b``)."""
    def take(t):
        return t[i:j] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == b else t
    return tuple(take(t) for t in args), {k: take(v) for k, v in kwargs.items()}


def _program_ranges(program) -> tuple[tuple[int, int | None] | None, tuple[int, int | None] | None]:
    """Batch range (dim 0 of the first user input) and token-sequence range (its dim 1) of a program."""
    vals = [n.meta.get("val") for n in program.graph.nodes
            if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    vals = [v for v in vals if isinstance(v, torch.Tensor)]
    if not vals:
        return None, None

    def rng(d):
        if isinstance(d, int):
            return (d, d)
        c = program.range_constraints.get(d.node.expr)
        if c is None:
            return None
        return (int(c.lower), int(c.upper) if c.upper.is_finite else None)

    first = vals[0]
    batch = rng(first.shape[0]) if first.dim() else None
    seq = rng(first.shape[1]) if first.dim() == 2 and not first.is_floating_point() else None
    return batch, seq


def _last_linear_input_module(gm: torch.fx.GraphModule) -> torch.fx.GraphModule | None:
    """A copy of ``gm`` that returns the input of its last linear op (the classifier's features)."""
    linears = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.linear.default, torch.ops.aten.addmm.default)]
    if not linears:
        return None
    last = linears[-1]
    feat = last.args[0] if last.target == torch.ops.aten.linear.default else last.args[1]
    gm = copy.deepcopy(gm)
    feat = next(n for n in gm.graph.nodes if n.name == feat.name)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = (torch.utils._pytree.tree_map(lambda a: feat if isinstance(a, torch.fx.Node) else a, out.args[0]),)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def torch_forward(model: Any, name: str = "torch") -> Forward:
    from torch.export import ExportedProgram

    batch = seq = None
    if isinstance(model, ExportedProgram):
        batch, seq = _program_ranges(model)
        module = model.module()
        feat_module = _last_linear_input_module(module)
        feat = (lambda a, k: tensor_leaves(feat_module(*a, **k))[0]) if feat_module is not None else None
    else:
        module = model.eval() if isinstance(model, torch.nn.Module) else model
        feat = _hooked_features(module) if isinstance(module, torch.nn.Module) else None

    def call(args, kwargs):
        with torch.inference_mode():
            return tensor_leaves(module(*args, **kwargs))

    def features(args, kwargs):
        with torch.inference_mode():
            return feat(args, kwargs)

    return Forward(name, call, batch, seq, features if feat else None, f"{name}: the model has no linear layer")


def _hooked_features(module: torch.nn.Module):
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        return None
    last = linears[-1]

    def run(args, kwargs):
        seen = []
        h = last.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
        try:
            module(*args, **kwargs)
        finally:
            h.remove()
        return seen[-1]

    return run


# -- bundles -----------------------------------------------------------------------------------


def bundle_forward(bundle, backend: str, variant: str) -> Forward | None:
    """The sparse or dense build of ``backend`` in ``bundle`` (None when the bundle has none)."""
    from sparsecc.bundle.reader import Bundle

    assert isinstance(bundle, Bundle)
    v = bundle.variant(backend, variant)
    if v is None or not v.path.is_file():
        return None
    names = [i["name"] for i in bundle.inputs]
    dtypes = {i["name"]: i["dtype"] for i in bundle.inputs}
    ranges = bundle.dynamic_dims
    first_shape = bundle.inputs[0]["shape"] if bundle.inputs else []

    def dim_range(axis: int) -> tuple[int, int] | None:
        d = first_shape[axis] if len(first_shape) > axis else None
        return tuple(ranges[d]) if isinstance(d, str) and d in ranges else None

    # The first input's dim 0 is the batch; dim 1 of 2-D token inputs is the sequence.
    batch_range = dim_range(0)
    seq_range = dim_range(1) if len(first_shape) == 2 else None

    def flatten(args, kwargs) -> list[torch.Tensor]:
        flat = list(args) + [kwargs[n] for n in names if n in kwargs]
        unknown = set(kwargs) - set(names)
        if unknown or len(flat) != len(names):
            raise EvalError(f"{bundle.path}: the artifact takes inputs {names}; got {len(args)} positional and "
                            f"keyword inputs {sorted(kwargs)}")
        return [t.to(getattr(torch, dtypes[n])) for n, t in zip(names, flat)]

    label = f"{backend}"
    if backend == "torch":
        from sparsecc.core.program import load_program

        program = load_program(v.path)
        fwd = torch_forward(program, label)
        fwd.batch_range = fwd.batch_range or batch_range
        return fwd
    from sparsecc.backends import Artifact, get_backend

    artifact = Artifact.from_dict(v.artifact, v.root)
    runner = get_backend(backend).load(artifact)
    # an artifact may accept less than the program (ExecuTorch plans memory for its own bounds)
    artifact_max = {d["name"]: int(d["max"]) for d in artifact.meta.get("dynamic_dims", [])}

    def capped(r: tuple[int, int] | None, axis: int) -> tuple[int, int] | None:
        d = first_shape[axis] if len(first_shape) > axis else None
        if r is None or d not in artifact_max:
            return r
        return (r[0], artifact_max[d] if r[1] is None else min(r[1], artifact_max[d]))

    batch_range, seq_range = capped(batch_range, 0), capped(seq_range, 1)

    def call(args, kwargs):
        return [torch.as_tensor(o) for o in runner(flatten(args, kwargs))]

    features, reason = None, ""
    if backend == "onnx":
        features = _onnx_features(v.path, names, flatten)
    else:
        reason = f"{backend}: the artifact returns only the model's outputs, not the features before the classifier"
    fwd = Forward(label, call, batch_range, seq_range, features, reason)
    fwd.split_on_failure = True
    return fwd


def _onnx_features(path: Path, names: list[str], flatten) -> Callable:
    """Runs a copy of the ONNX model whose output is the input of its last Gemm/MatMul (the
    classifier's features); the copy is made on first use."""
    state: dict[str, Any] = {}

    def load() -> None:
        import onnx
        import onnxruntime as ort

        from sparsecc.core.ort_session import feed_order, session_options

        model = onnx.load(str(path))
        nodes = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
        if not nodes:
            raise EvalError(f"{path}: no Gemm/MatMul node, so no classifier whose input could serve as features")
        state["output"] = nodes[-1].input[0]
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(state["output"], onnx.TensorProto.FLOAT, None))
        with tempfile.TemporaryDirectory(prefix="sparsecc-eval-") as tmp:
            p = os.path.join(tmp, "features.onnx")
            onnx.save(model, p)
            state["session"] = ort.InferenceSession(p, sess_options=session_options(None),
                                                    providers=["CPUExecutionProvider"])
        args = state["session"].get_inputs()  # by name, else position: the exporter renames `input` inputs
        state["feed"] = list(zip([a.name for a in args], feed_order([(n, "", None) for n in names], args)))

    def run(args, kwargs):
        if not state:
            load()
        flat = flatten(args, kwargs)
        feed = {n: flat[i].numpy() for n, i in state["feed"]}
        return torch.from_numpy(np.asarray(state["session"].run([state["output"]], feed)[0]))

    return run
