"""`sparsecc models`, `inspect` and `groups`: what a model holds before anything is pruned."""

from __future__ import annotations

import json

import typer

from sparsecc.cli.app import app, capture_model, fail, out

__all__: list[str] = []


@app.command("models")
def models_cmd() -> None:
    """List the zoo's models."""
    from sparsecc.models import PRETRAINED_MODELS, REFERENCE_MODELS

    out.print("reference (random init): " + ", ".join(REFERENCE_MODELS))
    out.print("pretrained (sparsecc[models]): " + ", ".join(PRETRAINED_MODELS))


@app.command()
def inspect(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """List the prunable layers of MODEL with shape, params and FLOPs per call."""
    from sparsecc.core.analyze import find_prunable_weights
    from sparsecc.flows.report import inspect_table

    try:
        spec, program = capture_model(model)
        analysis = find_prunable_weights(program)
    except Exception as e:
        raise fail(e) from e
    if as_json:
        out.print_json(json.dumps({
            "model": spec.name,
            "weights": [w.to_dict() for w in analysis.weights],
            "not_prunable": {s.fqn: s.reason for s in analysis.skipped},
        }))
        return
    out.print(inspect_table(analysis, title=f"prunable layers - {spec.name}"))
    for s in analysis.skipped:
        out.print(f"[dim]not prunable: {s.fqn}: {s.reason}[/dim]")



@app.command("groups")
def groups_cmd(
    model: str = typer.Argument(..., help="zoo name or path/to/file.py:factory"),
    ratio: float = typer.Option(0.5, "--ratio", help="fraction of units to remove in each prunable group"),
    units: str = typer.Option("channel,head", "--units", help="unit kinds: channel, head, strided (comma-separated)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Structured-pruning dependency groups of MODEL: the slices removed together, and why a group stays whole.

    Each group is one space of indices (conv channels, FFN neurons, attention
    heads, GQA groups) shared by every parameter slice listed in it; a group
    that reaches a model input or output, a normalisation's statistics, or an
    op without a coupling rule is kept whole and the reason is printed.
    """
    from sparsecc.passes.structured import find_dependency_groups, plan_structured_pruning

    try:
        spec, program = capture_model(model)
        analysis = find_dependency_groups(program)
        plan = plan_structured_pruning(program, ratio, analysis=analysis,
                                       units=[u.strip() for u in units.split(",") if u.strip()])
    except Exception as e:
        raise fail(e) from e
    if as_json:
        out.print_json(json.dumps({"model": spec.name, **plan.to_dict()}))
        return
    out.print(plan.table(), markup=False, highlight=False)
