"""`OnnxBackend`: ExportedProgram -> cleaned ``model.onnx`` -> ONNX Runtime (CPU).

``lower`` exports with the torch.onnx dynamo exporter, cleans the graph with
onnx-graphsurgeon, names the dynamic axes, records where every prunable
weight ended up (provenance), optionally stores mostly-zero weights as sparse
initializers, and writes ``model.onnx`` (plus ``model.onnx.data`` only when
the weights pass protobuf's 2 GB limit).

Backend-specific `LowerOptions.extra` keys:

- ``dynamic_axes``: ``{input: {axis: name}}`` names for dynamic dims
  (default: ``batch``, ``seq``, ``<input>_dim<axis>``, see `dim_names`);
- ``custom_translation_table``: ``{torch op: onnxscript function}`` for ops
  the exporter cannot translate;
- ``external_data_threshold``: weight bytes above which weights go to an
  external data file (default 2 GB minus headroom).
- ``int8_qdq`` (default True): weights quantized by `QuantizeWeightsPass`
  are stored as int8 + DequantizeLinear (`backends.onnx.quantize`), recorded
  in ``Artifact.meta["int8_qdq"]``.
- ``custom_ops`` (default False; on for the ``onnx-custom-ops`` target): each
  sparse layer whose ``sparsecc.SparseMatMul`` measures faster than ONNX
  Runtime's dense MatMul runs it, its weight stored compressed
  (`backends.onnx.custom_ops`); ``libsparsecc_ort.so`` and a loading example
  go beside the model, the per-layer timings and choices in
  ``Artifact.meta["custom_ops"]``. ``custom_ops_threads`` (default: the
  options' threads, else 1), ``custom_ops_rounds`` (7) and
  ``custom_ops_tokens`` (default: each layer's own on the example inputs)
  steer the measurement; ``custom_ops_margin`` (0.95) is the most time,
  as a fraction of dense, that the sparse op may take and be chosen. An
  int8 weight (QDQ, dynamic activations) is timed as
  ``sparsecc.SparseMatMulInt8`` against the faster of fp32 dense and ONNX
  Runtime's dense int8 (`backends.onnx.custom_ops_int8`).

`Artifact.meta` holds ``provenance`` (per weight FQN: initializer, layout,
permutation, consumers), ``tensorrt_2_4`` (per Conv/MatMul/Gemm: 2:4
eligible or why not), ``dynamic_axes``, ``cleanup``, ``sparse_initializers``
(what was converted, bytes before/after) and ``timings_s`` per stage.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import PrunableWeight, find_prunable_weights
from sparsecc.backends.base import (
    Artifact,
    Backend,
    LayerCheck,
    LowerOptions,
    LoweringError,
    PatternCheck,
    Runner,
    Support,
    TensorSpec,
    user_input_specs,
)
from sparsecc.core.ir import MaskSpec, get_node_info
from sparsecc.verify.parity import PARITY_ATOL, PARITY_RTOL, int8_parity_tolerance
from sparsecc.core.program import state_tensor

from . import _deps
from .checks import check_program
from .cleanup import clean_graph
from .custom_ops import DEFAULT_MARGIN, apply_custom_ops
from .custom_ops_int8 import apply_int8_custom_ops, int8_chain_depth
from .export import dim_names, export_program, rename_dims, rename_symbols
from .patterns import check_patterns
from .provenance import find_provenance
from .quantize import apply_qdq
from .runtime import OrtRunner
from .sparse_initializers import to_sparse_initializers
from .verify_nm import check_nm

__all__ = ["OnnxBackend", "OnnxCustomOpsBackend", "MODEL_FILE", "DATA_FILE", "EXTERNAL_DATA_THRESHOLD",
           "LIBRARY_FILE", "EXAMPLE_FILE"]

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
LIBRARY_FILE = "libsparsecc_ort.so"
EXAMPLE_FILE = "load_custom_ops.py"
# Three lines that run the model with plain onnxruntime, from this folder (a path with a slash:
# a bare file name would be looked up on the system's library path, not here).
_EXAMPLE = f"""import onnxruntime as ort  # sparsecc.SparseMatMul runs from {LIBRARY_FILE}: register it first
opts = ort.SessionOptions(); opts.register_custom_ops_library('./{LIBRARY_FILE}')
sess = ort.InferenceSession('{MODEL_FILE}', opts, providers=['CPUExecutionProvider'])
"""
# protobuf refuses messages of 2 GiB; keep headroom for the graph itself.
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26


def _payload_bytes(model: Any) -> int:
    g = model.graph
    return sum(t.ByteSize() for t in g.initializer) + sum(t.ByteSize() for t in g.sparse_initializer)


def _onnx_specs(values: Any) -> list[TensorSpec]:
    onnx = _deps.onnx()
    specs = []
    for v in values:
        tt = v.type.tensor_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).name if tt.elem_type else "unknown"
        shape = tuple(d.dim_param if d.HasField("dim_param") else int(d.dim_value) for d in tt.shape.dim)
        specs.append(TensorSpec(v.name, shape, dtype))
    return specs


def _renamed(spec: TensorSpec, names: dict[str, str]) -> TensorSpec:
    dims = tuple(rename_symbols(d, names) if isinstance(d, str) else d for d in spec.shape)
    return TensorSpec(spec.name, dims, spec.dtype)


def _as_computed(program: ExportedProgram, w: PrunableWeight) -> torch.Tensor:
    """The weight as the program multiplies by it: masked, when a mask is not folded yet.

    The exporter folds ``weight * mask`` into one initializer, so provenance
    must look for the product, not the raw parameter.
    """
    weight = state_tensor(program, w.fqn)
    node = next((n for n in program.graph.nodes if n.name == w.node), None)
    info = get_node_info(node) if node is not None else None
    if info is not None and info.mask:
        weight = weight * state_tensor(program, info.mask)
    return weight


def _save(model: Any, out_dir: Path, external: bool) -> dict[str, str]:
    """Check and write ``model.onnx`` (and ``model.onnx.data`` when external); the artifact's files."""
    onnx = _deps.onnx()
    path, data = out_dir / MODEL_FILE, out_dir / DATA_FILE
    # onnx appends to an existing data file: start from none.
    data.unlink(missing_ok=True)
    try:
        if not external:
            onnx.checker.check_model(model)
            onnx.save_model(model, str(path))
            return {"model": MODEL_FILE}
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
            location=DATA_FILE, size_threshold=1024,
        )
        onnx.checker.check_model(str(path))  # by path: the checker cannot take > 2 GB in memory
        return {"model": MODEL_FILE, "weights": DATA_FILE}
    except onnx.checker.ValidationError as e:
        raise LoweringError(f"the cleaned ONNX model is invalid: {e}") from e


