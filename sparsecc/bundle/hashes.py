"""File hashes of a bundle: recorded by compile, checked by verify, bench and eval."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from sparsecc.errors import VerificationError

__all__ = ["hash_files", "sha256", "HashReport", "check_hashes", "BundleChangedError", "require_unchanged"]

_SKIP = {"manifest.json"}  # the manifest holds the hashes; it cannot hash itself


class BundleChangedError(VerificationError, RuntimeError):
    """A bundle file differs from the hash compile recorded (or is missing / unrecorded)."""


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_files(bundle: str | Path) -> dict[str, str]:
    """sha256 of every file under ``bundle`` except the manifest, by ``/``-separated relative path."""
    root = Path(bundle)
    return {p.relative_to(root).as_posix(): sha256(p)
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).as_posix() not in _SKIP}


@dataclass
class HashReport:
    """Which recorded files changed, went missing, or appeared since compile."""

    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    recorded: bool = True  # False for a bundle written before hashes were recorded

    @property
    def ok(self) -> bool:
        # Files added later (a device build under tensorrt-bundle/build/) are listed, not refused.
        return not (self.changed or self.missing)

    def describe(self) -> str:
        parts = [f"{what}: {', '.join(names[:5])}{' ...' if len(names) > 5 else ''}"
                 for what, names in (("changed", self.changed), ("missing", self.missing), ("added", self.added))
                 if names]
        return "; ".join(parts) if parts else f"{self.checked} files match their recorded sha256"

    def to_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "checked": self.checked, "changed": self.changed, "missing": self.missing,
                "added": self.added, "recorded": self.recorded}


def check_hashes(bundle: str | Path, recorded: dict[str, str]) -> HashReport:
    """Compare the files under ``bundle`` with ``recorded`` (the manifest's ``files``)."""
    root = Path(bundle)
    if not recorded:
        return HashReport(recorded=False)
    now = {p.relative_to(root).as_posix() for p in root.rglob("*")
           if p.is_file() and p.relative_to(root).as_posix() not in _SKIP}
    report = HashReport(missing=sorted(set(recorded) - now), added=sorted(now - set(recorded)))
    for rel in sorted(set(recorded) & now):
        report.checked += 1
        if sha256(root / rel) != recorded[rel]:
            report.changed.append(rel)
    return report


def require_unchanged(bundle: str | Path, recorded: dict[str, str]) -> HashReport:
    """`check_hashes`, raising `BundleChangedError` naming the files when the bundle changed."""
    report = check_hashes(bundle, recorded)
    if not report.ok:
        raise BundleChangedError(f"{bundle} changed since it was compiled ({report.describe()}); "
                                 f"run `sparsecc verify {bundle}` or compile it again")
    return report
