"""The named recipes shipped with sparsecc: each ``NAME.yaml`` here is ``-r NAME`` on the command line.

This folder is installed as ``sparsecc.recipes`` (package data), so a name
works from any directory; a path to a file works as well.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["RECIPES_DIR", "builtin_recipes", "builtin_recipe", "describe"]

RECIPES_DIR = Path(__file__).resolve().parent


def builtin_recipes() -> dict[str, Path]:
    """``{name: path}`` of every shipped recipe, sorted by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}


def builtin_recipe(name: str) -> Path | None:
    """The shipped recipe called ``name`` (``2of4`` or ``2of4.yaml``), or None."""
    stem = name[:-5] if name.endswith(".yaml") else name
    return builtin_recipes().get(stem) if "/" not in name else None


def describe(path: Path) -> str:
    """The first sentence of the recipe's leading comment, on one line."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines).strip().split(". ", 1)[0]
    head = text.split(": ", 1)[0]
    return (head if len(head) >= 25 else text).rstrip(".:")  # "Structured pruning" alone says too little
