"""The bundle manifest: one typed record, one writer, one reader.

``manifest.json`` is written by `write_manifest` (compile) and read by
`read_manifest` (bench, eval, report, verify). Reading validates every field
it uses and raises `ManifestError` naming the field at fault. Bundles written
before ``schema_version`` existed (``"format": 1``) keep loading: the fields
they lack get their defaults (no file hashes, no stored reference outputs).

``files`` holds the sha256 of every file of the bundle (paths relative to the
bundle, ``/``-separated), so a changed file is found before it is run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sparsecc.errors import UsageError

__all__ = [
    "SCHEMA_VERSION",
    "MANIFEST_NAME",
    "ManifestError",
    "RecoveryRecord",
    "TargetRecord",
    "DenseReference",
    "ParityInput",
    "ModelSource",
    "Manifest",
    "read_manifest",
    "write_manifest",
    "is_bundle",
]

SCHEMA_VERSION = 2
MANIFEST_NAME = "manifest.json"


class ManifestError(UsageError, ValueError):
    """A manifest that is missing, not JSON, or lacks / mistypes a field; the message names the field."""


def _need(d: Any, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected an object, got {type(d).__name__}")
    if key not in d or d[key] is None:
        if optional:
            return None
        raise ManifestError(f"{where}: field {key!r} is missing")
    v = d[key]
    if not isinstance(v, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ManifestError(f"{where}: field {key!r} should be {names}, got {type(v).__name__}")
    return v


@dataclass
class RecoveryRecord:
    """One recovery stage run by compile (the recipe's ``recovery:`` list), as the manifest records it.

    Filled by the recovery step of compile: ``method`` (distill, reconstruct, ...),
    ``steps`` run, the ``data`` it trained on, the loss before and after,
    wall ``seconds`` and the stage's ``options``. Other keys a stage reports
    are kept in ``extra``.
    """

    method: str
    steps: int | None = None
    data: str = ""
    loss_before: float | None = None
    loss_after: float | None = None
    seconds: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "recovery") -> "RecoveryRecord":
        _need(d, "method", str, where)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: d[k] for k in known if k in d}, extra={k: v for k, v in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**self.extra, **d}


@dataclass
class TargetRecord:
    """One lowered target: its artifact record, the backend's checks, pattern re-check and parity."""

    artifact: dict[str, Any]
    check: list[dict[str, Any]] = field(default_factory=list)
    pattern_verification: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    folder: str = ""  # relative to the bundle

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str, folder: str) -> "TargetRecord":
        art = _need(d, "artifact", dict, where)
        _need(art, "files", dict, f"{where}.artifact")
        _need(art, "inputs", list, f"{where}.artifact")
        return cls(art, list(d.get("check") or []), dict(d.get("pattern_verification") or {}),
                   dict(d.get("parity") or {}), dict(d.get("timings_s") or {}), str(d.get("folder") or folder))

    def to_dict(self, with_folder: bool = False) -> dict[str, Any]:
        d = {"artifact": self.artifact, "check": self.check, "pattern_verification": self.pattern_verification,
             "parity": self.parity, "timings_s": self.timings_s}
        return {"folder": self.folder, **d} if with_folder else d

    @property
    def files(self) -> dict[str, str]:
        """Role -> path relative to the bundle."""
        return {role: f"{self.folder}/{name}" for role, name in self.artifact["files"].items()}

    @property
    def pattern_ok(self) -> bool:
        return bool(self.pattern_verification.get("ok", True))

    @property
    def parity_ok(self) -> bool:
        return bool(self.parity.get("ok", True))


@dataclass
class DenseReference:
    """The unpruned model lowered beside the sparse one (``dense/``)."""

    program: str
    targets: dict[str, TargetRecord] = field(default_factory=dict)


@dataclass
class ParityInput:
    """One input set parity was checked on: its label and each input's shape."""

    label: str
    shapes: dict[str, list[int]] = field(default_factory=dict)
    stored: bool = False  # inputs and reference outputs are in the bundle's reference file

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "shapes": self.shapes, "stored": self.stored}


@dataclass
class ModelSource:
    """A user's model file copied into the bundle, so the bundle travels without it."""

    file: str  # relative to the bundle
    factory: str
    original: str = ""  # the reference as the user gave it

    def ref(self, bundle: Path) -> str:
        return f"{bundle / self.file}:{self.factory}"


