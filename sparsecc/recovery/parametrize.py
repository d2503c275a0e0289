"""A sparse program's masks on the user's own ``nn.Module``, for fine-tuning in their own loop.

    masks = apply_plan(model, sparse_program)   # weight -> weight * mask (torch parametrize)
    ... the user's training loop: masked entries get zero gradient and stay zero ...
    remove_plan(model)                           # weights become plain tensors, zeros baked in
    program = weights_into_program(sparse_program, model)  # same graph and specs, trained weights
    sparsecc.compile(spec, None, "bundle/", program=program)

`apply_plan` takes a program (its masks come from `masks_of`) or a mapping
``{fqn: bool mask}``; the FQNs are the module's own parameter names, which is
what `torch.export` keeps. A name or shape that does not match fails before
anything is changed.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch.export import ExportedProgram
from torch.nn.utils import parametrize

from sparsecc.errors import UsageError
from sparsecc.recovery.base import assert_zeros_kept, masks_of, program_with_weights

__all__ = ["MaskParametrization", "apply_plan", "remove_plan", "weights_into_program"]


class MaskParametrization(torch.nn.Module):
    """``weight * mask``: masked entries read as zero and get zero gradient."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask.to(weight.dtype)


def _split(module: torch.nn.Module, fqn: str) -> tuple[torch.nn.Module, str]:
    owner, _, name = fqn.rpartition(".")
    return (module.get_submodule(owner) if owner else module), name


def apply_plan(module: torch.nn.Module, program_or_masks: ExportedProgram | Mapping[str, torch.Tensor],
               ) -> dict[str, torch.Tensor]:
    """Register a `MaskParametrization` on every masked weight of ``module``; returns the masks by FQN."""
    masks = masks_of(program_or_masks) if isinstance(program_or_masks, ExportedProgram) else dict(program_or_masks)
    if not masks:
        raise UsageError("apply_plan: the program carries no mask (sparsify it first)")
    params = dict(module.named_parameters())
    for fqn, mask in masks.items():  # check everything before changing anything
        if fqn not in params:
            near = [n for n in params if n.endswith(fqn.rpartition(".")[2])][:3]
            raise UsageError(f"apply_plan: the module has no parameter {fqn!r} (e.g. {', '.join(near)})")
        if tuple(params[fqn].shape) != tuple(mask.shape):
            raise UsageError(f"apply_plan: {fqn} has shape {tuple(params[fqn].shape)}, "
                             f"its mask {tuple(mask.shape)}")
    for fqn, mask in masks.items():
        owner, name = _split(module, fqn)
        with torch.no_grad():
            getattr(owner, name).masked_fill_(~mask.to(torch.bool), 0)  # the stored value is zero too
        parametrize.register_parametrization(owner, name, MaskParametrization(mask))
    return masks


def remove_plan(module: torch.nn.Module) -> list[str]:
    """Remove every `MaskParametrization` (keeping the masked values); returns the FQNs it touched."""
    done = []
    for owner_name, owner in list(module.named_modules()):
        if not parametrize.is_parametrized(owner):
            continue
        for name in list(owner.parametrizations.keys()):
            if any(isinstance(p, MaskParametrization) for p in owner.parametrizations[name]):
                parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
                done.append(f"{owner_name}.{name}" if owner_name else name)
    return done


def weights_into_program(program: ExportedProgram, module: torch.nn.Module) -> ExportedProgram:
    """``program`` (same graph, same specs) with ``module``'s trained weights; the zeros are checked."""
    if any(parametrize.is_parametrized(m) for m in module.modules()):
        raise UsageError("weights_into_program: call remove_plan(module) first")
    state = module.state_dict()
    missing = [t for t in program.state_dict if t not in state]
    if missing:
        raise UsageError(f"weights_into_program: the module lacks {len(missing)} of the program's tensors, "
                         f"e.g. {missing[:3]}")
    result = program_with_weights(program, state)
    assert_zeros_kept(result, masks_of(program))
    return result
