"""The protocol every deployment target implements, and the backend registry.

A backend turns a (folded) sparse `ExportedProgram` into files a user ships:

- ``check(program)``: per prunable layer, what the target will do with its
  sparsity (runs sparse / runs dense / not supported) and why;
- ``lower(program, out_dir, options)``: write the artifact into ``out_dir``
  and return an `Artifact` describing it (files, sizes, input/output specs,
  provenance, delegation, ...);
- ``load(artifact)`` / ``run(artifact, inputs)``: execute it on flat tensor
  inputs (the program's user inputs, flattened in signature order);
- ``verify_pattern(artifact, specs)``: re-check each weight's sparsity
  pattern in the artifact's own weight layout.

Optional dependencies are imported lazily inside methods; a missing one
raises `MissingDependencyError` with the extra to install.
"""

from __future__ import annotations

import abc
import enum
import importlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch.export import ExportedProgram

from sparsecc.core.ir import MaskSpec
from sparsecc.errors import DependencyError, SparseccError, UsageError

__all__ = [
    "Support",
    "LayerCheck",
    "PatternCheck",
    "TensorSpec",
    "Artifact",
    "LowerOptions",
    "Runner",
    "Backend",
    "MissingDependencyError",
    "InputMismatchError",
    "LoweringError",
    "require",
    "register_backend",
    "get_backend",
    "available_backends",
    "user_input_specs",
    "user_output_names",
    "check_inputs",
]


class Support(str, enum.Enum):
    SPARSE = "runs sparse"
    DENSE = "runs dense"
    UNSUPPORTED = "not supported"


@dataclass(frozen=True)
class LayerCheck:
    """What a target does with one prunable layer's sparsity, and why."""

    layer: str
    fqn: str
    support: Support
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "fqn": self.fqn, "support": self.support.value, "reason": self.reason}


@dataclass(frozen=True)
class PatternCheck:
    """A weight's sparsity re-checked inside the artifact.

    ``location`` names where the weight lives in the artifact (an ONNX
    initializer, a .pte constant); ``layout`` says how it is laid out there
    (for example ``"transposed [in, out]"``); ``ok`` is True when the pattern
    holds there exactly; ``eligible`` (ONNX only, else None) says whether
    TensorRT would accept it as 2:4 sparse.
    """

    fqn: str
    pattern: str
    location: str
    layout: str
    ok: bool
    achieved: float
    reason: str = ""
    eligible: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an artifact. Dynamic dims are named strings."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TensorSpec":
        return cls(d["name"], tuple(d["shape"]), d["dtype"])

    def describe(self) -> str:
        return f"{self.name}: {self.dtype}[{', '.join(str(s) for s in self.shape)}]"


@dataclass
class Artifact:
    """Files written by `Backend.lower`, described well enough to reload them.

    ``files`` maps a role (``"model"``, ``"compressed"``, ...) to a path
    relative to ``root``. ``meta`` holds backend-specific, JSON-serialisable
    facts (provenance, delegation, sizes).
    """

    backend: str
    root: Path
    files: dict[str, str]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    meta: dict[str, Any] = field(default_factory=dict)

    def path(self, role: str = "model") -> Path:
        return self.root / self.files[role]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "files": dict(self.files),
            "sizes": {k: (self.root / v).stat().st_size for k, v in self.files.items() if (self.root / v).exists()},
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], root: Path) -> "Artifact":
        return cls(
            backend=d["backend"],
            root=Path(root),
            files=dict(d["files"]),
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            meta=dict(d.get("meta", {})),
        )

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


@dataclass
class LowerOptions:
    """Options shared by all backends; backend-specific ones go in ``extra``.

    - ``sparse_initializers`` (ONNX): store weights as `SparseTensorProto`
      where that makes the file smaller.
    - ``opset`` (ONNX): target opset, None for the exporter's default.
    - ``compress`` (ExecuTorch): also write a zstd-compressed copy.
    - ``threads``: intra-op threads for `load`/`run`, None for the runtime default.
    """

    sparse_initializers: bool = False
    opset: int | None = None
    compress: bool = True
    threads: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    """A loaded artifact: call it with flat tensors, get flat tensors back."""

    @abc.abstractmethod
    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]: ...