@dataclass
class Manifest:
    """What ``manifest.json`` holds; `to_dict` is the JSON written, `from_dict` validates it."""

    model: str
    inputs: list[dict[str, Any]]
    targets: dict[str, TargetRecord]
    schema_version: int = SCHEMA_VERSION
    created: str = ""
    machine: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] | None = None
    outputs: list[str] = field(default_factory=list)
    dynamic_dims: dict[str, list[int | None]] = field(default_factory=dict)
    parity_inputs: list[ParityInput] = field(default_factory=list)
    reference: str | None = None  # the stored inputs + reference outputs (npz), relative to the bundle
    masks: list[dict[str, Any]] = field(default_factory=list)  # MaskSpec.to_dict of every sparse weight
    sparsity: dict[str, Any] | None = None
    structured: dict[str, Any] | None = None
    recovery: list[RecoveryRecord] | None = None
    dense_reference: DenseReference | None = None
    model_source: ModelSource | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept as they were

    # -- typed views used by bench / eval / report ---------------------------------

    @property
    def sparsity_layers(self) -> list[dict[str, Any]]:
        return list((self.sparsity or {}).get("layers", []))

    @property
    def structured_summary(self) -> dict[str, Any] | None:
        return (self.structured or {}).get("summary") if self.structured else None

    def model_ref(self, bundle: Path) -> str:
        """The MODEL reference eval resolves: the copied file when the bundle has one."""
        return self.model_source.ref(Path(bundle)) if self.model_source is not None else self.model

    # -- (de)serialisation ------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            **self.extra,
            "schema_version": self.schema_version, "format": 1, "created": self.created, "model": self.model,
            "machine": self.machine, "recipe": self.recipe, "inputs": self.inputs, "outputs": self.outputs,
            "dynamic_dims": self.dynamic_dims,
            "parity_inputs": [p.to_dict() for p in self.parity_inputs],
            "reference": self.reference, "masks": self.masks, "sparsity": self.sparsity,
            "targets": {k: v.to_dict() for k, v in self.targets.items()},
            "timings_s": self.timings_s,
        }
        if self.structured is not None:
            d["structured"] = self.structured
        if self.recovery is not None:
            d["recovery"] = [r.to_dict() for r in self.recovery]
        if self.dense_reference is not None:
            d["dense_reference"] = {"program": self.dense_reference.program, "targets": {
                k: v.to_dict(with_folder=True) for k, v in self.dense_reference.targets.items()}}
        if self.model_source is not None:
            d["model_source"] = {"file": self.model_source.file, "factory": self.model_source.factory,
                                 "original": self.model_source.original}
        d["files"] = self.files
        return d

    @classmethod
    def from_dict(cls, d: Any, where: str = MANIFEST_NAME) -> "Manifest":
        if not isinstance(d, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
        version = d.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ManifestError(f"{where}: field 'schema_version' is {version!r}; this sparsecc reads "
                                f"versions 1 to {SCHEMA_VERSION} (upgrade sparsecc to read it)")
        inputs = _need(d, "inputs", list, where)
        for n, i in enumerate(inputs):
            for key, kind in (("name", str), ("shape", list), ("dtype", str)):
                _need(i, key, kind, f"{where}: inputs[{n}]")
        targets = {k: TargetRecord.from_dict(v, f"{where}: targets.{k}", k)
                   for k, v in _need(d, "targets", dict, where).items()}
        return cls(
            model=str(d.get("model") or ""), inputs=inputs, targets=targets, schema_version=version,
            created=str(d.get("created") or ""), machine=dict(d.get("machine") or {}),
            recipe=_need(d, "recipe", dict, where, optional=True), outputs=list(d.get("outputs") or []),
            dynamic_dims=dict(_need(d, "dynamic_dims", dict, where, optional=True) or {}),
            parity_inputs=[ParityInput(p) if isinstance(p, str) else
                           ParityInput(str(p.get("label")), dict(p.get("shapes") or {}), bool(p.get("stored")))
                           for p in d.get("parity_inputs") or []],
            masks=list(_need(d, "masks", list, where, optional=True) or []),
            reference=_need(d, "reference", str, where, optional=True),
            sparsity=_need(d, "sparsity", dict, where, optional=True),
            structured=_need(d, "structured", dict, where, optional=True),
            recovery=_recovery(d, where), dense_reference=_dense(d, where), model_source=_source(d, where),
            timings_s=dict(d.get("timings_s") or {}), files=dict(_need(d, "files", dict, where, optional=True) or {}),
            extra={k: v for k, v in d.items() if k not in _KNOWN},
        )


_KNOWN = {f.name for f in fields(Manifest)} | {"format"}


def _recovery(d: dict[str, Any], where: str) -> list[RecoveryRecord] | None:
    recs = d.get("recovery")
    if recs is None:
        return None
    if isinstance(recs, dict):
        recs = [recs]
    if not isinstance(recs, list):
        raise ManifestError(f"{where}: field 'recovery' should be a list, got {type(recs).__name__}")
    return [r if isinstance(r, RecoveryRecord) else RecoveryRecord.from_dict(r, f"{where}: recovery[{n}]")
            for n, r in enumerate(recs)]


def _dense(d: dict[str, Any], where: str) -> DenseReference | None:
    ref = _need(d, "dense_reference", dict, where, optional=True)
    if not ref:
        return None
    program = _need(ref, "program", str, f"{where}: dense_reference")
    targets = {k: TargetRecord.from_dict(v, f"{where}: dense_reference.targets.{k}", f"dense/{k}")
               for k, v in _need(ref, "targets", dict, f"{where}: dense_reference").items()}
    return DenseReference(program, targets)


def _source(d: dict[str, Any], where: str) -> ModelSource | None:
    s = _need(d, "model_source", dict, where, optional=True)
    if s is None:
        return None
    return ModelSource(_need(s, "file", str, f"{where}: model_source"), _need(s, "factory", str, f"{where}: model_source"),
                       str(s.get("original") or ""))


def is_bundle(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_NAME).is_file()


def read_manifest(bundle: str | Path) -> Manifest:
    """Read and validate ``BUNDLE/manifest.json``."""
    path = Path(bundle) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(f"{bundle} is not a bundle: {path} does not exist (make one with `sparsecc compile`)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from e
    return Manifest.from_dict(data, str(path))


def write_manifest(bundle: str | Path, manifest: Manifest) -> dict[str, Any]:
    """Hash every file of ``bundle`` into ``manifest.files`` and write ``manifest.json``; returns the dict written."""
    from sparsecc.bundle.hashes import hash_files

    manifest.files = hash_files(bundle)
    d = manifest.to_dict()
    (Path(bundle) / MANIFEST_NAME).write_text(json.dumps(d, indent=2, default=str))
    return d
