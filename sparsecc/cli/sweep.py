"""`sparsecc sweep` and `sensitivity`: quality against sparsity, per model and per layer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import (JSON_OPTION, activity, app, capture_model, emit, eval_options, float_list,
                              mask_progress, out, recipe_source, refuse_existing, step_progress)
from sparsecc.cli.inspect import MODEL_ARG
from sparsecc.errors import SparseccError, UsageError

__all__: list[str] = []


def _levels(levels: str, scores: str) -> list[float]:
    from sparsecc.plan.budgets import parse_budget
    from sparsecc.plan.recipe import RecipeError

    level_list = float_list(levels, "--levels")
    try:
        return list(parse_budget({"method": "sensitivity", "levels": level_list, "scores": scores}).levels)
    except RecipeError as e:  # same checks as the recipe's budget, reported as options
        flag = "--levels" if e.key.endswith("levels") else "--scores"
        raise UsageError(f"{flag}: {str(e).split(': ', 1)[1]}") from None


@app.command("sensitivity", short_help="Loss increase per layer at a few sparsities.")
def sensitivity_cmd(
    model: str = MODEL_ARG,
    out_path: Path = typer.Option(..., "--out", "-o", metavar="FILE", help="Sensitivity table to write (JSON)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", metavar="RECIPE",
                                         help="Recipe whose layers to sweep (default: every layer, unstructured)."),
    levels: str = typer.Option("0.3,0.5,0.7,0.9", "--levels", metavar="S[,S]",
                               help="Sparsities to prune each layer at (comma-separated)."),
    scores: str = typer.Option("magnitude", "--scores", metavar="CRITERION",
                               help="Criterion that picks the pruned entries (magnitude, wanda, ...)."),
    samples: int = typer.Option(8, "--samples", metavar="N", help="Calibration batches from the model's data."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", metavar="N", help="Tokens per batch (language models)."),
    force: bool = typer.Option(False, "--force", help="Replace FILE if it exists."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Prune each layer alone at a few sparsities; write the loss increase per layer.

    The table feeds the recipe budget {method: sensitivity, table: FILE},
    which gives more sparsity to the layers whose loss rises least. It costs
    one loss evaluation over the calibration batches per layer and level.
    """
    from rich.table import Table

    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.data import calibration_inputs
    from sparsecc.plan.budgets import sensitivity_sweep
    from sparsecc.plan.calibrate import CalibrationData, collect_stats
    from sparsecc.plan.criteria import needs_calibration
    from sparsecc.plan.recipe import load_recipe, plan_masks

    level_list = _levels(levels, scores)
    refuse_existing(out_path, force)
    path = recipe_source(recipe)
    rec = load_recipe(path if path is not None else {"pattern": "unstructured", "sparsity": 0.5})
    spec, program = capture_model(model)
    analysis = find_prunable_weights(program)
    plan = plan_masks(rec, analysis)
    with activity(spec.name) as act:
        act.step(f"drawing {samples} calibration batches")
        data = CalibrationData(calibration_inputs(spec, samples, seq_len))
        stats = None
        if needs_calibration(scores):
            act.step(f"collecting calibration statistics for {scores}")
            stats = collect_stats(program, data, [s.fqn for s in plan.specs], needs_calibration(scores))
        act.step("pruning one layer at a time")
        with mask_progress(act) as progress:
            table = sensitivity_sweep(program, plan.specs, analysis, data, levels=level_list, scores=scores,
                                      stats=stats, progress=progress, model=spec.name)
        try:
            table.save(out_path)
        except OSError as e:
            raise SparseccError(f"cannot write {out_path}: {e.strerror or e}") from e
        took = act.elapsed
    t = Table(title=f"calibration loss increase when one layer is pruned - {spec.name} "
                    f"(base loss {table.base_loss:.4g})")
    t.add_column("layer")
    for v in table.levels:
        t.add_column(f"@{v:g}", justify="right")
    for fqn, row in sorted(table.delta.items(), key=lambda kv: -kv[1][-1]):
        t.add_row(fqn, *(f"{d:.4g}" for d in row))
    out.print(t)
    out.print(f"wrote {out_path} ({len(table.delta)} layers x {len(table.levels)} levels in {took:.1f}s); "
              f"use it with `budget: {{method: sensitivity, table: {out_path}}}`", markup=False, highlight=False)
    emit({"model": spec.name, "out": str(out_path), "base_loss": table.base_loss, "levels": list(table.levels),
          "delta": table.delta})


