"""`ExecuTorchBackend`: ExportedProgram -> ``model.pte`` (XNNPACK + portable kernels).

``lower`` delegates what XNNPACK takes (`XnnpackPartitioner`), leaves the
rest to ExecuTorch's portable kernels, writes ``model.pte`` and, with
``options.compress``, ``model.pte.zst``. ``artifact.meta`` holds:

- ``delegation``: per-node and per-op-type delegation, and per prunable
  layer whether XNNPACK runs it (see `delegation`);
- ``weights``: where each prunable weight lives in the ``.pte`` and in which
  layout (see `weight_index`), used by ``verify_pattern``;
- ``dynamic_dims``: each dynamic dim's name and the bound the ``.pte`` was
  planned for; ``specialized_dims``: dims ExecuTorch pinned to one size;
- ``sizes``: ``pte_bytes`` and ``pte_zstd_bytes``; ``timings_s``; ``threads``;
- ``int8``: for a program quantized with ``quantize: {weights: int8,
  activations: dynamic}``, the layers lowered to XNNPACK's dynamically
  quantized int8 linear (see `int8`), each with the scales and integers
  read back from the ``.pte`` compared with the program's; ``parity_tol``:
  the parity tolerance those layers call for (``parity_rtol`` /
  ``parity_atol`` of the backend follow the last lowering).

Backend-specific `LowerOptions.extra` keys:

- ``dynamic_axes``: ``{input: {axis: name}}`` names for dynamic dims;
- ``dim_max``: an upper bound for dims exported without one (an int, or
  ``{name or symbol: int}``); default: the example's size, with a warning;
- ``zstd_level``: compression level of the ``.zst`` copy.
- ``custom_ops`` (default False; on for the ``executorch-custom-ops`` target):
  each sparse linear / 1x1 conv whose sparsecc kernel measures faster than
  XNNPACK's dense layer in this runtime runs ``sparsecc::et_sparse_linear`` /
  ``et_sparse_conv1x1`` over its weight stored compressed (`custom_ops`);
  ``libsparsecc_executorch.so`` and a loading example go beside the ``.pte``,
  the per-layer timings and choices in ``Artifact.meta["custom_ops"]``.
  ``custom_ops_threads`` (default: the options' threads), ``custom_ops_rounds``
  (7) and ``custom_ops_tokens`` (default: each layer's own on the example)
  steer the measurement; ``custom_ops_margin`` (0.95) is the most time, as a
  fraction of dense, the sparse op may take and be chosen.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

import torch

from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.backends.base import (
    Artifact,
    Backend,
    LayerCheck,
    LowerOptions,
    PatternCheck,
    Runner,
    user_input_specs,
)
from sparsecc.core.ir import MaskSpec
from sparsecc.core.program import state_tensor
from sparsecc.passes.quantize_weights import int8_grid
from sparsecc.verify.parity import PARITY_ATOL, PARITY_RTOL

from . import _deps
from .checks import layer_checks
from .compress import ZSTD_LEVEL, compress_file
from .custom_op_layers import find_candidates
from .custom_ops import MIN_SPARSITY, mark_delegation
from .delegation import delegation_report
from .dynamic_dims import DynamicDim, named_specs, output_specs
from .int8 import int8_parity_tolerance
from .lowering import lower_to_edge, to_pte
from .pte import PteReader
from .runtime import ExecuTorchRunner
from .verify import verify_patterns
from .weight_index import index_custom_ops, index_weights

__all__ = ["ExecuTorchBackend", "ExecuTorchCustomOpsBackend", "MODEL_FILE", "COMPRESSED_FILE", "EXAMPLE_FILE"]

MODEL_FILE = "model.pte"
COMPRESSED_FILE = "model.pte.zst"
EXAMPLE_FILE = "load_custom_ops.py"
# Runs the .pte with the plain ExecuTorch Python runtime from this folder: the runtime first (it loads
# libexecutorch.so), then the library, whose kernels register in that runtime.
_EXAMPLE = """from pathlib import Path
import ctypes
from executorch.runtime import Runtime
here = Path(__file__).resolve().parent
ctypes.CDLL(str(here / "{library}"), mode=ctypes.RTLD_GLOBAL)  # registers sparsecc's kernels
program = Runtime.get().load_program(here / "{model}")  # keep it: it owns the method's memory
method = program.load_method("forward")  # method.execute([inputs...])
"""


def _version() -> str:
    try:
        return version("executorch")
    except PackageNotFoundError:  # a source checkout without metadata
        return "unknown"


class ExecuTorchBackend(Backend):
    """``.pte`` files for the ExecuTorch runtime with XNNPACK (dense kernels only)."""

    name = "executorch"
    extra = "executorch"
    modules = ("executorch", "zstandard")
    # fp32 by default; `lower` widens them for a program with dynamic int8 layers
    # (compile reads them after lowering), see `int8.int8_parity_tolerance`.
    parity_rtol = PARITY_RTOL
    parity_atol = PARITY_ATOL

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        weights = find_prunable_weights(program).weights
        with warnings.catch_warnings():
            # Bounds and pinned dims matter to the artifact; `lower` warns about them.
            warnings.simplefilter("ignore", UserWarning)
            lowering = lower_to_edge(program, LowerOptions())
        report = delegation_report(lowering.edge_program, lowering.rejections, weights)
        return layer_checks(report, lowering.int8.get("layers"))

    def check_artifact(self, program: ExportedProgram, artifact: Artifact) -> list[LayerCheck]:
        return layer_checks(artifact.meta["delegation"], (artifact.meta.get("int8") or {}).get("layers"))

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = find_prunable_weights(program).weights
        values = {w.fqn: state_tensor(program, w.fqn) for w in weights}

        lowering = lower_to_edge(program, options)
        int8 = lowering.int8
        for fqn in int8["layers"]:  # the .pte holds the int8 integers: index and verify those
            values[fqn] = int8_grid(program, fqn)[0]
        if int8["layers"]:
            self.parity_rtol, self.parity_atol = int8_parity_tolerance(int8["depth"])
        else:
            self.parity_rtol, self.parity_atol = PARITY_RTOL, PARITY_ATOL
        report = delegation_report(lowering.edge_program, lowering.rejections, weights)
        if lowering.custom_ops is not None:
            mark_delegation(report, lowering.custom_ops, lowering.edge_program)
        data = to_pte(lowering, program)
        timings = lowering.timings

        t0 = time.perf_counter()
        path = out_dir / MODEL_FILE
        path.write_bytes(data)
        files = {"model": MODEL_FILE}
        sizes: dict[str, Any] = {"pte_bytes": len(data)}
        if options.compress:
            level = int(options.extra.get("zstd_level", ZSTD_LEVEL))
            sizes["pte_zstd_bytes"] = compress_file(path, out_dir / COMPRESSED_FILE, level)
            sizes["zstd_level"] = level
            files["compressed"] = COMPRESSED_FILE
        timings["write"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        reader = PteReader(data)
        index = index_weights(lowering.edge_program, reader, weights, values)
        if lowering.compressed:
            index.update(index_custom_ops(reader, lowering.compressed))
        report["kernels"] = _kernels(reader)
        if int8["layers"] or int8["skipped"]:
            _check_int8_storage(program, reader, index, int8)
        timings["index_weights"] = time.perf_counter() - t0

        dims = {s: d for s, d in lowering.dims.items() if s not in lowering.specialized}
        meta: dict[str, Any] = {
            "executorch": _version(),
            "delegation": report,
            "weights": index,
            "dynamic_dims": [d.to_dict() for d in dims.values()],
            "specialized_dims": {
                lowering.dims[s].name: v for s, v in lowering.specialized.items() if s in lowering.dims
            },
            "rewrites": lowering.rewrites,
            "parity_tol": {"rtol": self.parity_rtol, "atol": self.parity_atol},
            "sizes": sizes,
            "threads": options.threads,
            **({"int8": int8} if int8["layers"] or int8["skipped"] else {}),
            **({"custom_ops": lowering.custom_ops} if lowering.custom_ops is not None else {}),
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }
        if lowering.custom_ops is not None:
            files.update(_ship_library(lowering.custom_ops, out_dir))
        inputs = named_specs(user_input_specs(program), lowering.dims, lowering.specialized)
        outputs = named_specs(output_specs(program), lowering.dims, lowering.specialized)
        return Artifact(backend=self.name, root=out_dir, files=files, inputs=inputs, outputs=outputs, meta=meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if threads is None:
            threads = artifact.meta.get("threads")
        dims = [DynamicDim.from_dict(d) for d in artifact.meta.get("dynamic_dims", [])]
        library = None
        if (artifact.meta.get("custom_ops") or {}).get("replaced"):
            from sparsecc.kernels.et_library import LIBRARY_NAME, EtLibraryError

            if "custom_ops_library" not in artifact.files:
                raise EtLibraryError(f"{artifact.root}: the .pte calls sparsecc's ExecuTorch kernels, but the "
                                     f"artifact lists no {LIBRARY_NAME}")
            library = artifact.path("custom_ops_library")
        return ExecuTorchRunner(artifact.path("model"), artifact.inputs, dims, threads, library)

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        reader = PteReader.open(artifact.path("model"))
        return verify_patterns(reader, artifact.meta.get("weights", {}), specs)


class ExecuTorchCustomOpsBackend(ExecuTorchBackend):
    """The ExecuTorch target with ``custom_ops`` on: sparse layers that measure faster run sparsecc's kernels."""

    name = "executorch-custom-ops"

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        """As `ExecuTorchBackend.check`; layers sparse enough for the custom op say it is decided at lowering."""
        sparse = {c.fqn: c for c in find_candidates(program, program)[0] if c.sparsity >= MIN_SPARSITY}
        out = []
        for chk in super().check(program):
            c = sparse.get(chk.fqn)
            if c is not None:
                chk = dataclasses.replace(chk, reason=f"{c.sparsity:.0%} zeros: runs {c.target} over the weight "
                                          "stored compressed where that measures faster than XNNPACK dense at "
                                          f"lowering; otherwise {chk.reason}")
            out.append(chk)
        return out

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        extra = {**options.extra, "custom_ops": True}
        return super().lower(program, out_dir, dataclasses.replace(options, extra=extra))


