"""sparsecc.sweep: quality drop, essential sparsity, the grid, outputs, and a real sweep (slow)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

import sparsecc.data as ds
from sparsecc.flows import sweep as sw
from sparsecc.cli import app
from sparsecc.quality.evaluate import EvalError, EvalOptions


def _pt(s: float, q: float, dense: float = 10.0, higher: bool = False, error: str = "") -> sw.SweepPoint:
    return sw.SweepPoint("magnitude", "unstructured", s, s, {"m": q}, q, sw.quality_drop(q, dense, higher),
                         0.1, 0.2, error)


def test_quality_drop_direction():
    assert sw.quality_drop(12.0, 10.0, higher_is_better=False) == pytest.approx(0.2)  # perplexity up 20%
    assert sw.quality_drop(8.0, 10.0, higher_is_better=False) == pytest.approx(-0.2)
    assert sw.quality_drop(0.45, 0.5, higher_is_better=True) == pytest.approx(0.1)  # accuracy down 10%
    assert sw.quality_drop(0.55, 0.5, higher_is_better=True) == pytest.approx(-0.1)


def test_essential_sparsity_stops_at_the_first_drop():
    pts = [_pt(0.3, 10.1), _pt(0.5, 10.4), _pt(0.7, 11.0), _pt(0.8, 10.2), _pt(0.9, 40.0)]
    # 0.7 is 10% worse: the curve falls off there even though 0.8 happens to be within 5% again
    assert sw.essential_sparsity(pts, 0.05) == {"essential": 0.5, "falls_off_at": 0.7}
    assert sw.essential_sparsity(pts, 0.5) == {"essential": 0.8, "falls_off_at": 0.9}
    assert sw.essential_sparsity([_pt(0.3, 20.0)], 0.05) == {"essential": None, "falls_off_at": 0.3}
    assert sw.essential_sparsity([_pt(0.3, 10.0), _pt(0.5, math.nan, error="boom")], 0.05) == {
        "essential": 0.3, "falls_off_at": None}


def test_grid_gives_nm_patterns_one_point():
    assert sw._grid(["unstructured", "2:4", "4x4"], [0.3, 0.6]) == [
        ("unstructured", 0.3), ("unstructured", 0.6), ("2:4", None), ("4x4", 0.3), ("4x4", 0.6)]


def test_result_outputs(tmp_path):
    pts = [_pt(0.3, 10.2), _pt(0.6, 13.0), sw.SweepPoint("random", "2:4", 0.5, 0.5, {}, 30.0, 2.0, 0.1, 0.2)]
    res = sw.SweepResult("m", "perplexity", "perplexity", False, {"perplexity": 10.0}, pts, 0.05, {"pattern": "x"},
                         {"cpu": "cpu", "load": 1.0})
    out = sw.write_sweep(res, tmp_path / "s")
    data = json.loads((out / "sweep.json").read_text())
    assert data["essential_sparsity"] == {"magnitude unstructured": {"essential": 0.3, "falls_off_at": 0.6},
                                          "random 2:4": {"essential": None, "falls_off_at": 0.5}}
    md = (out / "sweep.md").read_text()
    assert "| magnitude | unstructured | 60% | 60.0% | 13 | +30.0% |" in md
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError):
        sw.write_sweep(res, out)


def test_sweep_refuses_bad_input_before_any_work():
    with pytest.raises(ValueError, match="sparsities must be in"):
        sw.sweep("mlp", sparsities=[1.5])
    with pytest.raises(KeyError, match="unknown criterion 'biggest'"):
        sw.sweep("mlp", criteria=["biggest"])
    with pytest.raises(EvalError, match="has no evaluation task"):
        sw.sweep("mlp")


@pytest.mark.slow
def test_mnist_sweep_random_falls_off_before_magnitude(tmp_path):
    try:
        ds.mnist_digits()
    except ds.DataUnavailableError as e:
        pytest.skip(str(e))
    res = sw.sweep("mnist", criteria=["magnitude", "random"], patterns=["unstructured", "2:4"],
                   sparsities=[0.5, 0.9], options=EvalOptions(max_digits=1000), tolerance=0.02)
    assert res.metric == "accuracy" and res.dense_quality > 0.97
    assert len(res.points) == 6 and not any(p.error for p in res.points)
    curves = res.curves()
    mag, rnd = curves["magnitude", "unstructured"], curves["random", "unstructured"]
    assert [p.sparsity for p in mag] == [0.5, 0.9]
    for p in mag + rnd:
        assert p.achieved == pytest.approx(p.sparsity, abs=0.02)  # of the pruned (>= 4096-param) layers
    # at 90% both lose digits, random far more (about 0.90 against 0.43 here)
    assert mag[1].quality > rnd[1].quality + 0.2
    assert res.essential()["magnitude unstructured"] == {"essential": 0.5, "falls_off_at": 0.9}
    out = sw.write_sweep(res, tmp_path / "sweep")
    assert {p.name for p in out.iterdir()} == {".sparsecc-output", "sweep.json", "sweep.md", "sweep.png"}


@pytest.mark.slow
def test_cli_sweep_and_eval(tmp_path):
    try:
        ds.mnist_digits()
    except ds.DataUnavailableError as e:
        pytest.skip(str(e))
    runner = CliRunner()
    res = runner.invoke(app, ["sweep", "mnist", "--criteria", "magnitude", "--patterns", "4:8", "--limit", "500",
                              "--out", str(tmp_path / "s")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["pattern"] for p in data["points"]] == ["4:8"] and data["task"] == "digit-accuracy"
    assert "Essential sparsity" in res.stdout
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "2of4.yaml"
    res = runner.invoke(app, ["eval", "mnist", "--recipe", str(recipe), "--limit", "500",
                              "--json", str(tmp_path / "e.json")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    (r,) = json.loads((tmp_path / "e.json").read_text())["result"]
    assert r["variant"] == "sparse" and r["details"]["digits"] == 500
    assert r["metrics"]["dense_accuracy"] > 0.97 and 0 < r["metrics"]["top1_agreement"] <= 1
    assert "digit-accuracy" in res.stdout