def _custom_ops(model: Any, program: ExportedProgram, provenance: dict, options: LowerOptions,
                out_dir: Path) -> dict[str, Any]:
    """Swap in sparsecc.SparseMatMul where it measured faster; the library and example go beside the model."""
    from sparsecc.kernels.ort_library import build_library  # g++ and the ORT headers, only when asked for

    try:
        library = build_library()
    except Exception as e:
        raise LoweringError(f"custom_ops: the ONNX Runtime custom-op library could not be built: {e}") from e
    x = options.extra
    kw = dict(example=x.get("example_inputs"),
              input_specs=[(s.name, s.dtype, len(s.shape)) for s in user_input_specs(program)],
              threads=int(x.get("custom_ops_threads") or options.threads or 1),
              rounds=int(x.get("custom_ops_rounds", 7)), tokens=x.get("custom_ops_tokens"),
              margin=float(x.get("custom_ops_margin", DEFAULT_MARGIN)))
    record = apply_custom_ops(model, provenance, str(library), **kw)
    # int8 weights (QDQ) next: SparseMatMulInt8 against fp32 dense and ONNX Runtime's dense int8
    int8 = apply_int8_custom_ops(model, provenance, str(library), **kw)
    if int8:
        record["layers"] += int8
        record["replaced"] += sum("custom_op" in e for e in int8)
        record["ops"] = sorted({e["op"] for e in record["layers"] if "custom_op" in e})
    record["int8_depth"] = int8_chain_depth(model)  # activations quantized per token: parity follows from it
    if record["replaced"]:
        shutil.copy2(library, out_dir / LIBRARY_FILE)
        (out_dir / EXAMPLE_FILE).write_text(_EXAMPLE)
    record["library"] = LIBRARY_FILE if record["replaced"] else None
    return record