def _ship_library(record: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """Copy the kernel library (and a loading example) beside the ``.pte`` when a layer uses it."""
    from sparsecc.kernels.et_library import LIBRARY_NAME, build_et_library, loaded_library

    record["library"] = LIBRARY_NAME if record["replaced"] else None
    if not record["replaced"]:
        return {}
    shutil.copy2(loaded_library() or build_et_library(), out_dir / LIBRARY_NAME)
    (out_dir / EXAMPLE_FILE).write_text(_EXAMPLE.format(library=LIBRARY_NAME, model=MODEL_FILE))
    return {"custom_ops_library": LIBRARY_NAME, "custom_ops_example": EXAMPLE_FILE}


def _kernels(reader: PteReader) -> dict[str, list[str]]:
    """The portable kernels the ``.pte`` calls, and any this runtime build lacks."""
    ops = sorted(set(reader.operators()))
    try:
        registered = _deps.runtime().Runtime.get().operator_registry.operator_names
    except Exception:  # the runtime library itself failed to load: report what we know
        return {"operators": ops, "missing": []}
    return {"operators": ops, "missing": [o for o in ops if o not in registered]}


def _check_int8_storage(program: ExportedProgram, reader: PteReader, index: dict, int8: dict) -> None:
    """Per int8 layer: the quantization XNNPACK stored, compared with the program's grid (in place)."""
    for fqn, rec in int8["layers"].items():
        entry = index.get(fqn, {})
        if entry.get("where") != "xnnpack":
            rec.update(stored="not in an XNNPACK delegate", ok=False)
            continue
        q, scale = int8_grid(program, fqn)
        qp = reader.xnnpack_quant_params(int(entry["delegate"]), int(entry["value"])) or {}
        stored, _ = reader.xnnpack_tensor(int(entry["delegate"]), int(entry["value"]))
        same_q = stored.dtype == torch.int8 and torch.equal(stored, q)
        same_s = "scale" in qp and torch.equal(qp["scale"], scale.float())
        rec.update(stored=qp.get("datatype"), quant=qp.get("type"), integers_equal=bool(same_q),
                   scales_equal=bool(same_s), zeros=int((stored == 0).sum()), ok=bool(same_q and same_s))
