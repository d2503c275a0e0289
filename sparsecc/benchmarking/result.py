"""`BenchResult`: what `bench` returns; writes and reads RUN.json and renders reports."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .schema import SchemaError, validate

__all__ = ["BenchResult"]


@dataclass
class BenchResult:
    """A bench run as a JSON-ready dict (``data``, schema ``sparsecc-bench/1``)."""

    data: dict[str, Any]

    @property
    def interrupted(self) -> bool:
        return bool(self.data.get("interrupted"))

    def runs(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """``[(bundle record, run record)]`` over all bundles."""
        return [(b, r) for b in self.data["bundles"] for r in b["runs"]]

    def to_json(self) -> str:
        return json.dumps(self.data, indent=1)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(self.to_json())
        tmp.replace(path)  # a Ctrl-C mid-write never leaves a truncated RUN.json
        return path

    @classmethod
    def load(cls, path: str | Path) -> "BenchResult":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SchemaError(f"cannot read bench result {path}: {e}") from e
        validate(data)
        return cls(data)

    def validate(self) -> None:
        validate(self.data)

    def markdown(self) -> str:
        from .markdown import to_markdown
        return to_markdown(self)

    def html(self) -> str:
        from .html import to_html
        return to_html(self)
