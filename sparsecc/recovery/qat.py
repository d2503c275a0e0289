"""Quantization-aware training of int8 weights with a straight-through estimator.

A program quantized by a recipe's ``quantize:`` holds its weights on a
per-output-channel int8 grid (`sparsecc.passes.QuantizeWeightsPass`). Training
them in float and quantizing once at the end (post-training quantization)
lets the rounding undo part of what training found. Here every training step
runs forward and backward on the weights as they will ship, quantized from
the current float ("latent") weights with the same quantizer
(`sparsecc.kernels.int8.quantize_per_channel`: symmetric, scale = absmax / 127
per channel), and the gradient taken there updates the latent weights
unchanged (the straight-through estimator). The latent weights are back in
place before the optimizer step, so checkpoints, masks and optimizer state
see only them; the final quantization (`sparsecc.flows.recover`) is then the
very rounding that training saw. Zeros stay zeros (``round(0 / s) = 0``).
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.export import ExportedProgram

from sparsecc.kernels.int8 import quantize_per_channel
from sparsecc.passes.quantize_weights import quant_info

__all__ = ["Int8StraightThrough", "int8_weights"]


def int8_weights(program: ExportedProgram) -> dict[str, int]:
    """``{weight FQN: output axis}`` of the program's int8-quantized weights."""
    return {fqn: rec["axis"] for fqn in program.state_dict if (rec := quant_info(program, fqn)) is not None}


class Int8StraightThrough:
    """Swap a module's int8 weights to their quantized values for a step, then back to the latent ones.

    ``with ste: loss = ...; loss.backward()`` runs forward and backward on the
    quantized weights; on leaving, the latent weights return and keep the gradient
    computed at the quantized ones.
    """

    def __init__(self, module: torch.nn.Module, axes: Mapping[str, int]) -> None:
        params = dict(module.named_parameters())
        missing = sorted(set(axes) - set(params))
        if missing:
            raise KeyError(f"int8 weights {missing[:3]} are not parameters of the module being trained")
        self.weights = [(params[fqn], axis) for fqn, axis in axes.items()]
        self._latent: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.weights)

    def __enter__(self) -> "Int8StraightThrough":
        self._latent = []
        with torch.no_grad():
            for p, axis in self.weights:
                self._latent.append(p.detach().clone())
                q, scale = quantize_per_channel(p, axis)
                shape = [1] * p.dim()
                shape[axis] = -1
                p.copy_(q.to(p.dtype) * scale.reshape(shape))
        return self

    def __exit__(self, *exc: object) -> None:
        with torch.no_grad():
            for (p, _), latent in zip(self.weights, self._latent):
                p.copy_(latent)
        self._latent = []
