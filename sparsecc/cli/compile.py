"""`sparsecc compile`: MODEL + recipe -> a verified deployment bundle."""

from __future__ import annotations


from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import app, console, fail, mask_progress, out

__all__: list[str] = []


@app.command("compile")
def compile_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="recipe YAML; omit to compile the dense model"),
    target: str = typer.Option("all", "--target", "-t", help="onnx, executorch, tensorrt-bundle (FP16 ONNX + trtexec build.sh for the device), tensorrt (engines built here; needs TensorRT and a GPU), torch-sparse (the PyTorch program with CPU sparse kernels on the layers where they measured faster), or all = onnx,executorch (comma-separated list allowed)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="bundle folder to write"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
    sparse_initializers: Optional[bool] = typer.Option(
        None, "--sparse-initializers/--dense-initializers",
        help="ONNX: store weights as sparse tensors where smaller (default: on for >=67%% unstructured)"),
    dense_reference: bool = typer.Option(
        True, "--dense-reference/--no-dense-reference",
        help="also lower the unpruned model into BUNDLE/dense/ for side-by-side benchmarks"),
) -> None:
    """Capture, sparsify, lower and verify MODEL into a deployment bundle.

    The bundle holds each target's artifact, the sparse PyTorch program,
    example inputs, a README, and manifest.json with versions, per-layer
    sparsity, what each target does with each layer, the pattern re-checked
    inside each artifact, and parity against the PyTorch program. Nothing is
    written unless every check passes.
    """
    from sparsecc.flows.compile import compile as run_compile
    from sparsecc.models.resolve import resolve_model
    from sparsecc.flows.report import bundle_summary

    targets = ["onnx", "executorch"] if target == "all" else [t.strip() for t in target.split(",") if t.strip()]
    try:
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        with console.status(f"loading {model}"):
            spec = resolve_model(model)
        with console.status("compiling") as status, mask_progress() as mask_progress:
            result = run_compile(
                spec, recipe, out_dir, targets=targets, force=force, sparse_initializers=sparse_initializers,
                dense_reference=dense_reference,
                progress=lambda msg: status.update(f"compiling {spec.name}: {msg}"), mask_progress=mask_progress,
            )
    except Exception as e:
        raise fail(e) from e
    if result.report is not None:
        result.report.print(out)
    if result.manifest.get("structured"):  # channels / heads removed: how much smaller, and checked exact
        sm = result.manifest["structured"]["summary"]
        out.print(f"structured: {sm['pruned_groups']}/{sm['prunable_groups']} prunable groups pruned, "
                  f"{sm['removed_units']} units removed; MACs x{sm['macs_ratio']:.3f}, params x{sm['params_ratio']:.3f}; "
                  "shrunk == channel-masked on every input set (fp32, 1e-5)")
    out.print(bundle_summary(result.manifest, str(out_dir)))
    out.print(f"wrote {out_dir} (manifest.json, README.md); stages: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items()))