class MissingDependencyError(DependencyError, ImportError):
    def __init__(self, backend: str, module: str, extra: str):
        super().__init__(
            f"the {backend} backend needs the Python package '{module}', which is not installed: "
            f"pip install 'sparsecc[{extra}]'"
        )
        self.backend, self.module, self.extra = backend, module, extra


class InputMismatchError(UsageError, ValueError):
    pass


class LoweringError(SparseccError, RuntimeError):
    """Lowering failed; the message names the node and op at fault when known."""


def require(backend: str, module: str, extra: str) -> Any:
    """Import ``module`` or raise a one-line `MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(backend, module, extra) from e


class Backend(abc.ABC):
    name: str = ""
    extra: str = ""
    # The pip modules this backend imports, checked by `available()`.
    modules: tuple[str, ...] = ()

    def available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in self.modules)

    @abc.abstractmethod
    def check(self, program: ExportedProgram) -> list[LayerCheck]: ...

    def check_artifact(self, program: ExportedProgram, artifact: Artifact) -> list[LayerCheck]:
        """`check`, answered from an artifact already lowered from ``program``.

        Backends whose answer needs a lowering (ExecuTorch: what XNNPACK took)
        read it from the artifact instead of lowering a second time.
        """
        return self.check(program)

    @abc.abstractmethod
    def lower(self, program: ExportedProgram, out_dir: Path, options: LowerOptions) -> Artifact: ...

    @abc.abstractmethod
    def load(self, artifact: Artifact, threads: int | None = None) -> Runner: ...

    def run(self, artifact: Artifact, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        check_inputs(artifact.inputs, inputs)
        return self.load(artifact)(inputs)

    @abc.abstractmethod
    def verify_pattern(self, artifact: Artifact, specs: Sequence[MaskSpec]) -> list[PatternCheck]: ...


_REGISTRY: dict[str, Callable[[], Backend]] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    _REGISTRY[name] = factory


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]()


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


# -- helpers shared by the backends ---------------------------------------------


def _dim(d: Any) -> int | str:
    if isinstance(d, int):
        return d
    if isinstance(d, torch.SymInt):
        return str(d.node.expr)
    return str(d)


def user_input_specs(program: ExportedProgram) -> list[TensorSpec]:
    """The program's tensor user inputs, flattened in signature order."""
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = []
    for name in program.graph_signature.user_inputs:
        val = by_name[name].meta.get("val")
        if isinstance(val, torch.Tensor):
            specs.append(TensorSpec(name, tuple(_dim(d) for d in val.shape), str(val.dtype).removeprefix("torch.")))
    return specs


def user_output_names(program: ExportedProgram) -> list[str]:
    return list(program.graph_signature.user_outputs)


def check_inputs(expected: Sequence[TensorSpec], inputs: Sequence[torch.Tensor]) -> None:
    """Raise `InputMismatchError` naming the expected spec when inputs do not fit."""
    if len(inputs) != len(expected):
        want = ", ".join(s.describe() for s in expected)
        raise InputMismatchError(f"expected {len(expected)} inputs ({want}), got {len(inputs)}")
    for spec, t in zip(expected, inputs):
        if not isinstance(t, torch.Tensor):
            raise InputMismatchError(f"input {spec.describe()}: got {type(t).__name__}, not a tensor")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != spec.dtype:
            raise InputMismatchError(f"input {spec.describe()}: got dtype {dtype}")
        if t.dim() != len(spec.shape) or any(
            isinstance(s, int) and s != d for s, d in zip(spec.shape, t.shape)
        ):
            raise InputMismatchError(f"input {spec.describe()}: got shape {list(t.shape)}")
