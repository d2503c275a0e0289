"""Read a bundle folder: its manifest, and the sparse and dense artifact of each backend.

Only the manifest and file paths are read here (no runtime, no torch), so a
bundle copied to a device can be benchmarked with just its runtime installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparsecc.bundle.hashes import HashReport, require_unchanged
from sparsecc.bundle.manifest import Manifest, ManifestError, read_manifest
from sparsecc.errors import BenchError

__all__ = ["Bundle", "Variant", "BACKENDS", "SPARSE", "DENSE"]

BACKENDS = ("onnx", "onnx-custom-ops", "executorch", "executorch-custom-ops", "torch", "torch-sparse")
SPARSE, DENSE = "sparse", "dense"


@dataclass(frozen=True)
class Variant:
    """One model to time: the sparse or the dense build of one backend."""

    name: str  # SPARSE or DENSE
    backend: str
    path: Path  # the model file (.onnx, .pte, .pt2)
    artifact: dict[str, Any] | None  # the manifest's artifact record; None for torch
    root: Path  # the folder the artifact's file names are relative to

    def files(self) -> dict[str, Path]:
        if self.artifact is None:
            return {"model": self.path}
        return {role: self.root / name for role, name in self.artifact["files"].items()}


class Bundle:
    """A compiled bundle folder (see sparsecc/flows/compile.py for its layout).

    ``manifest`` is the typed `Manifest` (validated on read); `check_files`
    compares every file with the sha256 compile recorded.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self.manifest: Manifest = read_manifest(self.path)
        except ManifestError as e:
            raise BenchError(str(e)) from e

    def check_files(self) -> HashReport:
        """Raise `BundleChangedError` when a file changed since compile (the cheap part of `sparsecc verify`)."""
        return require_unchanged(self.path, self.manifest.files)

    @property
    def model(self) -> str:
        return self.manifest.model or self.path.name

    @property
    def model_ref(self) -> str:
        """The MODEL reference to resolve for eval: the model file copied into the bundle when it has one."""
        return self.manifest.model_ref(self.path) if self.manifest.model else self.path.name

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.manifest.inputs)

    @property
    def dynamic_dims(self) -> dict[str, tuple[int, int]]:
        return {k: (int(v[0]), int(v[1])) for k, v in self.manifest.dynamic_dims.items()}

    @property
    def sparse_layers(self) -> list[dict[str, Any]]:
        return [lay for lay in self.manifest.sparsity_layers if lay.get("status") == "sparse"]

    @property
    def recipe(self) -> dict[str, Any] | None:
        return self.manifest.recipe

    def has_dense(self) -> bool:
        return self.manifest.dense_reference is not None

    def backends(self) -> list[str]:
        """Backends this bundle can run: its lowered targets, and torch when program.pt2 exists."""
        found = [b for b in BACKENDS if b in self.manifest.targets]
        if (self.path / "program.pt2").is_file():
            found.append("torch")
        return found

    def variant(self, backend: str, name: str) -> Variant | None:
        """The sparse or dense build for ``backend``; None when the bundle has none."""
        if backend not in BACKENDS:
            raise BenchError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if name == SPARSE:
            if backend == "torch":
                p = self.path / "program.pt2"
                return Variant(SPARSE, backend, p, None, self.path) if p.is_file() else None
            target = self.manifest.targets.get(backend)
            if target is None:
                return None
            root = self.path / target.folder
            art = target.artifact
            return Variant(SPARSE, backend, root / art["files"]["model"], art, root)
        ref = self.manifest.dense_reference
        if ref is None:
            return None
        if backend == "torch":
            return Variant(DENSE, backend, self.path / ref.program, None, self.path)
        target = ref.targets.get(backend)
        if target is None:
            return None
        root = self.path / target.folder
        art = target.artifact
        return Variant(DENSE, backend, root / art["files"]["model"], art, root)

    def reference_variants(self, backend: str) -> dict[str, Variant]:
        """Other runtimes timed beside ``backend``'s dense and sparse models, by variant name.

        torch-sparse is measured against ONNX Runtime dense as well (the fastest
        dense CPU runtime here), as ``onnx-dense``, when the bundle has it.
        """
        if backend != "torch-sparse":
            return {}
        v = self.variant("onnx", DENSE)
        return {"onnx-dense": Variant("onnx-dense", "onnx", v.path, v.artifact, v.root)} if v is not None else {}

    def check_reason(self, backend: str, layer: str) -> dict[str, str] | None:
        """What compile's backend check said about ``layer`` (support and reason)."""
        target = self.manifest.targets.get(backend)
        for c in target.check if target is not None else []:
            if c.get("layer") == layer:
                return {"support": c.get("support", ""), "reason": c.get("reason", "")}
        return None
