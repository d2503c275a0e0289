"""`sparsecc verify BUNDLE`: hashes, patterns in each artifact, parity against the stored outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sparsecc.cli.app import JSON_OPTION, activity, app, emit, out

__all__: list[str] = []


@app.command("verify")
def verify_cmd(
    bundle: Path = typer.Argument(..., metavar="BUNDLE", help="Bundle folder written by `sparsecc compile`."),
    target: Optional[str] = typer.Option(None, "--target", "-t", metavar="TARGETS",
                                         help="Comma-separated targets to check (default: all in the bundle)."),
    parity: bool = typer.Option(True, "--parity/--no-parity", help="Also rerun each artifact on the stored inputs."),
    json_out: Optional[str] = JSON_OPTION,
) -> None:
    """Check a bundle: file hashes, each weight's pattern in each artifact, parity.

    Exits 4 naming the file, layer and group at fault when anything changed.
    """
    from sparsecc.flows.verify_bundle import require_verified, verify_bundle

    targets = [t.strip() for t in target.split(",") if t.strip()] if target else None
    with activity(str(bundle)) as act:
        report = verify_bundle(bundle, targets=targets, parity=parity, progress=act.step)
    for name, checks in report.patterns.items():
        n_ok = sum(1 for c in checks if c["ok"])
        cases = report.parity.get(name, [])
        out.print(f"{name}: pattern {n_ok}/{len(checks)} layers ok; parity "
                  f"{sum(1 for c in cases if c['ok'])}/{len(cases)} input sets ok", highlight=False)
    for what, why in report.skipped.items():
        out.print(f"not checked: {what}: {why}", style="dim", markup=False, highlight=False)
    out.print(f"files: {report.hashes.describe()}", markup=False, highlight=False)
    require_verified(report)
    out.print(f"{bundle}: verified in {report.seconds:.1f}s", highlight=False)
    emit(report.to_dict())
