"""`sparsecc sweep` and `sensitivity`: quality against sparsity, per model and per layer."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import app, capture_model, console, eval_options, fail, float_list, mask_progress, out, step_progress

__all__: list[str] = []


@app.command("sensitivity")
def sensitivity_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    out_path: Path = typer.Option(..., "--out", "-o", help="sensitivity table to write (JSON)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="recipe whose layers to sweep (default: every layer, unstructured)"),
    levels: str = typer.Option("0.3,0.5,0.7,0.9", "--levels", help="comma-separated sparsities to prune each layer at"),
    scores: str = typer.Option("magnitude", "--scores", help="criterion that picks the pruned entries (magnitude, wanda, ...)"),
    samples: int = typer.Option(8, "--samples", help="calibration batches from the model's calibration data"),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="tokens per batch (language models)"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Prune each layer of MODEL alone at a few sparsities; write the calibration-loss increase per layer.

    The table feeds the recipe budget `{method: sensitivity, table: OUT}`,
    which gives more sparsity to the layers whose loss rises least. It costs
    one loss evaluation over the calibration batches per layer and level.
    """
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.plan.budgets import parse_budget, sensitivity_sweep
    from sparsecc.plan.calibrate import CalibrationData, collect_stats
    from sparsecc.plan.criteria import needs_calibration
    from sparsecc.data.datasets import calibration_inputs
    from sparsecc.plan.recipe import RecipeError, load_recipe, plan_masks

    try:
        try:
            level_list = [float(v) for v in levels.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--levels takes comma-separated sparsities, got {levels!r}") from None
        try:
            level_list = list(parse_budget({"method": "sensitivity", "levels": level_list, "scores": scores}).levels)
        except RecipeError as e:  # same checks as the recipe's budget, reported as options
            flag = "--levels" if e.key.endswith("levels") else "--scores"
            raise ValueError(f"{flag}: {str(e).split(': ', 1)[1]}") from None
        if out_path.exists() and not force:
            raise FileExistsError(f"{out_path} exists; pass --force to replace it")
        rec = load_recipe(recipe if recipe is not None else {"pattern": "unstructured", "sparsity": 0.5})
        spec, program = capture_model(model)
        analysis = find_prunable_weights(program)
        plan = plan_masks(rec, analysis)
        with console.status(f"drawing {samples} calibration batches"):
            data = CalibrationData(calibration_inputs(spec, samples, seq_len))
        stats = None
        if needs_calibration(scores):
            with console.status(f"collecting calibration statistics for {scores}"):
                stats = collect_stats(program, data, [s.fqn for s in plan.specs], needs_calibration(scores))
        t0 = time.perf_counter()
        with mask_progress() as progress:
            table = sensitivity_sweep(program, plan.specs, analysis, data, levels=level_list, scores=scores,
                                      stats=stats, progress=progress, model=spec.name)
        table.save(out_path)
    except Exception as e:
        raise fail(e) from e
    from rich.table import Table

    t = Table(title=f"calibration loss increase when one layer is pruned - {spec.name} (base loss {table.base_loss:.4g})")
    t.add_column("layer")
    for v in table.levels:
        t.add_column(f"@{v:g}", justify="right")
    for fqn, row in sorted(table.delta.items(), key=lambda kv: -kv[1][-1]):
        t.add_row(fqn, *(f"{d:.4g}" for d in row))
    out.print(t)
    out.print(f"wrote {out_path} ({len(table.delta)} layers x {len(table.levels)} levels in {time.perf_counter() - t0:.1f}s); "
              f"use it with `budget: {{method: sensitivity, table: {out_path}}}`")



@app.command("sweep")
def sweep_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory (a real pretrained model)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="folder for sweep.json, sweep.md, sweep.png"),
    criteria: str = typer.Option("magnitude", "--criteria", "-c", help="comma-separated criteria (magnitude, random, wanda, sparsegpt, taylor, ...)"),
    patterns: str = typer.Option("unstructured", "--patterns", "-p", help="comma-separated patterns: unstructured, 2:4, 4:8, 8x8, channel (N:M: one point each)"),
    sparsities: str = typer.Option("0.3,0.5,0.7", "--sparsities", "-s", help="comma-separated sparsities for the patterns that take one"),
    task: Optional[str] = typer.Option(None, "--task", help="evaluation task (default: the model's first; see `sparsecc eval --help`)"),
    recipe: Optional[Path] = typer.Option(None, "--recipe", "-r", help="base recipe (layers, budget, calibration); its pattern/sparsity/criterion are replaced per point"),
    tolerance: float = typer.Option(0.05, "--tolerance", help="quality drop against dense that ends the essential sparsity (0.05 = 5%%)"),
    calibration_samples: Optional[int] = typer.Option(None, "--calibration-samples", help="calibration batches for calibrated criteria (default: the recipe's, else 64)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="evaluate only the first N perplexity windows / a seeded subset of N digits (faster sweeps)"),
    window: int = typer.Option(256, "--window", help="perplexity: tokens per window"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Quality against sparsity: prune MODEL at every criterion x pattern x sparsity and evaluate each.

    Writes a table (Markdown + JSON) and a plot, and the essential sparsity of
    each curve: the largest sparsity whose quality stays within --tolerance of
    dense before the first point that drops further.
    """
    from sparsecc.flows.sweep import sweep, write_sweep

    try:
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        crits = [c.strip() for c in criteria.split(",") if c.strip()]
        pats = [p.strip() for p in patterns.split(",") if p.strip()]
        levels = float_list(sparsities, "--sparsities")
        with console.status(f"loading {model}"):
            from sparsecc.models.resolve import resolve_model

            spec = resolve_model(model)
        with step_progress() as progress:
            result = sweep(spec, criteria=crits, patterns=pats, sparsities=levels, task=task, recipe=recipe,
                           tolerance=tolerance, options=eval_options(window, None, limit),
                           calibration_samples=calibration_samples, progress=progress,
                           say=lambda msg: console.print(msg, highlight=False, markup=False))
        write_sweep(result, out_dir, force=force)
    except Exception as e:
        raise fail(e) from e
    sys.stdout.write(result.markdown())
    out.print(f"wrote {out_dir}/sweep.json, sweep.md, sweep.png")
    if any(p.error for p in result.points):
        raise typer.Exit(code=1)
