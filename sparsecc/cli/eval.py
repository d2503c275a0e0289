"""`sparsecc eval`: quality on real data, sparse beside dense."""

from __future__ import annotations


from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import app, capture_model, console, eval_options, fail, mask_progress, out, step_progress, write_json_atomic

__all__: list[str] = []


@app.command("eval")
def eval_cmd(
    target: str = typer.Argument(..., help="a bundle folder written by `sparsecc compile`, or MODEL (zoo name or path/to/file.py:factory)"),
    task: str = typer.Option("auto", "--task", help="perplexity, lee-similarity, photo-agreement, fashion-probe, digit-accuracy (comma-separated), or auto: every task that fits the model"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="MODEL only: sparsify with this recipe first (default: evaluate the dense program)"),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", help="bundle only: onnx, executorch, torch (comma-separated; default: all the bundle has)"),
    model: Optional[str] = typer.Option(None, "--model", help="bundle only: the model whose tokenizer/normalization to use (default: the manifest's)"),
    window: int = typer.Option(256, "--window", help="perplexity: tokens per window"),
    stride: Optional[int] = typer.Option(None, "--stride", help="perplexity: window stride (default: the window, no overlap)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N perplexity windows / a seeded subset of N digits (default: all; figures are then not the protocol's)"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="items per forward call (default: per task, within the bundle's dynamic dims)"),
    seed: int = typer.Option(0, "--seed", help="seed of the Fashion-MNIST probe subsets"),
    as_json: Optional[Path] = typer.Option(None, "--json", help="also write the results to this JSON file"),
) -> None:
    """Measure quality on real data: a sparse model against its dense reference.

    On MODEL: captures it (and sparsifies it with --recipe), then evaluates the
    program against the original dense model. On a bundle: evaluates each
    backend's sparse and dense builds (ONNX Runtime, ExecuTorch, program.pt2),
    each sparse one against the dense one of the same backend. The protocols
    are in the README (Evaluation) and in sparsecc/evaluate.py.
    """
    from sparsecc.quality.evaluate import default_tasks, evaluate, evaluate_bundle, results_table

    try:
        opts = eval_options(window, stride, limit, batch_size, seed)
        is_bundle = Path(target).is_dir() and (Path(target) / "manifest.json").is_file()
        if is_bundle and recipe is not None:
            raise ValueError("--recipe applies to MODEL; a bundle is already sparse")
        if not is_bundle and (backend or model):
            raise ValueError(f"--backend/--model apply to a bundle folder (one with manifest.json); {target!r} is not one")
        results = []
        with step_progress() as progress:
            if is_bundle:
                from sparsecc.bundle.reader import Bundle
                from sparsecc.models.resolve import resolve_model

                with console.status(f"loading {model or Bundle(target).model}"):
                    spec = resolve_model(model or Bundle(target).model)
                tasks = default_tasks(spec) if task == "auto" else [t.strip() for t in task.split(",") if t.strip()]
                backends = [b.strip() for b in backend.split(",") if b.strip()] if backend else None
                for t in tasks:
                    results += evaluate_bundle(target, t, backends=backends, model=spec, options=opts, progress=progress)
            else:
                from sparsecc.flows.sweep import sparsify_with_calibration

                spec, program = capture_model(target)
                tasks = default_tasks(spec) if task == "auto" else [t.strip() for t in task.split(",") if t.strip()]
                if not tasks:
                    raise ValueError(f"no evaluation task fits {spec.name!r}: evaluation needs a real pretrained "
                                     "model (minilm, smollm2, efficientnet-lite0, mnist)")
                if recipe is not None:
                    with mask_progress() as mask_progress:
                        program = sparsify_with_calibration(program, spec, recipe, progress=mask_progress).program
                for t in tasks:
                    # A sparse program is compared with the dense model on every metric (a dense perplexity too).
                    ref = spec.model if recipe is not None else "auto"
                    r = evaluate(program, t, model=spec, reference=ref, options=opts, progress=progress)
                    r.variant = "sparse" if recipe is not None else "dense"
                    results.append(r)
        if as_json is not None:
            write_json_atomic(as_json, [r.to_dict() for r in results])
    except Exception as e:
        raise fail(e) from e
    out.print(results_table(results, title=f"evaluation - {target}"))
    for r in results:
        if r.details.get("unavailable"):
            out.print(f"[dim]{r.runner} {r.variant} {r.task}: {r.details['unavailable']}[/dim]")
        elif r.details:
            out.print(f"[dim]{r.runner} {r.variant} {r.task}: "
                      + ", ".join(f"{k}={v}" for k, v in r.details.items()) + "[/dim]")
    if as_json is not None:
        out.print(f"wrote {as_json}")
