"""Compile: capture -> sparsify -> lower -> verify, into a deployment bundle.

A bundle is a folder::

    BUNDLE/
      manifest.json        versions, machine, recipe, inputs (with dynamic dims),
                           per-layer sparsity, per-target check / pattern / parity
      README.md            how to load and run each artifact
      recipe.yaml
      program.pt2          the sparse torch.export program (sparsecc.load_program)
      inputs/example.npz   the example inputs, for parity checks on the target
      onnx/model.onnx      per target, what its backend wrote
      executorch/model.pte (+ model.pte.zst)

Every compile re-checks each weight's pattern inside each artifact (in the
artifact's own layout) and compares each artifact's outputs with the sparse
PyTorch program, on the example inputs and on fresh inputs of other allowed
shapes; a mismatch beyond tolerance fails the compile and writes nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import yaml
from torch.export import ExportedProgram

from sparsecc.backends import LowerOptions, TensorSpec, get_backend, user_input_specs, user_output_names
from sparsecc.flows.recover import check_stages, recover
from sparsecc.flows.runtime_sparsity import apply_runtime_sparsity
from sparsecc.flows.sparsify import mask_specs, recipe_calibration, recipe_needs_calibration, sparsify
from sparsecc.flows.structured import prune_structured
from sparsecc.passes.quantize_weights import quantize_program
from sparsecc.plan.calibrate import CalibrationData
from sparsecc.bundle.readme import bundle_readme
from sparsecc.bundle.manifest import (DenseReference, Manifest, ModelSource, ParityInput, RecoveryRecord, TargetRecord,
                                      write_manifest)
from sparsecc.bundle.staging import check_replaceable, interrupt_guard, staged_output
from sparsecc.core.capture import capture, dynamic_axis_names
from sparsecc.core.machine import machine_info
from sparsecc.core.program import save_program, tensor_leaves
from sparsecc.plan.recipe import Recipe, load_recipe
from sparsecc.errors import SparseccError, VerificationError
from sparsecc.verify.float64_referee import float64_module, float64_outputs, referee
from sparsecc.verify.parity import PARITY_ATOL, PARITY_RTOL, compare, flat_inputs, save_reference, shape_variants

__all__ = ["CompileError", "ParityError", "CompileResult", "TargetResult", "compile", "PARITY_RTOL", "PARITY_ATOL"]

Progress = Callable[[str], None]
REFERENCE_FILE = "inputs/reference.npz"  # parity inputs + the sparse program's outputs, for `sparsecc verify`


class CompileError(SparseccError, RuntimeError):
    pass


class ParityError(CompileError, VerificationError):
    pass


@dataclass
class TargetResult:
    target: str
    artifact: Any
    checks: list[Any]
    patterns: list[Any]
    parity: list[dict[str, Any]]
    timings: dict[str, float]
    # A backend of another precision (the FP16 tensorrt-bundle) sets its own parity tolerance.
    rtol: float = PARITY_RTOL
    atol: float = PARITY_ATOL

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact.to_dict(),
            "check": [c.to_dict() for c in self.checks],
            "pattern_verification": {
                "ok": all(p.ok for p in self.patterns),
                "layers": [p.to_dict() for p in self.patterns],
            },
            "parity": {
                "ok": all(p["ok"] for p in self.parity),
                "rtol": self.rtol,
                "atol": self.atol,
                "cases": self.parity,
            },
            "timings_s": self.timings,
        }


@dataclass
class CompileResult:
    bundle: Path
    program: ExportedProgram
    report: Any
    targets: dict[str, TargetResult] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    dense_targets: dict[str, TargetResult] = field(default_factory=dict)
    record: Manifest | None = None  # ``manifest`` typed, as `sparsecc.bundle.manifest.read_manifest` reads it


def _input_sets(spec_inputs: Any, make_inputs: Any) -> list[tuple[str, tuple, dict]]:
    args, kwargs = spec_inputs
    sets = [("example", args, kwargs)]
    if make_inputs is not None:
        for b, s in ((3, 5), (1, 9)):
            try:
                a2, k2 = make_inputs(b, s)
            except Exception:  # a model with fixed shapes has no other allowed shape
                continue
            sets.append((f"random batch={b} seq={s}", a2, k2))
    return sets


def _guarded(fn: Callable) -> Callable:
    """Run ``fn`` with SIGINT recorded from the start, so an interrupt swallowed
    anywhere (a torch cleanup callback) still stops the run before the bundle is renamed."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with interrupt_guard():
            return fn(*args, **kwargs)

    return run


