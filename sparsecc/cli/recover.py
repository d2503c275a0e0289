"""`sparsecc recover`: MODEL + recipe -> sparse program, then the recipe's recovery stages."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import (JSON_OPTION, SHAPES_OPTION, activity, app, capture_model, emit, one_shot_masks, out,
                              recipe_source, refuse_existing)
from sparsecc.cli.inspect import MODEL_ARG
from sparsecc.errors import SparseccError, UsageError

__all__: list[str] = []


def stages_from(rec, method: Optional[str], steps: Optional[int], lr: Optional[float], data: Optional[str],
                samples: Optional[int], checkpoint_dir: Optional[Path]):
    """The recipe's recovery stages, or one stage from --method; the other flags override every stage."""
    import dataclasses

    from sparsecc.plan.recovery_options import parse_recovery

    stages = parse_recovery({"method": method}, "--method") if method else rec.recovery
    if not stages:
        raise UsageError("the recipe has no recovery: section; add one or pass --method "
                         "(reconstruct, block-tune, distill, learned-mask, sr-ste)")
    flags = {"steps": steps, "lr": lr, "data": data, "samples": samples,
             "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None}
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return tuple(dataclasses.replace(s, **given) for s in stages)
    except UsageError as e:
        raise UsageError(f"{e} (from the command line)") from None


@app.command("recover")
def recover_cmd(
    model: str = MODEL_ARG,
    recipe: str = typer.Option(..., "--recipe", "-r", metavar="RECIPE",
                               help="Recipe YAML file or built-in name; its recovery: section says what runs."),
    out_dir: Path = typer.Option(..., "--out", "-o", metavar="DIR",
                                 help="Output folder (program.pt2, recovery.json, recipe.yaml)."),
    method: Optional[str] = typer.Option(None, "--method", help="One stage instead of the recipe's section."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps of every stage."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate of every stage."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Training data: calibration, synthetic, English prose: prose (sentences for "
                             "encoders), paragraphs, wiki, noised-paragraphs (15% of the words replaced at random), "
                             "cropped-paragraphs (a random run of words of each) "
                             "(sparsecc.data.prose), glosses: WordNet's definitions (sparsecc.data.glosses), "
                             "several joined by '+' (paragraphs+glosses), or for ImageNet classifiers "
                             "stamps: cut-out photos pasted on calibration-photo crops (sparsecc.data.stamps), "
                             "gcompris: crops of photos of animals, tools and buildings (sparsecc.data.gcompris), "
                             "gcompris-mix: those crops blended in pairs (mixup)."),
    samples: Optional[int] = typer.Option(None, "--samples", help="Training samples of every stage."),
    checkpoint_dir: Optional[Path] = typer.Option(
        None, "--checkpoint-dir", metavar="DIR", help="Checkpoints here; a rerun resumes where Ctrl-C stopped."),
    force: bool = typer.Option(False, "--force", help="Replace DIR if it exists."),
    shapes: Optional[str] = SHAPES_OPTION,
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Sparsify MODEL with RECIPE, then recover its quality: reconstruction (per layer or per block),
    distillation, learned masks.

    Progress shows loss, tokens per second and time left. With --checkpoint-dir,
    Ctrl-C writes a checkpoint and exits 130; the same command resumes and
    gives the result of an uninterrupted run. Compile the result with
    `sparsecc compile` and the same recipe, or load DIR/program.pt2.
    """
    import json

    import yaml

    from sparsecc.bundle.staging import staged_output
    from sparsecc.core.program import save_program
    from sparsecc.flows.recover import check_stages, recover
    from sparsecc.plan.recipe import load_recipe

    rec = load_recipe(recipe_source(recipe))
    stages = stages_from(rec, method, steps, lr, data, samples, checkpoint_dir)
    check_stages(stages)
    refuse_existing(out_dir, force)
    spec, dense = capture_model(model, shapes)
    with activity(spec.name) as act:
        sparse = one_shot_masks(act, spec, dense, rec).program
        run = recover(sparse, dense, stages, spec=spec, progress=act.step)
        act.step(f"writing {out_dir}")
        try:
            with staged_output(out_dir, force) as tmp:
                save_program(run.program, tmp / "program.pt2")
                (tmp / "recovery.json").write_text(json.dumps(run.records, indent=2, default=str))
                (tmp / "recipe.yaml").write_text(yaml.safe_dump(rec.to_dict(), sort_keys=False))
        except OSError as e:
            if isinstance(e, SparseccError):
                raise
            raise SparseccError(f"cannot write {out_dir}: {e.strerror or e}") from e
    for r in run.records:
        out.print(f"{r['method']:12s} {r['steps']:>5} steps  data {r['data']:12s} loss {r['loss_before']:.4g} -> "
                  f"{r['loss_after']:.4g}  {r['seconds']:.1f}s  {r['tokens']} tokens", highlight=False)
    out.print(f"wrote {out_dir}/program.pt2, recovery.json, recipe.yaml", highlight=False)
    emit({"model": spec.name, "out": str(out_dir), "recovery": run.records})
