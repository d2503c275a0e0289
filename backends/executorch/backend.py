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
- ``sizes``: ``pte_bytes`` and ``pte_zstd_bytes``; ``timings_s``; ``threads``.

Backend-specific `LowerOptions.extra` keys:

- ``dynamic_axes``: ``{input: {axis: name}}`` names for dynamic dims;
- ``dim_max``: an upper bound for dims exported without one (an int, or
  ``{name or symbol: int}``); default: the example's size, with a warning;
- ``zstd_level``: compression level of the ``.zst`` copy.
"""

from __future__ import annotations

import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Sequence

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

from . import _deps
from .checks import layer_checks
from .compress import ZSTD_LEVEL, compress_file
from .delegation import delegation_report
from .dynamic_dims import DynamicDim, named_specs, output_specs
from .lowering import lower_to_edge, to_pte
from .pte import PteReader
from .runtime import ExecuTorchRunner
from .verify import verify_patterns
from .weight_index import index_weights

__all__ = ["ExecuTorchBackend", "MODEL_FILE", "COMPRESSED_FILE"]

MODEL_FILE = "model.pte"
COMPRESSED_FILE = "model.pte.zst"


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

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        weights = find_prunable_weights(program).weights
        with warnings.catch_warnings():
            # Bounds and pinned dims matter to the artifact; `lower` warns about them.
            warnings.simplefilter("ignore", UserWarning)
            lowering = lower_to_edge(program, LowerOptions())
        return layer_checks(delegation_report(lowering.edge_program, lowering.rejections, weights))

    def check_artifact(self, program: ExportedProgram, artifact: Artifact) -> list[LayerCheck]:
        return layer_checks(artifact.meta["delegation"])

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        weights = find_prunable_weights(program).weights
        values = {w.fqn: state_tensor(program, w.fqn) for w in weights}

        lowering = lower_to_edge(program, options)
        report = delegation_report(lowering.edge_program, lowering.rejections, weights)
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
        report["kernels"] = _kernels(reader)
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
            "sizes": sizes,
            "threads": options.threads,
            "timings_s": {k: round(v, 4) for k, v in timings.items()},
        }
        inputs = named_specs(user_input_specs(program), lowering.dims, lowering.specialized)
        outputs = named_specs(output_specs(program), lowering.dims, lowering.specialized)
        return Artifact(backend=self.name, root=out_dir, files=files, inputs=inputs, outputs=outputs, meta=meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        if threads is None:
            threads = artifact.meta.get("threads")
        dims = [DynamicDim.from_dict(d) for d in artifact.meta.get("dynamic_dims", [])]
        return ExecuTorchRunner(artifact.path("model"), artifact.inputs, dims, threads)

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        reader = PteReader.open(artifact.path("model"))
        return verify_patterns(reader, artifact.meta.get("weights", {}), specs)


def _kernels(reader: PteReader) -> dict[str, list[str]]:
    """The portable kernels the ``.pte`` calls, and any this runtime build lacks."""
    ops = sorted(set(reader.operators()))
    try:
        registered = _deps.runtime().Runtime.get().operator_registry.operator_names
    except Exception:  # the runtime library itself failed to load: report what we know
        return {"operators": ops, "missing": []}
    return {"operators": ops, "missing": [o for o in ops if o not in registered]}