@_guarded
def compile(
    model: torch.nn.Module | Any,
    recipe: Recipe | dict | str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    example_args: tuple = (),
    example_kwargs: dict | None = None,
    dynamic_shapes: Any = None,
    targets: Sequence[str] = ("onnx", "executorch"),
    force: bool = False,
    sparse_initializers: bool | None = None,
    make_inputs: Callable | None = None,
    model_name: str = "",
    progress: Progress | None = None,
    mask_progress: Callable[[int, int, str], None] | None = None,
    program: ExportedProgram | None = None,
    dense_reference: bool = True,
    calibration: CalibrationData | None = None,
) -> CompileResult:
    """Compile a model (or a `sparsecc.models.ModelSpec`) into a verified bundle.

    ``recipe=None`` compiles the dense model. ``program``, when given, is the
    model already captured with these inputs (capture is then skipped). ``sparse_initializers`` (ONNX)
    defaults to on when the recipe prunes 67% or more (where COO storage gets
    smaller than dense). Returns what the manifest says, plus the program.
    """

    say = progress or (lambda msg: None)
    spec = None
    if hasattr(model, "model") and hasattr(model, "example_args"):  # a ModelSpec
        spec = model
        model, example_args, example_kwargs = spec.model, spec.example_args, spec.example_kwargs
        dynamic_shapes = dynamic_shapes if dynamic_shapes is not None else spec.dynamic_shapes
        make_inputs = make_inputs or spec.make_inputs
        model_name = model_name or spec.name
    out_dir = Path(out_dir)
    check_replaceable(out_dir, force)  # before any work: --force never deletes a user's folder
    backends = [get_backend(t) for t in targets]  # unknown targets fail before any work
    rec = load_recipe(recipe) if recipe is not None else None
    check_stages(rec.recovery if rec is not None else ())  # a misspelt option fails before the pruning

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if program is None:
        say("capture")
        program = capture(model, example_args, example_kwargs, dynamic_shapes)
    timings["capture"] = time.perf_counter() - t0
    axis_names = dynamic_axis_names(program, model, example_args, example_kwargs, dynamic_shapes)
    symbols = _symbol_names(program, axis_names)

    dense_program = program
    program, report, structured_report, recovery_run = _transform(
        program, rec, spec, calibration, (example_args, example_kwargs or {}), make_inputs, model_name,
        say, mask_progress, timings)
    specs = list(mask_specs(program).values())
    if sparse_initializers is None:
        sparse_initializers = rec is not None and rec.pattern.kind == "unstructured" and rec.sparsity >= 0.67

    input_sets = _reference_outputs(program, (example_args, example_kwargs or {}), make_inputs, symbols)
    options = LowerOptions(sparse_initializers=bool(sparse_initializers), extra={
        "dynamic_axes": axis_names, "model_name": model_name,
        # torch-sparse skips ReLU's exact zeros when the recipe asks (activations: {exact: true})
        "exact_relu": bool(rec is not None and rec.activations is not None and rec.activations.exact),
        # golden data for targets that ship it (tensorrt-bundle)
        "example_inputs": input_sets[0][3], "example_outputs": input_sets[0][4]})

    target_results: dict[str, TargetResult] = {}
    dense_results: dict[str, TargetResult] = {}
    with staged_output(out_dir, force) as tmp:
        stored = _write_program_and_inputs(tmp, program, rec, input_sets)
        for backend in backends:
            tr = _lower_target(backend, program, tmp / backend.name, options, specs, input_sets, symbols, say)
            target_results[backend.name] = tr
            timings[backend.name] = sum(v for k, v in tr.timings.items() if "." not in k)
        if dense_reference and rec is not None:
            dense_sets = _reference_outputs(dense_program, (example_args, example_kwargs or {}), make_inputs, symbols)
            dense_results = _lower_dense(backends, dense_program, tmp / "dense", dense_sets, axis_names, model_name,
                                         symbols, say)
            timings["dense_reference"] = sum(
                v for tr in dense_results.values() for k, v in tr.timings.items() if "." not in k)

        record = _manifest(model_name, rec, program, report, target_results, timings, input_sets, symbols)
        record.parity_inputs = [ParityInput(p.label, p.shapes, s) for p, s in zip(record.parity_inputs, stored)]
        record.masks = [m.to_dict() for m in specs]
        record.structured = structured_report
        record.recovery = ([RecoveryRecord.from_dict(r, "recovery") for r in recovery_run.records]
                           if recovery_run is not None else None)
        _finish_record(record, tmp, model_name, dense_results)
        manifest = write_manifest(tmp, record)  # last: it hashes every other file
    for tr in target_results.values():
        tr.artifact.root = out_dir / tr.target
    for tr in dense_results.values():
        tr.artifact.root = out_dir / "dense" / tr.target
    return CompileResult(out_dir, program, report, target_results, timings, manifest, dense_results, record)


