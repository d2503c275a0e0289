"""`TensorRTBackend` (``--target tensorrt``): sparse and dense FP16 engines built here, and the per-layer report.

``lower`` writes the FP16 ONNX (2:4 re-verified), then builds two engines
from it with TensorRT's Python API (see `engine.build_engine`): one with
``SPARSE_WEIGHTS`` and one without, same precision, same optimisation
profile, one shared timing cache. For each it keeps the builder log and the
inspector's layer JSON, and writes ``report.json`` / ``report.md``: per layer,
2:4 in the ONNX -> eligible in TensorRT -> sparse kernel picked, or why not.
``sparsecc bench --backend tensorrt`` times the two engines side by side.

Needs ``tensorrt`` (10 or 11) and a CUDA GPU; without them ``lower`` raises a
one-line error naming what is missing. For devices that build their own
engines use the ``tensorrt-bundle`` target.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from torch.export import ExportedProgram

from sparsecc.backends.base import Artifact, Backend, LayerCheck, LowerOptions, LoweringError, PatternCheck, Runner
from sparsecc.core.ir import MaskSpec

from . import _deps
from .bundle import EXPECTED_FILE, TensorRTBundleBackend, check_fp16_patterns, write_expected
from .fp16_onnx import dim_ranges, lower_fp16_onnx
from .golden_compare import FP16_ATOL, FP16_RTOL
from .layer_map import LayerNameMap
from .report import layer_report, report_markdown, report_summary
from .trtexec import profile_shapes

__all__ = ["TensorRTBackend", "VARIANTS"]

VARIANTS = ("sparse", "dense")


class TensorRTBackend(Backend):
    """FP16 TensorRT engines with and without 2:4 sparse kernels, built on this machine's GPU."""

    name = "tensorrt"
    extra = "tensorrt"
    modules = ("tensorrt", "onnx")
    parity_rtol = FP16_RTOL
    parity_atol = FP16_ATOL

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        return TensorRTBundleBackend().check(program)

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        import torch

        from .engine import build_engine

        trt = _deps.tensorrt()  # fail before any work when TensorRT is missing
        if not torch.cuda.is_available():
            raise LoweringError("the tensorrt target builds engines on a CUDA GPU and none is visible; "
                                "use --target tensorrt-bundle to build on the device instead")
        options = options or LowerOptions()
        flat_in = options.extra.get("example_inputs")
        if flat_in is None:
            raise LoweringError("the tensorrt target needs example inputs for its optimisation profile "
                                "(LowerOptions.extra['example_inputs']; `sparsecc compile` passes them)")
        out_dir = Path(out_dir)
        lowered = lower_fp16_onnx(program, out_dir, options, options.extra.get("io_dtype", "float32"))
        example = {s.name: tuple(t.shape) for s, t in zip(lowered.inputs, flat_in)}
        profile = profile_shapes(lowered.inputs, dim_ranges(program, lowered.onnx_meta.get("dynamic_axes") or {}),
                                 example)
        names = LayerNameMap.build(lowered.node_order, lowered.provenance)
        write_expected(out_dir, lowered)
        files = dict(lowered.files, expected=EXPECTED_FILE)
        reports: dict[str, Any] = {}
        for variant in VARIANTS:
            build = build_engine(out_dir / lowered.files["model"], profile, sparse=variant == "sparse",
                                 timing_cache=out_dir / "timing.cache")
            (out_dir / f"{variant}.plan").write_bytes(build.plan)
            (out_dir / f"{variant}.build.log").write_text("\n".join(build.log) + "\n")
            (out_dir / f"{variant}.layers.json").write_text(build.layer_info_json)
            files.update({variant: f"{variant}.plan", f"{variant}_log": f"{variant}.build.log",
                          f"{variant}_layers": f"{variant}.layers.json"})
            rows = layer_report(lowered.expected, names, build.sparsity, build.info)
            reports[variant] = {"summary": report_summary(rows), "layers": [r.to_dict() for r in rows],
                                "build_s": round(build.seconds, 2), "tensorrt": build.version}
        files["timing_cache"] = "timing.cache"
        (out_dir / "report.json").write_text(json.dumps(reports, indent=1))
        (out_dir / "report.md").write_text(report_markdown(
            [_row(r) for r in reports["sparse"]["layers"]], f"TensorRT {trt.__version__} 2:4 per layer"))
        files.update(report="report.json", report_md="report.md")
        meta = {"provenance": lowered.provenance, "fp16": lowered.conversion.to_dict(), "tensorrt": trt.__version__,
                "profile": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.items()},
                "sparse_report": reports["sparse"]["summary"], "tensorrt_2_4": lowered.expected,
                "threads": options.threads}
        return Artifact(self.name, out_dir, files, lowered.inputs, lowered.outputs, meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        from .runtime import TensorRTRunner

        return TensorRTRunner(artifact.path("sparse"), artifact.inputs)

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        return check_fp16_patterns(artifact, specs)


def _row(d: dict[str, Any]) -> Any:
    from .report import LayerRow

    return LayerRow(**d)
