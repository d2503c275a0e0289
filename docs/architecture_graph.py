"""Draw the package graph of docs/architecture.md: the stages as layers, the imports between them.

    python docs/architecture_graph.py docs/architecture.png    (make architecture)

The rows are the layers of the `layers` import contract in pyproject.toml (so
the picture follows the checked rule), bottom to top; the arrows are the
imports grimp finds between the stages (the same graph `lint-imports`
checks), thicker where more modules import across them. Arrows into
``errors`` and ``core`` (the vocabulary every stage uses) are left out to keep
the picture readable. An arrow that points up would be a broken contract; it
is drawn red.
"""

from __future__ import annotations

import collections
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_UNDRAWN = {"errors", "core"}  # imported by nearly every stage


def stage_graph() -> tuple[list[list[str]], dict[tuple[str, str], int], dict[str, int]]:
    """Rows of stages (bottom first), importer/imported stage -> modules importing across, modules per stage."""
    import grimp

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers")
    rows = [[m.strip().removeprefix("sparsecc.") for m in layer.split("|")] for layer in reversed(contract["layers"])]
    # sparsecc/passes, backends, models and recipes link to the top-level folders, so the
    # repository root holds the package laid out as installed
    sys.path.insert(0, str(ROOT))
    try:
        graph = grimp.build_graph("sparsecc", cache_dir=None)
    finally:
        sys.path.remove(str(ROOT))
    stages = {s for row in rows for s in row}

    def stage(module: str) -> str | None:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and parts[1] in stages else None

    edges: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    sizes: collections.Counter[str] = collections.Counter()
    for module in graph.modules:
        src = stage(module)
        if src is None:
            continue
        sizes[src] += 1
        for imported in graph.find_modules_directly_imported_by(module):
            dst = stage(imported)
            if dst is not None and dst != src:
                edges[(src, dst)].add(module)
    return rows, {k: len(v) for k, v in edges.items()}, dict(sizes)


def draw(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    rows, edges, sizes = stage_graph()
    pos: dict[str, tuple[float, float]] = {}
    for y, row in enumerate(rows):
        for i, name in enumerate(row):
            pos[name] = ((i - (len(row) - 1) / 2) * 2.6, y * 1.0)
    level = {name: y for y, row in enumerate(rows) for name in row}
    fig, ax = plt.subplots(figsize=(9, 11))
    w, h = 2.2, 0.5
    for name, (x, y) in pos.items():
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02",
                                    facecolor="#e8eef7", edgecolor="#345", zorder=3))
        ax.text(x, y + 0.06, f"sparsecc.{name}", ha="center", va="center", fontsize=10, weight="bold", zorder=4)
        ax.text(x, y - 0.14, f"{sizes.get(name, 0)} modules", ha="center", va="center", fontsize=7,
                color="#555", zorder=4)
    shown = sorted(((e, n) for e, n in edges.items() if e[1] not in _UNDRAWN), key=lambda e: (level[e[0][0]], e[0]))
    for k, ((src, dst), n) in enumerate(shown):
        (x0, y0), (x1, y1) = pos[src], pos[dst]
        upward = level[dst] >= level[src]
        span = abs(level[src] - level[dst])
        side = 1 if k % 2 else -1
        # arrows between rows further apart bow out more, so they pass beside the boxes between
        rad = 0 if span <= 1 else side * min(0.12 + 0.05 * span, 0.6)
        ax.add_patch(FancyArrowPatch((x0, y0 - h / 2), (x1, y1 + h / 2), connectionstyle=f"arc3,rad={rad}",
                                     arrowstyle="-|>", mutation_scale=9, lw=0.5 + 0.25 * min(n, 6) ** 0.5,
                                     color="#c22" if upward else "#579", alpha=0.8, zorder=2))
    xs = [p[0] for p in pos.values()]
    ax.set_xlim(min(xs) - 3.5, max(xs) + 3.5)
    ax.set_ylim(-0.8, len(rows) - 0.3)
    ax.axis("off")
    ax.set_title("sparsecc: stages as layers; an arrow is an import, each layer imports only below it\n"
                 "(every stage may import core and errors: those arrows are not drawn)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else ROOT / "docs" / "architecture.png")
    draw(out)
    rows, edges, _ = stage_graph()
    level = {name: y for y, row in enumerate(rows) for name in row}
    up = [f"{a} -> {b}" for (a, b) in edges if level[b] >= level[a]]
    print(f"wrote {out}: {len(level)} stages, {len(edges)} stage imports" + (f", UPWARD: {up}" if up else ""))
    return 1 if up else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