def _transform(program: ExportedProgram, rec: Recipe | None, spec: Any, calibration: CalibrationData | None,
               example: tuple[tuple, dict], make_inputs: Any, model_name: str, say: Callable,
               mask_progress: Any, timings: dict[str, float]) -> tuple[ExportedProgram, Any, Any, Any]:
    """The recipe's transform stage: structured removal or masking, then recovery.

    Returns the program with the sparsity report, the structured report and the
    recovery run (each None where the recipe has no such part); ``timings`` gains
    "sparsify" and, with recovery, "recovery".
    """
    t0 = time.perf_counter()
    if rec is None:
        timings["sparsify"] = time.perf_counter() - t0
        return program, None, None, None
    dense_program, report, structured_report = program, None, None
    if calibration is None:
        if spec is None and recipe_needs_calibration(rec):
            st = rec.structured
            what = (f"structured {'reconstruct: true' if st.reconstruct else 'criterion taylor'}" if st is not None
                    else f"criterion {rec.criterion!r}")
            raise ValueError(f"{what} needs calibration data: pass calibration=... "
                             "or a zoo ModelSpec, whose loader provides it")
        calibration = recipe_calibration(spec, rec, say)
    if rec.structured is not None:
        # Channel / head removal: a physically smaller program, checked against the masked one.
        say("structured pruning")
        verify_sets = [(a, k or {}) for _l, a, k in _input_sets(example, make_inputs)]
        structured_result = prune_structured(program, rec.structured, verify_inputs=verify_sets, progress=say,
                                             calibration=calibration.batches if calibration is not None else None,
                                             reconstruct=rec.structured.reconstruct)
        program, structured_report = structured_result.program, structured_result.report
        if rec.quantize is not None:  # int8 weights of the smaller layers, as sparsify does for masked ones
            say("quantize")
            program = quantize_program(program, rec.quantize, calibration.batches if calibration else None)
    else:
        say("sparsify")
        result = sparsify(program, rec, fold=True, progress=mask_progress, model_name=model_name,
                          calibration=calibration, runtime=False)
        program, report = result.program, result.report
    timings["sparsify"] = time.perf_counter() - t0
    recovery_run = None
    if rec.recovery:
        t0 = time.perf_counter()
        given = None if spec is not None else (calibration.batches if calibration is not None
                                               else [(tuple(example[0]), dict(example[1]))])
        recovery_run = recover(program, dense_program, rec.recovery, spec=spec, batches=given, progress=say)
        program = recovery_run.program
        timings["recovery"] = time.perf_counter() - t0
    if rec.activations is not None or rec.attention is not None:  # last: thresholds see the final weights
        t0 = time.perf_counter()
        program, runtime_record = apply_runtime_sparsity(program, rec, calibration, say)
        if report is not None:
            report.runtime = runtime_record
        timings["runtime_sparsity"] = time.perf_counter() - t0
    return program, report, structured_report, recovery_run


