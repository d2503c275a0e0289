"""The model zoo: small reference architectures and loaders for real pretrained models.

Every entry is a zero-argument callable returning a `ModelSpec` (model in eval mode,
example inputs, dynamic shapes). Reference models are random-init with a fixed seed
and need only torch (the ``hf-*`` ones need transformers); pretrained models need
``pip install 'sparsecc[models]'``.
"""

from __future__ import annotations

from typing import Callable

from .base import ModelSpec
from .bert import build_bert
from .hf_tiny import build_hf_bert_tiny, build_hf_llama_tiny
from .llama import build_llama
from .mlp import build_mlp
from .mobilenet import build_mobilenet
from .pretrained import load_efficientnet_lite0, load_minilm, load_mnist, load_smollm2
from .resnet import build_resnet
from .vit import build_vit

__all__ = [
    "ModelSpec",
    "ZOO",
    "REFERENCE_MODELS",
    "PRETRAINED_MODELS",
    "get_model",
    "list_models",
]

ZOO: dict[str, Callable[..., ModelSpec]] = {
    "mlp": build_mlp,
    "resnet": build_resnet,
    "mobilenet": build_mobilenet,
    "vit": build_vit,
    "bert": build_bert,
    "llama": build_llama,
    "hf-bert-tiny": build_hf_bert_tiny,
    "hf-llama-tiny": build_hf_llama_tiny,
    "minilm": load_minilm,
    "efficientnet-lite0": load_efficientnet_lite0,
    "smollm2": load_smollm2,
    "mnist": load_mnist,
}

REFERENCE_MODELS: tuple[str, ...] = (
    "mlp",
    "resnet",
    "mobilenet",
    "vit",
    "bert",
    "llama",
    "hf-bert-tiny",
    "hf-llama-tiny",
)
PRETRAINED_MODELS: tuple[str, ...] = ("minilm", "efficientnet-lite0", "smollm2", "mnist")


def get_model(name: str, **kwargs) -> ModelSpec:
    """Build the zoo model ``name``; keyword arguments go to its builder (e.g. ``seed``)."""
    try:
        builder = ZOO[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(ZOO)}") from None
    return builder(**kwargs)


def list_models(pretrained: bool | None = None) -> list[str]:
    """Names in the zoo: all (None), only pretrained (True) or only random-init (False)."""
    if pretrained is None:
        return list(ZOO)
    return list(PRETRAINED_MODELS if pretrained else REFERENCE_MODELS)
