"""Helpers shared by the zoo builders: named dynamic dims, seeded building, the small CNNs' spec."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch.export import Dim

from .base import ModelSpec

# Dim names become the dynamic axis names in ONNX, so every model uses the same two.
BATCH_MAX = 64
SEQ_MAX = 128


def batch_dim(max: int = BATCH_MAX) -> Dim:
    """The dynamic batch axis. Example inputs use batch 2 so it is not specialized."""
    return Dim("batch", min=1, max=max)


def seq_dim(max: int = SEQ_MAX) -> Dim:
    """The dynamic sequence axis (min 2: a length-1 example would be specialized)."""
    return Dim("seq", min=2, max=max)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the block without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randomize_batchnorm(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Give BatchNorm layers non-trivial statistics and affine parameters.

    Freshly built BN layers in eval mode are the identity (mean 0, var 1, weight 1,
    bias 0); random values make folding and parity checks exercise real arithmetic.
    """
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                m.weight.copy_(1.0 + 0.1 * torch.randn(n, generator=gen))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def token_inputs(
    batch: int, seq: int, vocab_size: int, seed: int, pad_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and an attention mask (1 = attend).

    With ``pad_last`` the last row is right-padded to half its length, so masks are
    exercised; every row keeps at least one real token.
    """
    gen = generator(seed)
    ids = torch.randint(0, vocab_size, (batch, seq), generator=gen, dtype=torch.long)
    mask = torch.ones(batch, seq, dtype=torch.long)
    if pad_last and batch > 1:
        mask[-1, max(1, seq // 2) :] = 0
    return ids, mask


def random_cnn_spec(name: str, build: Callable[[], torch.nn.Module], seed: int, description: str) -> ModelSpec:
    """A seeded random-weight CNN on ``[batch, 3, 32, 32]`` images (BatchNorm statistics randomized,
    eval mode), its inputs drawn from ``seed + batch``."""
    with seeded(seed):
        model = build()
    randomize_batchnorm(model, generator(seed + 1))
    model.eval()

    def make_inputs(batch: int, seq: int = 0):
        return (torch.randn(batch, 3, 32, 32, generator=generator(seed + batch)),), {}

    args, _ = make_inputs(2)
    return ModelSpec(name=name, model=model, example_args=args, dynamic_shapes=({0: batch_dim()},),
                     description=description, make_inputs=make_inputs, task="image-classification")
