"""Atomic output: --force replaces only a bundle or an empty folder; an interrupt never replaces the old bundle."""

import os
import signal

import pytest

from sparsecc.bundle.staging import OutputExistsError, check_replaceable, clean_leftovers, staged_output
from sparsecc.errors import UsageError


def _bundle(path, text="old"):
    path.mkdir()
    (path / "manifest.json").write_text("{}")
    (path / "a.txt").write_text(text)


def test_force_refuses_a_folder_that_is_not_a_bundle(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not an earlier output of sparsecc") as e:
        with staged_output(d, force=True) as tmp:
            (tmp / "new.txt").write_text("y")
    assert isinstance(e.value, UsageError)
    assert (d / "thesis.txt").read_text() == "x" and not (d / "new.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_force_refuses_a_file(tmp_path):
    f = tmp_path / "out"
    f.write_text("keep")
    with pytest.raises(OutputExistsError, match="is a file"):
        check_replaceable(f, force=True)
    assert f.read_text() == "keep"


def test_without_force_anything_existing_is_refused(tmp_path):
    _bundle(tmp_path / "b")
    with pytest.raises(OutputExistsError, match="pass --force"):
        check_replaceable(tmp_path / "b", force=False)


@pytest.mark.parametrize("kind", ["empty folder", "bundle"])
def test_force_replaces_an_empty_folder_or_a_bundle(tmp_path, kind):
    d = tmp_path / "d"
    d.mkdir() if kind == "empty folder" else _bundle(d)
    with staged_output(d, force=True) as tmp:
        (tmp / "manifest.json").write_text("{}")
        (tmp / "a.txt").write_text("new")
    assert (d / "a.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_leftovers_of_killed_runs_are_cleaned_by_the_next_run(tmp_path):
    _bundle(tmp_path / "b")
    (tmp_path / ".b.tmp-abc123").mkdir()
    (tmp_path / ".b.tmp-abc123" / "model.onnx").write_text("half")
    (tmp_path / ".b.old-4242").mkdir()
    (tmp_path / ".b.old-77").write_text("a file")
    (tmp_path / ".other.tmp-1").mkdir()  # another output's: not ours to touch
    with staged_output(tmp_path / "b", force=True) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-1", "b"]
    assert clean_leftovers(tmp_path / "b") == []


def test_a_swallowed_sigint_still_stops_before_the_rename(tmp_path):
    """A KeyboardInterrupt eaten by a cleanup callback must not let the old bundle be replaced."""
    _bundle(tmp_path / "b")
    handler = signal.getsignal(signal.SIGINT)  # another test in this process may have set the CLI's
    with pytest.raises(KeyboardInterrupt):
        with staged_output(tmp_path / "b", force=True) as tmp:
            (tmp / "manifest.json").write_text("{}")
            (tmp / "a.txt").write_text("new")
            try:  # what `Exception ignored in ...` does to an interrupt
                os.kill(os.getpid(), signal.SIGINT)
            except KeyboardInterrupt:
                pass
            (tmp / "more.txt").write_text("the run went on")
    assert (tmp_path / "b" / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    assert signal.getsignal(signal.SIGINT) is handler  # handler restored
