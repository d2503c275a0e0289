"""Quantization-aware distillation of int8 weights: steps run on the int8 values with a straight-through gradient,
the latent float weights keep training, and the result holds exactly the int8 values training saw."""

from __future__ import annotations

import torch

from sparsecc.flows.sparsify import sparsify
from sparsecc.kernels.int8 import quantize_per_channel
from sparsecc.passes.quantize_weights import int8_grid, quant_info
from sparsecc.recovery import RecoveryOptions, get_method, masks_of
from sparsecc.recovery.base import assert_zeros_kept
from sparsecc.recovery.qat import Int8StraightThrough, int8_weights

from ._models import mlp_batches, mlp_program


def _fake_quant(w: torch.Tensor, axis: int) -> torch.Tensor:
    q, scale = quantize_per_channel(w, axis)
    shape = [1] * w.dim()
    shape[axis] = -1
    return q.float() * scale.reshape(shape)


def test_a_step_sees_int8_values_and_its_gradient_reaches_the_latent_weight():
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    latent = lin.weight.detach().clone()
    x = torch.randn(4, 16)
    ste = Int8StraightThrough(lin, {"weight": 0})
    with ste:
        assert torch.equal(lin.weight, _fake_quant(latent, 0))
        lin(x).square().sum().backward()
    assert torch.equal(lin.weight, latent)  # the latent weight is back ...
    wq = _fake_quant(latent, 0).requires_grad_(True)
    torch.nn.functional.linear(x, wq, lin.bias.detach()).square().sum().backward()
    torch.testing.assert_close(lin.weight.grad, wq.grad)  # ... holding the gradient taken at the int8 values


def _quantized_sparse():
    dense = mlp_program()
    return dense, sparsify(dense, {"pattern": "2:4", "quantize": "int8"}, fold=True).program


def test_distillation_trains_quantization_aware_and_returns_the_int8_values():
    dense, sparse = _quantized_sparse()
    axes = int8_weights(sparse)
    assert axes and set(axes) == {f for f in sparse.state_dict if quant_info(sparse, f) is not None}
    opts = RecoveryOptions("distill", steps=12, lr=1e-2, loss="mse")
    result = get_method("distill")(sparse, dense, mlp_batches(4), opts, None)
    assert result.details["qat_int8_weights"] == len(axes)
    assert_zeros_kept(result.program, masks_of(sparse))
    changed = 0
    for fqn, axis in axes.items():
        w = result.program.state_dict[fqn]
        q, scale = int8_grid(result.program, fqn)  # scales of the program before training
        torch.testing.assert_close(w, _fake_quant(w, axis), rtol=0, atol=0)  # on a (new) int8 grid
        changed += int(not torch.equal(q.float() * scale.reshape([-1] + [1] * (w.dim() - 1)), w))
    assert changed  # training moved the weights
    assert result.loss_after < result.loss_before


def test_qat_off_returns_the_latent_float_weights():
    dense, sparse = _quantized_sparse()
    opts = RecoveryOptions("distill", steps=12, lr=1e-2, loss="mse", extra={"qat": False})
    result = get_method("distill")(sparse, dense, mlp_batches(4), opts, None)
    assert result.details["qat_int8_weights"] == 0
    off_grid = [f for f, axis in int8_weights(sparse).items()
                if not torch.equal(result.program.state_dict[f], _fake_quant(result.program.state_dict[f], axis))]
    assert off_grid  # post-training quantization is left to the flow (sparsecc.flows.recover)