class OnnxBackend(Backend):
    """ONNX files for ONNX Runtime (runs dense) and TensorRT (2:4 eligibility checked)."""

    name = "onnx"
    extra = "onnx"
    modules = ("onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon")
    # Parity tolerance of the last lowering (compile reads them): fp32, or the dynamic int8 one of the
    # deepest chain of int8 layers (ONNX Runtime runs even weight-only QDQ MatMuls on quantized activations).
    parity_rtol = PARITY_RTOL
    parity_atol = PARITY_ATOL

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        return check_program(program)

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        _deps.onnx()
        options = options or LowerOptions()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = find_prunable_weights(program).weights
        tensors = {w.fqn: _as_computed(program, w) for w in weights}

        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(stage: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[stage], clock = round(now - clock, 4), now

        raw = export_program(program, options.opset, options.extra.get("custom_translation_table"))
        lap("export")
        try:
            model, stats = clean_graph(raw)
        except Exception as e:  # graphsurgeon and ORT raise assorted types
            raise LoweringError(f"ONNX graph cleanup failed: {type(e).__name__}: {e}") from e
        lap("cleanup")
        names = dim_names(program, options.extra.get("dynamic_axes"))
        rename_dims(model, names)
        provenance = find_provenance(model, weights, tensors)
        lap("provenance")
        qdq = apply_qdq(model, program, provenance) if options.extra.get("int8_qdq", True) else None
        if qdq is not None and (qdq["weights"] or qdq["skipped"]):  # int8 weights (QuantizeWeightsPass)
            lap("qdq_int8")
        custom = None
        if options.extra.get("custom_ops"):
            custom = _custom_ops(model, program, provenance, options, out_dir)
            lap("custom_ops")
        trt = [e.to_dict() for e in check_nm(model, 2, 4)]
        lap("check_nm")

        meta: dict[str, Any] = {
            "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
            "ir_version": model.ir_version,
            "exporter": f"torch.onnx (dynamo) {torch.__version__}",
            "dynamic_axes": names,
            "cleanup": stats.to_dict(),
            "threads": options.threads,
        }
        if options.sparse_initializers:
            conversion = to_sparse_initializers(model)
            meta["sparse_initializers"] = conversion.to_dict()
            for entry in provenance.values():
                if entry.get("initializer") in conversion.converted:
                    entry["storage"] = "sparse (COO, linear int64 indices)"
            lap("sparse_initializers")
        for entry in provenance.values():
            if entry.get("initializer") is not None:
                entry.setdefault("storage", "dense")
        meta["provenance"] = provenance
        if qdq is not None and (qdq["weights"] or qdq["skipped"]):
            meta["int8_qdq"] = qdq
        meta["tensorrt_2_4"] = trt
        if custom is not None:
            meta["custom_ops"] = custom
        # int8 layers quantize activations at run time (ours, ONNX Runtime's, or its fusion of the QDQ weights)
        depth = int8_chain_depth(model) if qdq is not None and qdq["weights"] else 0
        self.parity_rtol, self.parity_atol = int8_parity_tolerance(depth) if depth else (PARITY_RTOL, PARITY_ATOL)
        if depth:
            meta["parity_tol"] = {"rtol": self.parity_rtol, "atol": self.parity_atol, "int8_depth": depth}

        threshold = int(options.extra.get("external_data_threshold", EXTERNAL_DATA_THRESHOLD))
        files = _save(model, out_dir, external=_payload_bytes(model) > threshold)
        if custom is not None and custom["replaced"]:
            files.update(custom_ops_library=LIBRARY_FILE, custom_ops_example=EXAMPLE_FILE)
        lap("save")
        meta["timings_s"] = timings

        inputs = [_renamed(s, names) for s in user_input_specs(program)]
        outputs = _onnx_specs(model.graph.output)
        return Artifact(backend=self.name, root=out_dir, files=files, inputs=inputs, outputs=outputs, meta=meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if threads is None:
            threads = artifact.meta.get("threads")
        library = artifact.path("custom_ops_library") if "custom_ops_library" in artifact.files else None
        return OrtRunner(artifact.path("model"), artifact.inputs, threads, library)

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        onnx = _deps.onnx()
        model = onnx.load(str(artifact.path("model")))
        return check_patterns(model, artifact.meta.get("provenance", {}), specs)


# what a layer's custom op was timed against (the faster of the two for int8 layers)
_REFERENCE = {"dense": "ONNX Runtime dense", "dense_int8": "ONNX Runtime dense int8 (quantize_dynamic)"}


class OnnxCustomOpsBackend(OnnxBackend):
    """The ONNX target with ``custom_ops`` on: sparse layers that measure faster run sparsecc.SparseMatMul."""

    name = "onnx-custom-ops"

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        extra = {**options.extra, "custom_ops": True}
        return super().lower(program, out_dir, dataclasses.replace(options, extra=extra))

    def check_artifact(self, program: ExportedProgram, artifact: Artifact) -> list[LayerCheck]:
        """Layers whose custom op measured faster run sparse (sparsecc's kernels); the others as in `check`."""
        timed = {e["fqn"]: e for e in (artifact.meta.get("custom_ops") or {}).get("layers", [])}
        out = []
        for c in self.check(program):
            e = timed.get(c.fqn)
            if e is not None and "custom_op" in e:
                op = e["custom_op"]
                out.append(LayerCheck(c.layer, c.fqn, Support.SPARSE,
                                      f"sparsecc.{op['op']} ({op['format']}) in {LIBRARY_FILE}: "
                                      f"{e['speedup']:.2f}x {_REFERENCE[e.get('reference', 'dense')]} at lowering, "
                                      f"{e['tokens']} tokens"))
            elif e is not None:
                need = 1 / float(artifact.meta["custom_ops"]["margin"])
                out.append(LayerCheck(c.layer, c.fqn, Support.DENSE,
                                      f"dense: sparsecc's kernels measured {e['speedup']:.2f}x "
                                      f"{_REFERENCE[e.get('reference', 'dense')]} at lowering (replaced from "
                                      f"{need:.2f}x); {c.reason}"))
            else:
                out.append(c)
        return out
