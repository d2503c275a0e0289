"""`sparsecc eval`: quality on real data, sparse beside dense."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import (JSON_OPTION, activity, app, capture_model, emit, eval_options, mask_progress, out,
                              recipe_source, step_progress)
from sparsecc.errors import UsageError

__all__: list[str] = []


def _tasks(task: str, spec) -> list[str]:
    from sparsecc.quality.evaluate import default_tasks

    tasks = default_tasks(spec) if task == "auto" else [t.strip() for t in task.split(",") if t.strip()]
    if not tasks:
        raise UsageError(f"no evaluation task fits {spec.name!r}: evaluation needs a real pretrained "
                         "model (minilm, smollm2, efficientnet-lite0, mnist)")
    return tasks


@app.command("eval", short_help="Quality on real data, sparse beside dense.")
def eval_cmd(
    target: str = typer.Argument(..., metavar="BUNDLE_OR_MODEL",
                                 help="A bundle folder (sparsecc compile), or MODEL."),
    task: str = typer.Option("auto", "--task", metavar="TASKS",
                             help="perplexity, lee-similarity, photo-agreement, fashion-probe, digit-accuracy "
                                  "(comma-separated), or auto: every task that fits the model."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", metavar="RECIPE",
                                         help="MODEL only: sparsify with this recipe first (default: the dense "
                                              "program)."),
    backend: Optional[str] = typer.Option(None, "--backend", "-b", metavar="BACKENDS",
                                          help="Bundle only: onnx, executorch, torch (comma-separated; default: "
                                               "all the bundle has)."),
    model: Optional[str] = typer.Option(None, "--model", metavar="MODEL",
                                        help="Bundle only: the model whose tokenizer or normalization to use "
                                             "(default: the manifest's)."),
    window: int = typer.Option(256, "--window", metavar="N", help="Perplexity: tokens per window."),
    stride: Optional[int] = typer.Option(None, "--stride", metavar="N",
                                         help="Perplexity: window stride (default: the window, no overlap)."),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N",
                                        help="Only the first N perplexity windows / a seeded subset of N digits "
                                             "(figures are then not the protocol's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", metavar="N",
                                             help="Items per forward call (default: per task)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the Fashion-MNIST probe subsets."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Measure quality on real data: a sparse model against its dense reference.

    On MODEL: captures it (and sparsifies it with --recipe), then evaluates the
    program against the original dense model. On a bundle: evaluates each
    backend's sparse and dense builds (ONNX Runtime, ExecuTorch, program.pt2),
    each sparse one against the dense one of the same backend. The protocols
    are in docs/evaluation.md and sparsecc/quality/.
    """
    from sparsecc.flows.report import quality_table
    from sparsecc.models.resolve import resolve_model
    from sparsecc.quality.evaluate import evaluate, evaluate_bundle

    opts = eval_options(window, stride, limit, batch_size, seed)
    is_bundle = Path(target).is_dir() and (Path(target) / "manifest.json").is_file()
    if is_bundle and recipe is not None:
        raise UsageError("--recipe applies to MODEL; a bundle is already sparse")
    if not is_bundle and (backend or model):
        raise UsageError(f"--backend/--model apply to a bundle folder (one with manifest.json); "
                         f"{target!r} is not one")
    recipe_path = recipe_source(recipe)
    results = []
    if is_bundle:
        from sparsecc.bundle.reader import Bundle

        with activity(target) as act:
            act.step("loading the model")
            spec = resolve_model(model or Bundle(target).model_ref)  # a copied model file travels in the bundle
            backends = [b.strip() for b in backend.split(",") if b.strip()] if backend else None
            with step_progress(act) as progress:
                for t in _tasks(task, spec):
                    results += evaluate_bundle(target, t, backends=backends, model=spec, options=opts,
                                               progress=progress)
    else:
        from sparsecc.flows.sweep import sparsify_with_calibration

        spec, program = capture_model(target)
        tasks = _tasks(task, spec)
        with activity(spec.name) as act:
            if recipe_path is not None:
                act.step("sparsifying")
                with mask_progress(act) as masks:
                    program = sparsify_with_calibration(program, spec, recipe_path, progress=masks).program
            with step_progress(act) as progress:
                for t in tasks:
                    # A sparse program is compared with the dense model on every metric (a dense row too).
                    ref = spec.model if recipe_path is not None else "auto"
                    r = evaluate(program, t, model=spec, reference=ref, options=opts, progress=progress)
                    r.variant = "sparse" if recipe_path is not None else "dense"
                    results.append(r)
    out.print(quality_table(results, title=f"evaluation - {target}"))
    for r in results:
        if r.details.get("unavailable"):
            text = f"{r.runner} {r.variant} {r.task}: {r.details['unavailable']}"
        elif r.details:
            text = f"{r.runner} {r.variant} {r.task}: " + ", ".join(f"{k}={v}" for k, v in r.details.items())
        else:
            continue
        out.print(text, style="dim", markup=False, highlight=False)
    emit([r.to_dict() for r in results])
