"""`sparsecc sparsify`: the sparse program and its per-layer report, without lowering."""

from __future__ import annotations


from pathlib import Path

import typer

from sparsecc.cli.app import app, capture_model, console, fail, mask_progress, out

__all__: list[str] = []


@app.command()
def sparsify(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    recipe: Path = typer.Option(..., "--recipe", "-r", help="recipe YAML (see README: Recipes)"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="output folder (program.pt2, report.json, recipe.yaml)"),
    fold: bool = typer.Option(True, "--fold/--no-fold", help="bake masks into weights (default) or keep them in the graph"),
    force: bool = typer.Option(False, "--force", help="replace OUT if it exists"),
) -> None:
    """Sparsify MODEL with RECIPE; write the sparse program and a per-layer report.

    The program is saved with torch.export.save (load it with
    sparsecc.load_program to keep sparsecc's metadata).
    """
    import yaml

    from sparsecc.flows.sparsify import recipe_needs_calibration
    from sparsecc.flows.sparsify import sparsify as run_sparsify
    from sparsecc.bundle.staging import staged_output
    from sparsecc.plan.calibrate import calibration_for
    from sparsecc.core.program import save_program
    from sparsecc.plan.recipe import load_recipe

    try:
        rec = load_recipe(recipe)
        if out_dir.exists() and not force:
            raise FileExistsError(f"{out_dir} exists; pass --force to replace it")
        spec, program = capture_model(model)
        calibration = None
        if recipe_needs_calibration(rec):
            with console.status(f"loading {rec.calibration.samples} calibration batches"):
                calibration = calibration_for(spec, rec.calibration.samples, rec.calibration.seq_len)
        with mask_progress() as progress:
            result = run_sparsify(program, rec, fold=fold, progress=progress, model_name=spec.name,
                                  calibration=calibration)
        with staged_output(out_dir, force) as tmp:
            save_program(result.program, tmp / "program.pt2")
            (tmp / "report.json").write_text(result.report.to_json())
            (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
    except Exception as e:
        raise fail(e) from e
    result.report.print(out)
    out.print(f"wrote {out_dir}/program.pt2, report.json, recipe.yaml")
