"""Artifact size on disk: raw, and zstd-compressed (what a download or OTA update costs)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["file_sizes", "ZSTD_LEVEL"]

# Level 9: within a few percent of level 19's size at a fraction of the time
# (backends/executorch/compress.py); one level for every file keeps sizes comparable.
ZSTD_LEVEL = 9


def _zstd_size(path: Path) -> int | None:
    try:
        import zstandard
    except ImportError:
        return None
    data = path.read_bytes()
    return len(zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data))


def file_sizes(path: Path) -> dict[str, int | None]:
    """``{"bytes": raw, "zstd_bytes": compressed or None when zstandard is missing}``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"artifact file {path} does not exist")
    return {"bytes": path.stat().st_size, "zstd_bytes": _zstd_size(path)}
