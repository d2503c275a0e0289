"""`TensorRTBundleBackend` (``--target tensorrt-bundle``): what a device needs to build its own engines.

Engines are tied to one GPU model and one TensorRT version, so devices
(Jetson boards and the like) build their own. The bundle target writes,
into ``BUNDLE/tensorrt-bundle/``:

- ``model.fp16.onnx``: weights and compute in FP16, I/O as asked
  (``LowerOptions.extra["io_dtype"]``, default float32), 2:4 re-verified;
- ``build.sh``: trtexec commands for TensorRT 10 and 11 (sparse and dense
  engines, layer info, profiles, timing cache, shapes), see `trtexec`;
- ``golden.npz`` (+ ``golden/<input>.bin`` for ``trtexec --loadInputs``) and
  ``compare.py``: the PyTorch program's outputs on the example inputs, and
  the script that checks the device's outputs against them;
- ``expected_sparse_layers.json``: every Conv/MatMul/Gemm weight, whether it
  is 2:4 on the axis TensorRT reads, and the ONNX node order for name mapping;
- ``versions.json``: sparsecc, torch, onnx, opset, the FP16 conversion, the
  optimisation profile, and the TensorRT versions the script supports.

Here, with no GPU, the FP16 ONNX runs on ONNX Runtime's CPU provider for the
parity check, within `FP16_RTOL` of each output's scale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.export import ExportedProgram

from sparsecc.backends.base import (
    Artifact,
    Backend,
    LayerCheck,
    LowerOptions,
    LoweringError,
    PatternCheck,
    Runner,
)
from sparsecc.core.ir import MaskSpec
from sparsecc.core.program import tensor_leaves

from . import _deps
from .fp16 import IO_DTYPES
from .fp16_onnx import dim_ranges, lower_fp16_onnx
from .golden_compare import FP16_ATOL, FP16_RTOL
from .trtexec import SUPPORTED_MAJORS, build_script, profile_shapes

__all__ = ["TensorRTBundleBackend", "EXPECTED_FILE", "VERSIONS_FILE", "check_fp16_patterns", "golden_outputs", "write_expected"]

EXPECTED_FILE = "expected_sparse_layers.json"
VERSIONS_FILE = "versions.json"


def check_fp16_patterns(artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
    """Each weight's pattern re-read from the FP16 ONNX through the recorded provenance."""
    from sparsecc.backends.onnx.patterns import check_patterns

    model = _deps.onnx().load(str(artifact.path("model")))
    return check_patterns(model, artifact.meta.get("provenance", {}), specs)


def write_expected(out_dir: Path, lowered: Any) -> None:
    """``expected_sparse_layers.json``: step 1 per layer, plus what maps engine layer names back."""
    expected = {"onnx": lowered.files["model"], "layers": lowered.expected, "node_order": lowered.node_order,
                "provenance": {fqn: {"layer": e.get("layer"), "consumers": e.get("consumers", [])}
                               for fqn, e in lowered.provenance.items()}}
    (out_dir / EXPECTED_FILE).write_text(json.dumps(expected, indent=1))


