"""`sparsecc models`, `recipes`, `inspect` and `groups`: what there is before anything is pruned."""

from __future__ import annotations

from typing import Optional

import typer

from sparsecc.cli.app import JSON_OPTION, SHAPES_OPTION, app, capture_model, emit, out

__all__: list[str] = []

MODEL_ARG = typer.Argument(..., metavar="MODEL", help="Zoo name or path/to/file.py:factory.")


@app.command("models")
def models_cmd(json_out: Optional[str] = JSON_OPTION) -> None:
    """List the zoo's models."""
    from sparsecc.models import PRETRAINED_MODELS, REFERENCE_MODELS

    out.print("reference (random init): " + ", ".join(REFERENCE_MODELS), highlight=False)
    out.print("pretrained (sparsecc[models]): " + ", ".join(PRETRAINED_MODELS), highlight=False)
    emit({"reference": list(REFERENCE_MODELS), "pretrained": list(PRETRAINED_MODELS)})


@app.command("recipes", short_help="List the built-in recipes.")
def recipes_cmd(json_out: Optional[str] = JSON_OPTION) -> None:
    """List the built-in recipes (use one with -r NAME from any folder)."""
    from rich.table import Table

    from sparsecc.recipes import builtin_recipes, describe

    found = {name: describe(path) for name, path in builtin_recipes().items()}
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column("name", style="bold", no_wrap=True)
    t.add_column("description")
    for name, text in found.items():
        t.add_row(name, text)
    out.print(t)
    emit({name: {"path": str(path), "description": found[name]} for name, path in builtin_recipes().items()})


@app.command(short_help="Prunable layers of MODEL: shape, params, FLOPs (or activation sparsity).")
def inspect(model: str = MODEL_ARG, shapes: Optional[str] = SHAPES_OPTION,
            activations: bool = typer.Option(
                False, "--activations",
                help="Instead: run calibration data and report, per linear layer, the share of zero and "
                     "near-zero inputs and the |x| thresholds for 40/50/70% activation sparsity."),
            samples: int = typer.Option(16, "--samples", min=1, metavar="N",
                                        help="With --activations: calibration batches to run."),
            json_out: Optional[str] = JSON_OPTION) -> None:
    """List the prunable layers of MODEL with shape, params and FLOPs per call.

    With --activations, measure where activation sparsity exists before choosing
    it: the inputs of every linear layer on the model's calibration data (never
    its evaluation data), exact zeros (after ReLU), near zeros (|x| <= 1% of the
    layer's RMS input), and the magnitude thresholds that would zero 40, 50 or
    70% of them.
    """
    if activations:
        _inspect_activations(model, shapes, samples)
        return
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.flows.report import inspect_table

    spec, program = capture_model(model, shapes)
    analysis = find_prunable_weights(program)
    out.print(inspect_table(analysis, title=f"prunable layers - {spec.name}"))
    for s in analysis.skipped:
        out.print(f"not prunable: {s.fqn}: {s.reason}", style="dim", markup=False, highlight=False)
    emit({
        "model": spec.name,
        "weights": [w.to_dict() for w in analysis.weights],
        "not_prunable": {s.fqn: s.reason for s in analysis.skipped},
    })


def _inspect_activations(model: str, shapes: Optional[str], samples: int) -> None:
    from sparsecc.cli.app import activity
    from sparsecc.flows.report import activation_table
    from sparsecc.plan.activation_sparsity import measure_activations
    from sparsecc.plan.calibrate import calibration_for

    spec, program = capture_model(model, shapes)
    with activity(spec.name) as act:
        act.step(f"reading calibration data ({samples} batches)")
        data = calibration_for(spec, samples)
        act.step("running it through every linear layer")
        stats = measure_activations(program, data.batches,
                                    progress=lambda i, n: act.detail(f"batch {i}/{n}"))
    out.print(activation_table(stats, title=f"linear-layer inputs - {spec.name} ({samples} calibration batches)"))
    emit({"model": spec.name, "samples": samples, "layers": [s.to_dict() for s in stats]})


@app.command("groups", short_help="Structured-pruning groups of MODEL.")
def groups_cmd(
    model: str = MODEL_ARG,
    ratio: float = typer.Option(0.5, "--ratio", metavar="FLOAT",
                                help="Fraction of units to remove in each prunable group."),
    units: str = typer.Option("channel,head", "--units", metavar="KINDS",
                              help="Unit kinds: channel, head, strided (comma-separated)."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Structured-pruning groups of MODEL: what is removed together, and why.

    Each group is one space of indices (conv channels, FFN neurons, attention
    heads, GQA groups) shared by every parameter slice listed in it; a group
    that reaches a model input or output, a normalisation's statistics, or an
    op without a coupling rule is kept whole and the reason is printed.
    """
    from sparsecc.passes.structured import find_dependency_groups, plan_structured_pruning

    spec, program = capture_model(model)
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, ratio, analysis=analysis,
                                   units=[u.strip() for u in units.split(",") if u.strip()])
    out.print(plan.table(), markup=False, highlight=False)
    emit({"model": spec.name, **plan.to_dict()})
