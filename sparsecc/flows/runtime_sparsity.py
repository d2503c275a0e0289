"""The recipe's run-time sparsity: activation thresholds and block-sparse attention, after the weights.

`apply_runtime_sparsity` runs after the weight masks (so thresholds are
calibrated on the activations of the pruned program, the one that runs) and
before int8 quantization (whose ops the passes would not recognise):

- ``activations:``: measure every linear input on the calibration batches,
  choose the layers, give them the target sparsity (``uniform``) or spread it
  by measured output error (``greedy``), and insert the thresholds;
  ``exact`` is a lowering choice (torch-sparse skips ReLU's zeros) that the
  compile flow passes on;
- ``attention:``: `BlockSparseAttentionPass` with the section's settings.

It returns the program and a record of what it did for the report.
"""

from __future__ import annotations

from typing import Any, Callable

from torch.export import ExportedProgram

from sparsecc.errors import UsageError
from sparsecc.passes.activation_sparsity import ActivationSparsityPass
from sparsecc.passes.block_sparse_attention import BlockSparseAttentionPass
from sparsecc.plan.activation_budget import allocate_sparsity
from sparsecc.plan.activation_sparsity import measure_activations, select_layers, thresholds_for
from sparsecc.plan.calibrate import CalibrationData
from sparsecc.plan.recipe import Recipe

__all__ = ["apply_runtime_sparsity", "GREEDY_BATCHES"]

GREEDY_BATCHES = 4  # calibration batches each greedy step runs (tens of steps x groups forwards)


def apply_runtime_sparsity(program: ExportedProgram, recipe: Recipe, calibration: CalibrationData | None,
                           say: Callable[[str], None] | None = None) -> tuple[ExportedProgram, dict[str, Any]]:
    """``program`` with the recipe's ``activations:`` and ``attention:`` sections applied, and their record."""
    record: dict[str, Any] = {}
    act = recipe.activations
    if act is not None and act.sparsity > 0:
        if calibration is None or not calibration.batches:
            raise UsageError("recipe section 'activations' with a sparsity needs calibration data "
                             "(the model's bundled data, or --calibration)")
        if say:
            say(f"activations: measuring linear inputs on {len(calibration.batches)} calibration batches")
        stats = select_layers(measure_activations(program, calibration.batches), act.layers, act.exclude)
        if act.allocation == "greedy":
            sparsity: float | dict[str, float] = allocate_sparsity(
                program, stats, act.sparsity, calibration.batches[:GREEDY_BATCHES], progress=say)
        else:
            sparsity = act.sparsity
        thresholds = thresholds_for(stats, sparsity)
        program = ActivationSparsityPass(thresholds)(program).program
        record["activations"] = {
            "allocation": act.allocation,
            "layers": {s.fqn: {"sparsity": sparsity[s.fqn] if isinstance(sparsity, dict) else sparsity,
                               "threshold": thresholds[s.fqn], "producer": s.producer} for s in stats},
        }
    if act is not None and act.exact:
        record.setdefault("activations", {})["exact_relu"] = True
    att = recipe.attention
    if att is not None:
        rewrite = BlockSparseAttentionPass(att.block, att.tau, sink=att.sink, reuse=att.reuse,
                                           include=att.include, exclude=att.exclude)
        program = rewrite(program).program
        if not rewrite.rewritten:
            why = "; ".join(f"{k}: {v}" for k, v in list(rewrite.skipped.items())[:3])
            raise UsageError(f"recipe section 'attention': no attention op of this program was rewritten"
                             f"{' (' + why + ')' if why else ' (none found)'}")
        record["attention"] = {**att.to_dict(), "rewritten": list(rewrite.rewritten), "dense": dict(rewrite.skipped)}
        if say:
            say(f"attention: {len(rewrite.rewritten)} call sites block-sparse (tau {att.tau})")
    return program, record