@app.command("sweep", short_help="Quality against sparsity, per criterion/pattern.")
def sweep_cmd(
    model: str = MODEL_ARG,
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR", help="Folder for sweep.json, .md, .png."),
    criteria: str = typer.Option("magnitude", "--criteria", "-c", metavar="CRITERIA",
                                 help="Comma-separated criteria (magnitude, random, wanda, sparsegpt, ...)."),
    patterns: str = typer.Option("unstructured", "--patterns", "-p", metavar="PATTERNS",
                                 help="Comma-separated patterns: unstructured, 2:4, 4:8, 8x8, channel "
                                      "(N:M is one point)."),
    sparsities: str = typer.Option("0.3,0.5,0.7", "--sparsities", "-s", metavar="S[,S]",
                                   help="Sparsities for the patterns that take one."),
    task: Optional[str] = typer.Option(None, "--task", metavar="TASK",
                                       help="Evaluation task (default: the model's first; see eval --help)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", metavar="RECIPE",
                                         help="Base recipe (layers, budget, calibration); its pattern, sparsity "
                                              "and criterion are replaced per point."),
    tolerance: float = typer.Option(0.05, "--tolerance", metavar="FRACTION",
                                    help="Quality drop against dense that ends the essential sparsity "
                                         "(0.05 = 5 percent)."),
    calibration_samples: Optional[int] = typer.Option(None, "--calibration-samples", metavar="N",
                                                      help="Batches for calibrated criteria (default: the "
                                                           "recipe's, else 64)."),
    limit: Optional[int] = typer.Option(None, "--limit", metavar="N",
                                        help="Only the first N perplexity windows / N digits (faster)."),
    window: int = typer.Option(256, "--window", metavar="N", help="Perplexity: tokens per window."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it exists."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", flag_value="local",
                                      help="Run the grid points as Ray tasks on the cluster at ADDRESS "
                                           "(HOST:PORT, ray://HOST:PORT, auto); --ray alone starts one here."),
    ray_cpus: float = typer.Option(1.0, "--ray-cpus", metavar="N", help="CPUs each Ray task reserves."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Quality against sparsity: every criterion x pattern x sparsity, evaluated.

    Writes a table (Markdown + JSON) and a plot, and the essential sparsity of
    each curve: the largest sparsity whose quality stays within --tolerance of
    dense before the first point that drops further.
    """
    from sparsecc.flows.sweep import sweep, write_sweep
    from sparsecc.models.resolve import resolve_model

    if ray_cpus <= 0:
        raise UsageError("--ray-cpus must be positive")

    refuse_existing(out_dir, force)
    crits = [c.strip() for c in criteria.split(",") if c.strip()]
    pats = [p.strip() for p in patterns.split(",") if p.strip()]
    levels = float_list(sparsities, "--sparsities")
    path = recipe_source(recipe)
    with activity(model) as act:
        act.step("loading the model")
        spec = resolve_model(model)
        with step_progress(act) as progress:
            # Ray workers resolve the model themselves from its name or file reference.
            result = sweep(model if ray else spec, criteria=crits, patterns=pats, sparsities=levels, task=task, recipe=path,
                           tolerance=tolerance, options=eval_options(window, None, limit),
                           calibration_samples=calibration_samples, progress=progress, say=act.step,
                           ray=ray, ray_cpus=ray_cpus)
        write_sweep(result, out_dir, force=force)
    out.file.write(result.markdown())
    out.print(f"wrote {out_dir}/sweep.json, sweep.md, sweep.png", highlight=False)
    failed = [p for p in result.points if p.error]
    emit({"model": spec.name, "out": str(out_dir), "points": [p.__dict__ for p in result.points]})
    if failed:
        raise SparseccError(f"{len(failed)} of {len(result.points)} sweep points failed; see {out_dir}/sweep.md")