def _write_program_and_inputs(tmp: Path, program: ExportedProgram, rec: Recipe | None, input_sets) -> list[bool]:
    """program.pt2, the example inputs, the parity inputs with reference outputs, the recipe."""
    save_program(program, tmp / "program.pt2")
    (tmp / "inputs").mkdir()
    np.savez(tmp / "inputs" / "example.npz", *[t.numpy() for t in input_sets[0][3]])
    stored = save_reference(tmp / REFERENCE_FILE, [(lab, ins, outs) for lab, _a, _k, ins, outs in input_sets])
    if rec is not None:
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
    return stored


def _finish_record(record: Manifest, tmp: Path, model_name: str, dense_results: dict[str, TargetResult]) -> None:
    """The model file copied in, the dense reference recorded, the bundle README written."""
    record.model_source = _copy_model_file(model_name, tmp)
    if dense_results:
        record.dense_reference = DenseReference("dense/program.pt2", {
            k: TargetRecord.from_dict(v.to_dict(), f"dense_reference.targets.{k}", f"dense/{k}")
            for k, v in dense_results.items()})
    (tmp / "README.md").write_text(bundle_readme(model_name, record.to_dict()))


def _lower_dense(backends, dense_program, folder: Path, dense_sets, axis_names, model_name, symbols,
                 say) -> dict[str, TargetResult]:
    """The unpruned model, lowered the same way into ``dense/``, so `sparsecc bench` can run
    dense and sparse side by side from the bundle alone."""
    folder.mkdir()
    save_program(dense_program, folder / "program.pt2")
    options = LowerOptions(sparse_initializers=False, extra={
        "dynamic_axes": axis_names, "model_name": model_name,
        "example_inputs": dense_sets[0][3], "example_outputs": dense_sets[0][4]})
    results = {}
    for backend in backends:
        say(f"dense reference: {backend.name}")
        results[backend.name] = _lower_target(backend, dense_program, folder / backend.name, options, [], dense_sets,
                                              symbols, lambda msg: None)
    return results


def _reference_outputs(program: ExportedProgram, example: tuple, make_inputs: Any,
                       symbols: dict[str, str] | None = None) -> list[tuple]:
    """(label, args, kwargs, flat inputs, flat outputs of ``program``) per input set.

    The sets: the example, the smallest and largest allowed shapes of the
    declared dynamic dims, and the zoo's own fresh inputs when it has them.
    """
    sets = _input_sets(example, make_inputs)
    sets[1:1] = shape_variants(program, example[0], example[1], symbols)
    out = []
    with torch.no_grad():
        module = program.module()
        for label, a, k in sets:
            out.append((label, a, k, flat_inputs(program, a, k or {}), tensor_leaves(module(*a, **(k or {})))))
    return out


def _copy_model_file(model_name: str, tmp: Path) -> ModelSource | None:
    """A ``file.py:factory`` model travels inside the bundle (``model/file.py``), recorded relative to it."""
    path_text, _, factory = model_name.rpartition(":")
    if not path_text.endswith(".py") or not Path(path_text).is_file():
        return None
    (tmp / "model").mkdir()
    shutil.copy2(path_text, tmp / "model" / Path(path_text).name)
    return ModelSource(f"model/{Path(path_text).name}", factory, model_name)


