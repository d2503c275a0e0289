"""`sparsecc sparsify`: the sparse program and its per-layer report, without lowering."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import (JSON_OPTION, SHAPES_OPTION, activity, app, capture_model, emit, one_shot_masks, out,
                              recipe_source, refuse_existing)
from sparsecc.cli.inspect import MODEL_ARG
from sparsecc.errors import SparseccError

__all__: list[str] = []


@app.command(short_help="The sparse program and a per-layer report.")
def sparsify(
    model: str = MODEL_ARG,
    recipe: str = typer.Option(..., "--recipe", "-r", metavar="RECIPE",
                               help="Recipe YAML file or built-in name (sparsecc recipes)."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                                 help="Output folder (program.pt2, report.json, recipe.yaml)."),
    fold: bool = typer.Option(True, "--fold/--no-fold",
                              help="Bake masks into the weights (default) or keep them in the graph."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it exists."),
    shapes: Optional[str] = SHAPES_OPTION,
    distributed: bool = typer.Option(False, "--distributed",
                                     help="Calibrate data-parallel over the torchrun ranks (on by itself when "
                                          "WORLD_SIZE > 1); rank 0 writes DIR."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Sparsify MODEL with RECIPE; write the sparse program and a per-layer report.

    The program is saved with torch.export.save (load it with
    sparsecc.load_program to keep sparsecc's metadata). Under torchrun
    (`torchrun --nproc-per-node N -m sparsecc sparsify ... --distributed`) each
    rank calibrates on its share of the batches and solves its share of the
    layers; the result is the single-process one (see sparsecc.plan.distributed).
    """
    from sparsecc.plan.recipe import load_recipe
    from sparsecc.plan.distributed import start_ranks, world_from_env

    rec = load_recipe(recipe_source(recipe))
    refuse_existing(out_dir, force)
    ranks = start_ranks() if distributed or world_from_env() > 1 else None
    try:
        _run(model, rec, out_dir, fold, force, shapes, ranks)
    except BaseException:
        if ranks is not None:
            ranks.close(wait=False)  # the other ranks fail in their next collective
        raise
    if ranks is not None:
        ranks.close()


def _run(model, rec, out_dir, fold, force, shapes, ranks) -> None:
    import yaml

    from sparsecc.bundle.staging import staged_output
    from sparsecc.core.program import save_program

    spec, program = capture_model(model, shapes)
    with activity(spec.name) as act:
        result = one_shot_masks(act, spec, program, rec, fold=fold, ranks=ranks)
        if ranks is not None and ranks.rank != 0:  # every rank holds the same result; rank 0 writes it
            return
        act.step(f"writing {out_dir}")
        try:
            with staged_output(out_dir, force) as tmp:
                save_program(result.program, tmp / "program.pt2")
                (tmp / "report.json").write_text(result.report.to_json())
                (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
        except OSError as e:
            if isinstance(e, SparseccError):  # staging's own refusal, already worded
                raise
            raise SparseccError(f"cannot write {out_dir}: {e.strerror or e}") from e
    result.report.print(out)
    out.print(f"wrote {out_dir}/program.pt2, report.json, recipe.yaml", highlight=False)
    emit({"model": spec.name, "out": str(out_dir), "report": result.report.to_dict()})