def golden_outputs(program: ExportedProgram, flat_inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The program's flat outputs on flat inputs (the order `compile` feeds artifacts)."""
    args, kwargs = torch.utils._pytree.tree_unflatten(list(flat_inputs), program.call_spec.in_spec)
    with torch.no_grad():
        out = program.module()(*args, **kwargs)
    return tensor_leaves(out)


def _versions() -> dict[str, str]:
    from sparsecc.core.machine import library_versions

    return library_versions(("sparsecc", "torch", "onnx", "onnxruntime", "numpy"))


class TensorRTBundleBackend(Backend):
    """FP16 ONNX + trtexec build script + golden data, for devices that build their own engines."""

    name = "tensorrt-bundle"
    extra = "onnx"
    modules = ("onnx", "onnxruntime", "onnxscript", "onnx_graphsurgeon")
    # FP16 weights and compute: parity with the fp32 program is checked at FP16's precision.
    parity_rtol = FP16_RTOL
    parity_atol = FP16_ATOL

    def check(self, program: ExportedProgram) -> list[LayerCheck]:
        from sparsecc.backends.onnx.checks import DENSE_REASON, check_program

        # Whether TensorRT picks a sparse kernel is decided when the device builds the engine.
        on_device = "dense until TensorRT on the device picks a 2:4 kernel (sparsecc bench --backend tensorrt says)"
        return [LayerCheck(c.layer, c.fqn, c.support, c.reason.replace(DENSE_REASON, on_device))
                for c in check_program(program)]

    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions | None = None) -> Artifact:
        options = options or LowerOptions()
        io = options.extra.get("io_dtype", "float32")
        if io not in IO_DTYPES:
            raise LoweringError(f"io_dtype must be one of {', '.join(IO_DTYPES)}, got {io!r}")
        flat_in = options.extra.get("example_inputs")
        if flat_in is None:
            raise LoweringError("the tensorrt-bundle target needs example inputs for its golden data "
                                "(LowerOptions.extra['example_inputs']; `sparsecc compile` passes them)")
        out_dir = Path(out_dir)
        lowered = lower_fp16_onnx(program, out_dir, options, io)
        flat_out = options.extra.get("example_outputs") or golden_outputs(program, flat_in)
        in_graph = {s.name for s in lowered.inputs}
        names_in = [s.name for s in lowered.inputs]
        dtypes = {s.name: s.dtype for s in lowered.inputs}
        golden: dict[str, np.ndarray] = {}
        bins: dict[str, str] = {}
        (out_dir / "golden").mkdir(exist_ok=True)
        for name, t in zip(names_in, flat_in):
            a = t.detach().cpu().numpy().astype(dtypes.get(name, str(t.dtype).removeprefix("torch.")))
            golden[f"input_{name}"] = a
            if name in in_graph:
                rel = f"golden/{name}.bin"
                np.ascontiguousarray(a).tofile(out_dir / rel)  # raw bytes, as trtexec --loadInputs reads them
                bins[name] = rel
        for i, (spec, t) in enumerate(zip(lowered.outputs, flat_out)):
            golden[f"output_{i}_{spec.name}"] = t.detach().cpu().float().numpy()
        np.savez(out_dir / "golden.npz", **golden)

        names = lowered.onnx_meta.get("dynamic_axes") or {}
        ranges = dim_ranges(program, names)
        example_shapes = {n: tuple(golden[f"input_{n}"].shape) for n in names_in}
        profile = profile_shapes(lowered.inputs, ranges, example_shapes)
        if "profile" in options.extra:  # {input: [min, opt, max]} overrides
            profile.update({k: tuple(tuple(s) for s in v) for k, v in options.extra["profile"].items()})
        versions = _versions()
        script = build_script(options.extra.get("model_name", ""), versions.get("sparsecc", "?"),
                              lowered.files["model"], profile, bins, {n: example_shapes[n] for n in bins})
        (out_dir / "build.sh").write_text(script)
        (out_dir / "build.sh").chmod(0o755)
        (out_dir / "compare.py").write_text((Path(__file__).parent / "golden_compare.py").read_text())

        write_expected(out_dir, lowered)
        eligible = [e for e in lowered.expected if e["onnx_2_4"]]
        info = {
            "versions": versions,
            "onnx": lowered.onnx_meta,
            "fp16": lowered.conversion.to_dict(),
            "tensorrt": {"supported_majors": list(SUPPORTED_MAJORS),
                         "precision": {"10": "--fp16 (BuilderFlag.FP16)", "11": "strongly typed: the FP16 graph"}},
            "profile": {k: {"min": list(v[0]), "opt": list(v[1]), "max": list(v[2])} for k, v in profile.items()},
            "dynamic_dims": {k: list(v) for k, v in ranges.items()},
        }
        (out_dir / VERSIONS_FILE).write_text(json.dumps(info, indent=1))

        files = dict(lowered.files, build_script="build.sh", compare="compare.py", golden="golden.npz",
                     expected=EXPECTED_FILE, versions=VERSIONS_FILE)
        meta = {
            "provenance": lowered.provenance,
            "fp16": lowered.conversion.to_dict(),
            "io_dtype": io,
            "profile": info["profile"],
            "expected_sparse_layers": [e["layer"] for e in eligible],
            "tensorrt_2_4": lowered.expected,
            "threads": options.threads,
        }
        return Artifact(backend=self.name, root=out_dir, files=files, inputs=lowered.inputs,
                        outputs=lowered.outputs, meta=meta)

    def load(self, artifact: Artifact, threads: int | None = None) -> Runner:
        from sparsecc.backends.onnx.runtime import OrtRunner

        return OrtRunner(artifact.path("model"), artifact.inputs, threads if threads is not None else artifact.meta.get("threads"))

    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]:
        return check_fp16_patterns(artifact, specs)
