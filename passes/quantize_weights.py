"""QuantizeWeightsPass: fake-quantize each prunable weight to per-output-channel int8, keeping its zeros.

Each weight becomes ``q * scale`` (``q`` int8 in ``[-127, 127]``, ``scale``
per output channel, zero point 0; see `sparsecc.kernels.int8`). The program
still runs in float and stays differentiable (distillation can fine-tune it
afterwards; re-run the pass to put the weights back on the grid). Per weight:

- the scales become a constant ``<fqn>_qscale`` (float32, one per output channel);
- the weight node's ``NodeInfo.extra["quant"]`` records the int8 grid:
  ``{"dtype": "int8", "scale": "<fqn>_qscale", "axis": output_axis,
  "activations": "dynamic" | "static", "act_scale": float | None}``.

A zero stays an exact zero (``round(0 / s) = 0``), so every pattern survives;
``ensures`` re-checks it with the pattern check of each weight's `MaskSpec`,
and that every weight lies on its int8 grid.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.core.pass_infra import PassBase, PassResult
from sparsecc.core.program import ProgramEditor, placeholders_by_target, state_tensor
from sparsecc.kernels.int8 import QMAX, quantize_per_channel
from sparsecc.plan.masks import check_pattern
from sparsecc.plan.quantize_options import QuantizeError, QuantizeOptions, activation_absmax

__all__ = ["QuantizeWeightsPass", "quantize_program", "scale_target", "quant_info", "int8_grid"]

_ROLES = ("linear", "conv", "matmul")


def scale_target(fqn: str) -> str:
    """The constant holding the per-channel scales of weight ``fqn``."""
    return f"{fqn}_qscale"


def quant_info(program: ExportedProgram, fqn: str) -> dict | None:
    """The ``quant`` record of weight ``fqn`` (None when it is not quantized)."""
    node = placeholders_by_target(program).get(fqn)
    info = get_node_info(node) if node is not None else None
    return None if info is None else info.extra.get("quant")


def int8_grid(program: ExportedProgram, fqn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q int8, scale)`` of a quantized weight, read back from the program (``q * scale`` is the weight)."""
    rec = quant_info(program, fqn)
    if rec is None:
        raise KeyError(f"{fqn} is not quantized (no quant record on its node)")
    w = state_tensor(program, fqn).detach()
    scale = state_tensor(program, rec["scale"])
    shape = [1] * w.dim()
    shape[rec["axis"]] = -1
    return torch.round(w / scale.reshape(shape)).to(torch.int8), scale


class QuantizeWeightsPass(PassBase):
    """Fake-quantize every matmul/conv weight (or those in ``fqns``) to int8; record the grid and scales.

    ``act_absmax`` maps a weight FQN to ``max|x|`` of the activation it
    multiplies (needed for ``activations: static``, from
    `sparsecc.plan.quantize_options.activation_absmax`); the recorded static
    scale is that over 127.
    """

    def __init__(self, options: QuantizeOptions | None = None, fqns: set[str] | None = None,
                 act_absmax: Mapping[str, float] | None = None):
        self.options = options or QuantizeOptions()
        self.fqns = set(fqns) if fqns is not None else None
        self.act_absmax = dict(act_absmax or {})
        self._done: list[str] = []

    def _targets(self, program: ExportedProgram):
        out = []
        for w in find_prunable_weights(program).weights:
            if w.role not in _ROLES or w.tied or (self.fqns is not None and w.fqn not in self.fqns):
                continue
            if state_tensor(program, w.fqn).dtype != torch.float32:
                continue
            out.append(w)
        return out

    def requires(self, program: ExportedProgram) -> None:
        targets = self._targets(program)
        if self.fqns is not None:
            missing = self.fqns - {w.fqn for w in targets}
            if missing:
                raise ValueError(f"cannot quantize {sorted(missing)}: not float32 matmul/conv weights of this program")
        if self.options.activations == "static":
            missing = {w.fqn for w in targets} - set(self.act_absmax)
            if missing:
                raise ValueError(f"activations: static needs a calibrated scale for {sorted(missing)[:3]}"
                                 f"{' ...' if len(missing) > 3 else ''}")
        for w in targets:
            if quant_info(program, w.fqn) is not None and scale_target(w.fqn) in program.constants:
                continue  # re-quantizing (after fine-tuning) reuses the constant
            if scale_target(w.fqn) in program.constants or scale_target(w.fqn) in program.state_dict:
                raise ValueError(f"{w.fqn}: the program already has a lifted input {scale_target(w.fqn)!r}")

    def call(self, program: ExportedProgram) -> PassResult:
        targets = self._targets(program)
        ed = ProgramEditor(program)
        self._done = []
        for w in targets:
            node = ed.node_for_target(w.fqn)
            with self.at(node):
                q, scale = quantize_per_channel(ed.tensor(w.fqn), w.output_axis)
                shape = [1] * q.dim()
                shape[w.output_axis] = -1
                ed.set_tensor(w.fqn, (q.to(torch.float32) * scale.reshape(shape)).contiguous())
                target = scale_target(w.fqn)
                if target in ed.constants:
                    ed.set_tensor(target, scale)
                else:
                    ed.add_constant(target, scale, name="c_" + target.replace(".", "_"))
                act = self.act_absmax.get(w.fqn)
                info = get_node_info(node)
                extra = dict(info.extra) if info is not None else {}
                extra["quant"] = {"dtype": self.options.weights, "scale": target, "axis": w.output_axis,
                                  "activations": self.options.activations,
                                  "act_scale": None if act is None else float(act) / QMAX}
                set_node_info(node, extra=extra)
                self._done.append(w.fqn)
        return PassResult(ed.finish(), bool(self._done))

    def ensures(self, program: ExportedProgram) -> None:
        by_target = placeholders_by_target(program)
        weights = find_prunable_weights(program).by_fqn()
        for fqn in self._done:
            q, scale = int8_grid(program, fqn)
            rec = quant_info(program, fqn)
            shape = [1] * q.dim()
            shape[rec["axis"]] = -1
            w = state_tensor(program, fqn)
            if not torch.equal(q.to(torch.float32) * scale.reshape(shape), w) or int(q.abs().max()) > QMAX:
                raise AssertionError(f"{fqn}: weight is not on its int8 grid after quantization")
            info = get_node_info(by_target[fqn])
            spec = info.spec if info is not None else None
            if spec is None or info.mask:  # an unfolded mask holds the pattern, and is not quantized
                continue
            pw = weights[fqn]
            why, _ = check_pattern(w.detach(), spec.pattern, spec.target, pw.output_axis, pw.reduction_axis)
            if why is not None:
                raise AssertionError(f"{fqn}: pattern {spec.pattern} broken by quantization: {why}")


def quantize_program(program: ExportedProgram, options: QuantizeOptions, batches=None) -> ExportedProgram:
    """Run `QuantizeWeightsPass` as a recipe's ``quantize:`` section asks (static scales from ``batches``)."""
    absmax = None
    if options.activations == "static":
        if not batches:
            raise QuantizeError("quantize.activations: static needs calibration data (the program's "
                                "calibration batches) to measure activation ranges")
        fqns = [w.fqn for w in find_prunable_weights(program).weights if w.role in _ROLES and not w.tied]
        absmax = activation_absmax(program, fqns, batches)
    return QuantizeWeightsPass(options, act_absmax=absmax)(program).program
