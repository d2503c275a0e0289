"""Calibration: run real inputs through a captured program and collect what criteria need.

Criteria that look at activations (Wanda, SparseGPT) need, per prunable
weight, statistics of the activation that multiplies it. sparsecc collects
them by executing the program's graph node by node (`GraphRunner`) and
reading each consumer's activation operand as it is computed, so no module
hooks are needed and functional models work the same way.

Statistics are per weight, in the column order of the weight viewed as
``as_matrix(weight, output_axis, reduction_axis).reshape(out, -1)`` (the view
every pattern uses): for a linear ``[out, in]`` the columns are input
features; for a conv ``[Cout, Cin/g, kh, kw]`` they are ``(kh, kw, cin)``.

- ``rows``: activation rows seen (tokens, or output pixels x images for convs);
- ``act_sq``: ``[K]``, sum over rows of ``x_j**2`` (Wanda's ``||X_j||^2``);
- ``hessian``: ``[K, K]``, sum over rows of ``x x^T`` (SparseGPT's ``X X^T``);
- ``taylor``: weight-shaped RMS over batches of ``W * dL/dW``.

Grouped convolutions keep one set per group: ``act_sq`` is ``[groups, K_g]``
and ``hessian`` ``[groups, K_g, K_g]``. Weights that read the same activation
(q, k and v of one attention block) share one statistics object, so each
Hessian is accumulated once.

Sequential calibration (`sequential_solve`) prunes each weight on inputs
produced by the already-pruned weights before it, in a single pass over the
graph: all batches run up to the consumer where a weight's statistics are
complete, the weight is solved there, and the pass continues with the new
value. This is SparseGPT's "true sequential" order (inside a decoder block,
o_proj sees the outputs of pruned q/k/v) at the cost of one forward pass,
where the block-by-block protocol of the SparseGPT and Wanda reference code
runs every block twice (once to collect, once to recompute with the pruned
weights). Memory stays bounded by the live statistics and the activations
alive at the current node.

The pieces: `calibration_data` (batches, objective), `taps` (which activation
multiplies a weight), `graph_runner` (executing the graph), `activation_stats`
(`collect_stats`), `sequential` (`sequential_solve`), `gradient_stats`
(`objective_loss`, `gradient_stats`); this module is their public entry point.
"""

from __future__ import annotations

from typing import Any

from sparsecc.plan.activation_stats import collect_stats
from sparsecc.plan.calibration_data import STAT_KINDS, CalibrationData, CalibrationError
from sparsecc.plan.gradient_stats import gradient_stats, objective_loss
from sparsecc.plan.graph_runner import GraphRunner, block_key, stacked
from sparsecc.plan.sequential import sequential_solve
from sparsecc.plan.taps import activation_matrix, tap_for

__all__ = [
    "STAT_KINDS",
    "CalibrationError",
    "CalibrationData",
    "calibration_for",
    "collect_stats",
    "sequential_solve",
    "gradient_stats",
    "objective_loss",
    "block_key",
]

# The graph runner and taps under the names recovery code imports them by.
_GraphRunner = GraphRunner
_activation_matrix = activation_matrix
_stacked = stacked
_tap_for = tap_for


def calibration_for(spec: Any, samples: int = 64, seq_len: int | None = None) -> CalibrationData:
    """Calibration data for a zoo `ModelSpec`, from `sparsecc.data.calibration_inputs`."""
    from sparsecc.data import calibration_inputs

    return CalibrationData(calibration_inputs(spec, samples, seq_len))
