"""`sparsecc verify BUNDLE`: re-check a bundle after it was written, without the model.

In order, cheapest first:

1. file hashes: every file against the sha256 compile recorded in the manifest;
2. patterns: each artifact's weights re-checked in the target's own layout
   (each backend's ``verify_pattern``, through `sparsecc.backends.get_backend`),
   against the mask specs the manifest records;
3. parity: each artifact run on the stored parity inputs
   (``inputs/reference.npz``) and compared with the sparse PyTorch program's
   stored outputs, at the tolerance compile used for that target.

All three run even when an earlier one fails, so the report names the layer
and group at fault, not only the file. `require_verified` raises
`BundleVerificationError` (exit 4) with that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from sparsecc.bundle.hashes import HashReport, check_hashes
from sparsecc.bundle.manifest import Manifest, read_manifest
from sparsecc.errors import DependencyError, VerificationError

__all__ = ["Finding", "VerifyReport", "BundleVerificationError", "verify_bundle", "require_verified"]


class BundleVerificationError(VerificationError, RuntimeError):
    """A bundle failed `verify_bundle`; the message names the file, layer and group at fault."""


@dataclass
class Finding:
    """One problem: which check, which target, which layer / file, and what is wrong."""

    check: str  # "hash", "pattern" or "parity"
    target: str
    where: str  # a file, a layer, or an input set
    detail: str

    def describe(self) -> str:
        return f"{self.check}: {self.target + ': ' if self.target else ''}{self.where}: {self.detail}"

    def to_dict(self) -> dict[str, str]:
        return {"check": self.check, "target": self.target, "where": self.where, "detail": self.detail}


@dataclass
class VerifyReport:
    """What `verify_bundle` found; ``ok`` when nothing failed."""

    bundle: Path
    hashes: HashReport
    patterns: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    parity: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # target -> why it could not be checked here
    problems: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle), "ok": self.ok, "hashes": self.hashes.to_dict(),
                "patterns": self.patterns, "parity": self.parity, "skipped": self.skipped,
                "problems": [p.to_dict() for p in self.problems], "seconds": self.seconds}


Progress = Callable[[str], None]


def verify_bundle(path: str | Path, *, targets: Sequence[str] | None = None, parity: bool = True,
                  progress: Progress | None = None) -> VerifyReport:
    """Check hashes, patterns and parity of the bundle at ``path`` (all targets unless ``targets``)."""
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    bundle = Path(path)
    manifest = read_manifest(bundle)
    say("file hashes")
    report = VerifyReport(bundle, check_hashes(bundle, manifest.files))
    report.problems += [Finding("hash", "", f, "changed since compile (sha256 differs)") for f in report.hashes.changed]
    report.problems += [Finding("hash", "", f, "missing") for f in report.hashes.missing]
    if not report.hashes.recorded:
        report.skipped["hashes"] = "the manifest records no file hashes (written by an older sparsecc)"
    chosen = list(targets) if targets else list(manifest.targets)
    unknown = [t for t in chosen if t not in manifest.targets]
    if unknown:
        raise BundleVerificationError(f"{bundle} has no {', '.join(unknown)} target; it has: "
                                      f"{', '.join(manifest.targets)}")
    for name in chosen:
        _verify_target(bundle, manifest, name, parity, report, say)
    report.seconds = time.perf_counter() - t0
    return report


def _verify_target(bundle: Path, manifest: Manifest, name: str, parity: bool, report: VerifyReport,
                   say: Progress) -> None:
    from sparsecc.backends import Artifact, get_backend
    from sparsecc.core.ir import MaskSpec

    rec = manifest.targets[name]
    try:
        backend = get_backend(name)
        artifact = Artifact.from_dict(rec.artifact, bundle / rec.folder)
        say(f"{name}: patterns")
        specs = [MaskSpec.from_dict(m) for m in manifest.masks]
        checks = backend.verify_pattern(artifact, specs) if specs else []
    except (DependencyError, ImportError) as e:
        report.skipped[name] = f"cannot load here: {e}"
        return
    except Exception as e:  # an unreadable artifact is a finding, named by its file
        report.problems.append(Finding("pattern", name, rec.files.get("model", rec.folder),
                                       f"cannot read the artifact: {type(e).__name__}: {e}"))
        return
    report.patterns[name] = [c.to_dict() for c in checks]
    report.problems += [Finding("pattern", name, f"layer {c.fqn} ({c.location})", c.reason or "pattern broken")
                        for c in checks if not c.ok]
    if parity:
        _parity(bundle, manifest, name, backend, artifact, report, say)


def _parity(bundle: Path, manifest: Manifest, name: str, backend: Any, artifact: Any, report: VerifyReport,
            say: Progress) -> None:
    from sparsecc.verify.parity import PARITY_ATOL, PARITY_RTOL, compare, load_reference

    if not manifest.reference or not (bundle / manifest.reference).is_file():
        report.skipped.setdefault("parity", "the bundle stores no reference outputs (written by an older sparsecc)")
        return
    say(f"{name}: parity")
    rtol = float(manifest.targets[name].parity.get("rtol", PARITY_RTOL))
    atol = float(manifest.targets[name].parity.get("atol", PARITY_ATOL))
    cases_at_compile = manifest.targets[name].parity.get("cases", [])
    skipped_at_compile = {c.get("inputs") for c in cases_at_compile if c.get("skipped")}
    # A case compile passed against the float64 program carries the bound it passed at.
    case_rtol = {c.get("inputs"): float(c["rtol"]) for c in cases_at_compile if "rtol" in c}
    sets = load_reference(bundle / manifest.reference)
    try:
        runner = backend.load(artifact)
    except (DependencyError, ImportError) as e:
        report.skipped[name] = f"parity: cannot run here: {e}"
        return
    cases = []
    for i, (ins, want) in sorted(sets.items()):
        label = manifest.parity_inputs[i].label if i < len(manifest.parity_inputs) else f"set {i}"
        if label in skipped_at_compile:
            continue  # the target cannot run this shape; compile recorded that
        try:
            got = runner(ins)
        except Exception as e:
            cases.append({"inputs": label, "ok": False, "outputs": [], "error": f"{type(e).__name__}: {e}"[:300]})
            report.problems.append(Finding("parity", name, label, f"the artifact failed to run: {e}"[:300]))
            continue
        r = case_rtol.get(label, rtol)
        case = compare(got, want, label, r, atol, inputs=ins)
        cases.append(case)
        for o in case["outputs"]:
            if not o["ok"]:
                report.problems.append(Finding("parity", name, f"{label}, output {o['index']}", o.get("reason") or (
                    f"max abs err {o.get('max_abs_err')} > atol {atol} + rtol {r} x scale {o.get('scale')}")))
    report.parity[name] = cases


def require_verified(report: VerifyReport) -> VerifyReport:
    """Raise `BundleVerificationError` listing what failed, most specific first (patterns, parity, hashes)."""
    if report.ok:
        return report
    order = {"pattern": 0, "parity": 1, "hash": 2}
    problems = sorted(report.problems, key=lambda p: order.get(p.check, 3))
    lines = "; ".join(p.describe() for p in problems[:6])
    more = f" (and {len(problems) - 6} more)" if len(problems) > 6 else ""
    raise BundleVerificationError(f"{report.bundle} failed verification: {lines}{more}")
