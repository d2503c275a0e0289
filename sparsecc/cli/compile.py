"""`sparsecc compile`: MODEL + recipe -> a verified deployment bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import (JSON_OPTION, SHAPES_OPTION, activity, app, emit, mask_progress, out, recipe_source,
                              refuse_existing)
from sparsecc.cli.inspect import MODEL_ARG
from sparsecc.errors import UsageError

__all__: list[str] = []

TARGET_HELP = (
    "onnx, executorch, tensorrt-bundle (FP16 ONNX + trtexec build.sh for the "
    "device), tensorrt (engines built here; needs TensorRT and a GPU), "
    "torch-sparse (CPU sparse kernels where they measured faster), onnx-custom-ops "
    "(ONNX with sparsecc's ONNX Runtime custom op where it measured faster), or all = "
    "onnx,executorch; comma-separated."
)


def parse_targets(text: str) -> list[str]:
    """The --target list, each name checked against the registered backends (before any model loads)."""
    from sparsecc.backends.base import available_backends

    import sparsecc.backends  # noqa: F401  (registers every backend)

    targets = ["onnx", "executorch"] if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    known = available_backends()
    unknown = [t for t in targets if t not in known]
    if unknown or not targets:
        raise UsageError(f"--target {text!r}: unknown target {', '.join(unknown) or '(none)'}; "
                         f"choose from {', '.join(known)} or all")
    return targets


@app.command("compile", short_help="MODEL + recipe -> a verified deployment bundle.")
def compile_cmd(
    model: str = MODEL_ARG,
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", metavar="RECIPE",
                                         help="Recipe YAML file or built-in name; omit to compile the dense model."),
    target: str = typer.Option("all", "--target", "-t", metavar="TARGETS", help=TARGET_HELP),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Bundle folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it is an earlier bundle."),
    sparse_initializers: Optional[bool] = typer.Option(
        None, "--sparse-initializers/--dense-initializers",
        help="ONNX: store weights as sparse tensors where smaller (default: on at 67 percent "
             "unstructured or more)."),
    dense_reference: bool = typer.Option(
        True, "--dense-reference/--no-dense-reference",
        help="Also lower the unpruned model into DIR/dense/ for side-by-side benchmarks "
             "(about doubles the compile time)."),
    shapes: Optional[str] = SHAPES_OPTION,
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Capture, sparsify, lower and verify MODEL into a deployment bundle.

    The bundle holds each target's artifact, the sparse PyTorch program,
    example inputs, a README, and manifest.json with versions, per-layer
    sparsity, what each target does with each layer, the pattern re-checked
    inside each artifact, and parity against the PyTorch program. Nothing is
    written unless every check passes.
    """
    from sparsecc.cli.shapes import apply_shapes, parse_shapes
    from sparsecc.flows.compile import compile as run_compile
    from sparsecc.flows.report import bundle_summary
    from sparsecc.models.resolve import resolve_model
    from sparsecc.plan.recipe import load_recipe

    # Everything the user typed is checked before the model loads (which can take a minute).
    targets = parse_targets(target)
    rec = load_recipe(recipe_source(recipe)) if recipe is not None else None
    wanted = parse_shapes(shapes)
    refuse_existing(out_dir, force)
    with activity(model) as act:
        act.step("loading the model")
        spec = apply_shapes(resolve_model(model), wanted)
        act.label = f"compile {spec.name}"
        with mask_progress(act) as masks:
            result = run_compile(
                spec, rec, out_dir, targets=targets, force=force, sparse_initializers=sparse_initializers,
                dense_reference=dense_reference, progress=act.step, mask_progress=masks,
            )
    if result.report is not None:
        result.report.print(out)
    sm = result.record.structured_summary
    if sm:  # channels / heads removed: how much smaller, and checked exact
        out.print(f"structured: {sm['pruned_groups']}/{sm['prunable_groups']} prunable groups pruned, "
                  f"{sm['removed_units']} units removed; MACs x{sm['macs_ratio']:.3f}, "
                  f"params x{sm['params_ratio']:.3f}; shrunk == channel-masked on every input set (fp32, 1e-5)",
                  highlight=False)
    out.print(bundle_summary(result.record, str(out_dir)))
    out.print(f"wrote {out_dir} (manifest.json, README.md); stages: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()), highlight=False)
    emit({"model": spec.name, "out": str(out_dir), "targets": targets, "timings_s": result.timings,
          "manifest": result.manifest})