def _lower_target(backend, program, folder: Path, options, specs, input_sets, symbols, say) -> TargetResult:
    """Check, lower, verify the pattern in the artifact, and check parity, for one target."""
    tt: dict[str, float] = {}
    say(f"{backend.name}: lower")
    t0 = time.perf_counter()
    artifact = backend.lower(program, folder, options)
    artifact.inputs = [_rename_dims(t, symbols) for t in artifact.inputs]
    artifact.outputs = [_rename_dims(t, symbols) for t in artifact.outputs]
    tt["lower"] = time.perf_counter() - t0
    tt.update({f"lower.{k}": v for k, v in artifact.meta.get("timings_s", {}).items()})
    checks = backend.check_artifact(program, artifact)
    say(f"{backend.name}: verify pattern")
    t0 = time.perf_counter()
    patterns = backend.verify_pattern(artifact, specs)
    tt["verify_pattern"] = time.perf_counter() - t0
    broken = [p for p in patterns if not p.ok]
    if broken:
        lines = "; ".join(f"{p.fqn} in {p.location}: {p.reason}" for p in broken[:5])
        raise CompileError(f"{backend.name}: sparsity pattern broken in the artifact: {lines}")
    say(f"{backend.name}: parity")
    rtol = getattr(backend, "parity_rtol", PARITY_RTOL)
    atol = getattr(backend, "parity_atol", PARITY_ATOL)
    t0 = time.perf_counter()
    runner = backend.load(artifact)
    parity, exact_module = [], None
    for label, a, k, flat_in, want in input_sets:
        try:
            got = runner(flat_in)
        except Exception as e:
            if label == "example":
                raise
            # Another shape the target cannot run (an ExecuTorch upper bound, say) is
            # recorded as skipped, not passed off as checked.
            parity.append({"inputs": label, "ok": True, "skipped": f"{type(e).__name__}: {str(e)[:200]}"})
            continue
        case = compare(got, want, label, rtol, atol, inputs=flat_in)
        if not case["ok"] and (rtol, atol) == (PARITY_RTOL, PARITY_ATOL):  # fp32 rounding, or a real difference?
            say(f"{backend.name}: parity on {label} inputs, again against float64")
            exact_module = exact_module or float64_module(program)
            case = referee(case, got, want, float64_outputs(exact_module, a, k), rtol, atol, inputs=flat_in)
        parity.append(case)
    tt["parity"] = time.perf_counter() - t0
    bad = [c for c in parity if not c["ok"]]
    if bad:
        worst = max((o for c in bad for o in c["outputs"] if not o["ok"]), key=lambda o: o.get("max_abs_err") or 0.0)
        exact = {n["index"]: n for n in bad[0].get("float64", [])}.get(worst["index"])
        raise ParityError(
            f"{backend.name}: outputs differ from the PyTorch program beyond "
            f"rtol={rtol}, atol={atol} on {bad[0]['inputs']} inputs: output {worst['index']} "
            f"max abs err {worst.get('max_abs_err')}, relative to the output's scale {worst.get('rel_err')}"
            + (f"; against the float64 program it is off by {exact['artifact_err']:.3g}, PyTorch's fp32 by "
               f"{exact['pytorch_err']:.3g}" if exact else "")
        )
    return TargetResult(backend.name, artifact, checks, patterns, parity, tt, rtol, atol)


def _symbol_names(program: ExportedProgram, axis_names: dict[str, dict[int, str]]) -> dict[str, str]:
    """torch.export's shape symbols (``s77``) to the user's Dim names (``batch``)."""
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    out = {}
    for inp, axes in axis_names.items():
        val = by_name[inp].meta.get("val")
        for axis, name in axes.items():
            d = val.shape[axis]
            if isinstance(d, torch.SymInt):
                out[str(d.node.expr)] = name
    return out


def _rename_dims(t: Any, symbols: dict[str, str]) -> Any:
    return TensorSpec(t.name, tuple(symbols.get(d, d) if isinstance(d, str) else d for d in t.shape), t.dtype)


def _manifest(name, rec, program, report, targets, timings, input_sets, sym: dict[str, str]) -> Manifest:
    # ``sym`` comes from the captured program: sparsify may rename a placeholder (``input`` -> ``input_1``).
    inputs = [s.to_dict() for s in user_input_specs(program)]
    for i in inputs:
        i["shape"] = [sym.get(d, d) if isinstance(d, str) else d for d in i["shape"]]
    return Manifest(
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model=name,
        machine=machine_info(),
        recipe=rec.to_dict() if rec is not None else None,
        inputs=inputs,
        outputs=user_output_names(program),
        dynamic_dims={sym.get(str(k), str(k)): [int(v.lower), None if not v.upper.is_finite else int(v.upper)]
                      for k, v in program.range_constraints.items()},
        parity_inputs=[ParityInput(label, {i["name"]: list(t.shape) for i, t in zip(inputs, flat)})
                       for label, _a, _k, flat, _o in input_sets],
        reference=REFERENCE_FILE,
        sparsity=report.to_dict() if report is not None else None,
        targets={k: TargetRecord.from_dict(v.to_dict(), f"targets.{k}", k) for k, v in targets.items()},
        timings_s=timings,
    )
