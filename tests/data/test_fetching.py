"""`python -m sparsecc.data fetch`: every source is fetched and reported; a missing one is named, not fatal."""

from __future__ import annotations

import pytest

from sparsecc.data import DataUnavailableError, fetching

_SOURCES = ("fetch_gensim_data", "fetch_mnist", "fashion_mnist", "fashion_mnist_dir", "photo", "photo_names",
            "photos_dir", "fetch_stamps", "fetch_gcompris_photos", "fetch_prose", "wiki_articles",
            "fetch_glosses")


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Every source answers from a folder of its own; the prose source is unreachable."""
    for name in _SOURCES:
        monkeypatch.setattr(fetching, name, lambda *a, _n=name, **k: tmp_path / _n)
    monkeypatch.setattr(fetching, "photo_names", lambda: ["astronaut"])

    def no_pypi():
        raise DataUnavailableError("prose: pip download gensim==4.4.0 failed (no network)")

    monkeypatch.setattr(fetching, "wiki_articles", no_pypi)
    return tmp_path


def test_every_source_is_reported_and_a_missing_one_is_named(offline):
    said: list[str] = []
    status = fetching.fetch(say=said.append)
    assert len(said) == len(status) == 8
    prose = [k for k in status if k.startswith("prose")]
    assert prose and status[prose[0]].startswith("missing: prose: pip download gensim==4.4.0 failed")
    assert all(v.startswith("ok: ") for k, v in status.items() if k not in prose)
    with pytest.raises(DataUnavailableError, match="prose"):
        fetching.fetch(strict=True, say=lambda _: None)


def test_the_command_exits_1_only_when_strict(offline, capsys):
    assert fetching.main(["fetch"]) == 0
    assert fetching.main(["fetch", "--strict"]) == 1
    assert "missing: prose" in capsys.readouterr().out
