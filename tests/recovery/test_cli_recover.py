"""`sparsecc recover`: the recipe's stages run, the result and its record are written, errors name the flag."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from sparsecc.cli import app
from sparsecc.core.program import load_program
from sparsecc.recovery import masks_of

runner = CliRunner()
ENV = {"COLUMNS": "400"}


def _recipe(tmp_path: Path, section) -> Path:
    path = tmp_path / "r.yaml"
    body = {"pattern": "2:4"} | ({"recovery": section} if section is not None else {})
    path.write_text(yaml.safe_dump(body))
    return path


def test_recover_writes_the_trained_program_and_its_record(tmp_path):
    recipe = _recipe(tmp_path, [{"method": "reconstruct", "samples": 4, "batch_size": 2},
                                {"method": "distill", "steps": 3, "samples": 4, "batch_size": 2}])
    res = runner.invoke(app, ["recover", "mlp", "-r", str(recipe), "-o", str(tmp_path / "out"),
                              "--checkpoint-dir", str(tmp_path / "ck")], env=ENV)
    assert res.exit_code == 0, res.output
    records = json.loads((tmp_path / "out" / "recovery.json").read_text())
    assert [r["method"] for r in records] == ["reconstruct", "distill"] and records[1]["steps"] == 3
    program = load_program(tmp_path / "out" / "program.pt2")
    masks = masks_of(program)
    assert masks and all(bool((m.reshape(-1, 4).sum(1) <= 2).all()) for m in masks.values())  # still 2:4
    assert (tmp_path / "ck" / "mlp" / "1-distill" / "distill.pt").exists()  # per model, per stage
    x = torch.randn(4, *program.example_inputs[0][0].shape[1:])
    assert torch.isfinite(program.module()(x)).all()


def test_recover_without_a_section_or_method_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["recover", "mlp", "-r", str(_recipe(tmp_path, None)), "-o", str(tmp_path / "o")],
                        env=ENV)
    assert res.exit_code == 2 and "no recovery: section" in " ".join(res.output.split())
    res = runner.invoke(app, ["recover", "mlp", "-r", str(_recipe(tmp_path, None)), "-o", str(tmp_path / "o"),
                              "--method", "distill", "--lr", "-1"], env=ENV)
    assert res.exit_code == 2 and "'lr'" in res.output and not (tmp_path / "o").exists()
