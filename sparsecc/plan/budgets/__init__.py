"""Layer-wise budgets: how much of each layer to prune so that the whole hits a target.

A recipe's ``sparsity`` is a global target; a budget decides how it is spread
over the planned layers. Methods (recipe key ``budget``):

- ``uniform``: every layer at the target.
- ``global``: one score threshold across layers, on the scores of a criterion
  (``scores``: magnitude by default, wanda with calibration statistics). Raw
  scores of different layers are compared as they are (``normalize: none``,
  the classic global magnitude pruning); ``normalize: rms`` divides each
  layer's scores by their root mean square first, so that a layer's scale
  does not decide its share. Block and channel units are ranked by the root
  mean square of their entries' scores, so units of different sizes compare.
- ``erk``: Erdős–Rényi-Kernel. Density ∝ (Σ dims) / (Π dims) of the weight's
  shape (raised to ``power``), rescaled to the target; layers whose density
  would exceed 1 stay dense and the rest are re-solved.
- ``owl``: outlier-weighted layerwise sparsity (Yin et al. 2023). A layer's
  (or block's) outlier ratio D is the fraction of its Wanda scores above
  ``m`` × their mean; sparsity = target + λ − 2λ·(D − min D)/(max D − min D),
  so in [target − λ, target + λ] with the most outlier-heavy layer densest,
  then shifted so that the parameter-weighted mean is the target.
- ``ecoflap``: ECoFLaP-style (Sung et al. 2023). A block's (or layer's) score
  is a zeroth-order estimate of the loss gradient's size along a random
  direction, |L(W + εz) − L(W − εz)| / 2ε (two forward passes per draw of z);
  every block keeps at least (1 − max_sparsity) of its weights and the rest
  of the kept weights are shared in proportion to the scores.
- ``sensitivity``: each layer alone is pruned at a few ``levels`` and the
  calibration loss increase is measured (`sensitivity_sweep`, or a table
  saved by ``sparsecc sensitivity``); sparsities then minimise the summed
  (convexified, piecewise-linear) loss increase under the target, so less
  sensitive layers get more sparsity.

Every method hits the target exactly: the planned layers' pruned counts
(a layer prunes ``round(units × sparsity)`` units, as `sparsecc.masks.pruned_units`)
sum to ``round(target × params)``. Continuous sparsities are turned into
integer counts by a largest-remainder step and each layer's sparsity is set
to count / units. With block or channel patterns a layer prunes whole units,
so the total is the achievable count nearest to the target (off by less than
one unit). N:M layers have the sparsity of their pattern and layers whose
sparsity a recipe override sets keep it; both are left out of the
re-allocation and the target is met over the other layers.

One module per method (`uniform`, `global_threshold`, `erk`, `owl`,
`ecoflap`, `sensitivity`); `options` holds `Budget` and its parsing, `common`
what the methods share, `solve` the exact solve and rounding, `allocation`
the `allocate` entry point. Import the public names from here.
"""

from __future__ import annotations

from .allocation import Allocation, LayerBudget, allocate
from .common import block_of
from .erk import erk_coefficient
from .options import BUDGET_METHODS, Budget, BudgetError, needs_calibration, needs_program, needs_stats, parse_budget
from .sensitivity import SensitivityTable, sensitivity_sweep

__all__ = [
    "BUDGET_METHODS",
    "Budget",
    "BudgetError",
    "LayerBudget",
    "Allocation",
    "SensitivityTable",
    "parse_budget",
    "allocate",
    "needs_stats",
    "needs_calibration",
    "needs_program",
    "sensitivity_sweep",
    "erk_coefficient",
    "block_of",
]
