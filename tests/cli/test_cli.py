"""The command line, through typer's CliRunner: inspect, sparsify, output folders, MODEL references."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import typer
import yaml
from typer.testing import CliRunner

import sparsecc
import sparsecc.core.program
from sparsecc.cli import app
from sparsecc.models import list_models

runner = CliRunner()
# A wide terminal, so that rich does not wrap paths and names in the middle of a message.
ENV = {"COLUMNS": "400"}


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def flat(text: str) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(text.split())


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def recipe_24(tmp_path: Path) -> Path:
    p = tmp_path / "r24.yaml"
    p.write_text('pattern: "2:4"\ncriterion: magnitude\n')
    return p


# -- inspect ------------------------------------------------------------------------------


def test_inspect_lists_layers():
    res = invoke("inspect", "mlp")
    assert res.exit_code == 0, res.output
    for layer, shape in (("fc1", "256x64"), ("fc2", "256x256"), ("fc3", "10x256")):
        assert f"{layer}.weight" in res.stdout and shape in res.stdout
    assert "3 prunable weights" in flat(res.stdout)


def test_inspect_activations_reports_relu_zeros_per_layer():
    res = invoke("inspect", "mlp", "--activations", "--samples", "3", "--json")
    assert res.exit_code == 0, res.output
    layers = {d["fqn"]: d for d in json.loads(res.stdout)["result"]["layers"]}
    assert list(layers) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert layers["fc1.weight"]["zero"] == 0.0  # the model input
    for fqn in ("fc2.weight", "fc3.weight"):  # each reads a ReLU
        assert layers[fqn]["producer"] == "relu" and 0.2 < layers[fqn]["zero"] < 0.8, layers[fqn]
    table = invoke("inspect", "mlp", "--activations", "--samples", "2")
    assert table.exit_code == 0 and "near zero" in table.stdout and "relu" in table.stdout


def test_inspect_json_is_valid_json():
    res = invoke("inspect", "mlp", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # stdout holds the JSON alone
    assert (doc["command"], doc["ok"], doc["exit_code"], doc["error"]) == ("inspect", True, 0, None)
    data = doc["result"]
    assert data["model"] == "mlp"
    weights = {w["fqn"]: w for w in data["weights"]}
    assert list(weights) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    fc1 = weights["fc1.weight"]
    assert (fc1["layer"], fc1["role"], fc1["shape"], fc1["params"]) == ("fc1", "linear", [256, 64], 256 * 64)
    assert fc1["reduction_axis"] == 1 and fc1["output_axis"] == 0
    assert data["not_prunable"] == {}


# -- sparsify -----------------------------------------------------------------------------


def test_sparsify_writes_program_report_and_recipe(tmp_path: Path, recipe_24: Path):
    out = tmp_path / "out"
    res = invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", out)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [".sparsecc-output", "program.pt2", "recipe.yaml", "report.json"]

    report = json.loads((out / "report.json").read_text())
    assert report["model"] == "mlp"
    assert report["summary"]["sparse_layers"] == 3 == report["summary"]["prunable_layers"]
    for row in report["layers"]:
        assert (row["status"], row["pattern"], row["target"]) == ("sparse", "2:4", 0.5)
        assert row["achieved"] == pytest.approx(0.5, rel=1e-9)
    assert report["summary"]["overall_sparsity"] == pytest.approx(0.5, rel=1e-9)

    assert sparsecc.load_recipe(out / "recipe.yaml") == sparsecc.load_recipe(recipe_24)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["pattern"] == "2:4"

    # The saved program is folded by default, keeps its specs and obeys 2:4.
    program = sparsecc.load_program(out / "program.pt2")
    specs = sparsecc.mask_specs(program)
    assert set(specs) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    for fqn in specs:
        w = program.state_dict[fqn]
        assert int((w.reshape(-1, 4) != 0).sum(1).max()) <= 2, fqn
    assert program.module()(torch.randn(5, 64)).shape == (5, 10)

    # The report is printed too.
    assert "3/3 layers sparse" in flat(res.stdout)
    assert "wrote" in res.stdout


def test_sparsify_no_fold_keeps_masks_in_graph(tmp_path: Path, recipe_24: Path):
    out = tmp_path / "out"
    res = invoke("sparsify", "mlp", "-r", recipe_24, "-o", out, "--no-fold")
    assert res.exit_code == 0, res.output
    program = sparsecc.load_program(out / "program.pt2")
    assert {k for k in program.constants if k.endswith("_mask")} == {
        "fc1.weight_mask", "fc2.weight_mask", "fc3.weight_mask"
    }


def test_sparsify_refuses_existing_folder_then_force_replaces(tmp_path: Path, recipe_24: Path):
    out = tmp_path / "out"
    assert invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", out).exit_code == 0
    before = _listing(out)

    res = invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", out)
    assert res.exit_code == 2
    msg = flat(res.output)
    assert str(out) in msg and "exists" in msg and "--force" in msg
    assert _listing(out) == before

    # --force replaces an earlier output of sparsecc (it holds the output marker) ...
    r90 = tmp_path / "r90.yaml"
    r90.write_text("pattern: unstructured\nsparsity: 0.9\n")
    res = invoke("sparsify", "mlp", "--recipe", r90, "--out", out, "--force")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert [row["pattern"] for row in report["layers"]] == ["unstructured"] * 3
    assert all(row["achieved"] == pytest.approx(0.9, abs=1e-3) for row in report["layers"])
    assert sparsecc.load_recipe(out / "recipe.yaml").sparsity == 0.9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "r24.yaml", "r90.yaml"]

    # ... but never a folder of the user's own files
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    res = invoke("sparsify", "mlp", "--recipe", r90, "--out", mine, "--force")
    assert res.exit_code == 2 and "not an earlier output" in flat(res.output)
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.txt"] and (mine / "thesis.txt").read_text() == "x"


def test_output_folder_has_ordinary_permissions(tmp_path: Path, recipe_24: Path):
    out = tmp_path / "out"
    assert invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", out).exit_code == 0
    plain = tmp_path / "plain"
    plain.mkdir()
    assert oct(out.stat().st_mode & 0o777) == oct(plain.stat().st_mode & 0o777)


def test_bad_recipe_leaves_nothing_behind(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pattern: unstructured\nsparsity: 1.2\n")
    out = tmp_path / "sub" / "out"
    res = invoke("sparsify", "mlp", "--recipe", bad, "--out", out)
    assert res.exit_code != 0
    msg = flat(res.output)
    assert "'sparsity'" in msg and "1.2" in msg
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_recipe_not_fitting_the_model_leaves_nothing_behind(tmp_path: Path):
    r = tmp_path / "r.yaml"
    r.write_text('pattern: unstructured\nsparsity: 0.5\nlayers:\n  exclude: ["encoder.*"]\n')
    out = tmp_path / "out"
    res = invoke("sparsify", "mlp", "--recipe", r, "--out", out)
    assert res.exit_code != 0
    msg = flat(res.output)
    assert "layers.exclude" in msg and "encoder.*" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml"]


def test_failure_while_writing_leaves_no_temp_folder_and_keeps_old_output(
    tmp_path: Path, recipe_24: Path, monkeypatch: pytest.MonkeyPatch
):
    out = tmp_path / "out"
    out.mkdir()  # an empty folder: the one existing folder --force may replace besides a bundle
    (tmp_path / "keep").mkdir()
    assert invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", tmp_path / "keep" / "x").exit_code == 0
    before = _listing(out)

    import sparsecc.core.program

    def failing_save(program, path):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sparsecc.core.program, "save_program", failing_save)
    res = invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", out, "--force")
    assert res.exit_code != 0
    assert "disk full" in res.output
    assert _listing(out) == before and out.is_dir()  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "out", "r24.yaml"]

    fresh = tmp_path / "fresh"
    res = invoke("sparsify", "mlp", "--recipe", recipe_24, "--out", fresh)
    assert res.exit_code == 1 and "disk full" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep", "out", "r24.yaml"]


# -- MODEL references -----------------------------------------------------------------------


FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(12, 32)
            self.dec = nn.Linear(32, 8)

        def forward(self, x):
            return self.dec(torch.tanh(self.enc(x)))


    def make():
        torch.manual_seed(0)
        return Tiny().eval(), (torch.randn(2, 12),)
    """
)


def test_model_from_file_factory(tmp_path: Path, recipe_24: Path):
    f = tmp_path / "my_model.py"
    f.write_text(FACTORY)
    res = invoke("inspect", f"{f}:make", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["result"]
    assert [(w["fqn"], w["shape"]) for w in data["weights"]] == [("enc.weight", [32, 12]), ("dec.weight", [8, 32])]

    out = tmp_path / "out"
    res = invoke("sparsify", f"{f}:make", "--recipe", recipe_24, "--out", out)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert [(r["layer"], r["status"]) for r in report["layers"]] == [("enc", "sparse"), ("dec", "sparse")]


def test_model_file_without_the_factory(tmp_path: Path):
    f = tmp_path / "my_model.py"
    f.write_text(FACTORY)
    res = invoke("inspect", f"{f}:nope")
    assert res.exit_code != 0
    assert "'nope'" in flat(res.output)


def test_unknown_model_lists_zoo_names():
    res = invoke("inspect", "no-such-model")
    assert res.exit_code != 0
    msg = flat(res.output)
    assert "'no-such-model'" in msg
    for name in ("mlp", "resnet", "mobilenet", "vit", "bert", "llama", "hf-bert-tiny", "hf-llama-tiny"):
        assert name in list_models()
        assert name in msg, name


def test_unknown_model_for_sparsify_leaves_nothing(tmp_path: Path, recipe_24: Path):
    out = tmp_path / "out"
    res = invoke("sparsify", "no-such-model", "--recipe", recipe_24, "--out", out)
    assert res.exit_code != 0
    assert "'no-such-model'" in flat(res.output) and "mlp" in res.output
    assert not out.exists()


# -- help ---------------------------------------------------------------------------------


def _commands() -> dict:
    return typer.main.get_command(app).commands


@pytest.mark.parametrize("command", sorted(_commands()))
def test_help_of_each_command_mentions_its_options(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output and command in res.output
    options = [  # typer's own click types: options are the params with a ``--`` spelling
        opt for p in _commands()[command].params if not getattr(p, "hidden", False)
        for opt in (*p.opts, *getattr(p, "secondary_opts", ())) if opt.startswith("--")
    ]
    assert options or command in ("models", "recipes"), command
    for opt in options:
        assert opt in res.output, opt


@pytest.mark.parametrize(
    "command,options",
    [("inspect", ["--json"]), ("sparsify", ["--recipe", "--out", "--fold", "--no-fold", "--force"])],
)
def test_help_names_the_documented_options(command, options):
    assert command in _commands()
    res = invoke(command, "--help")
    assert res.exit_code == 0, res.output
    for opt in options:
        assert opt in res.output, opt


def test_top_level_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for command in ("inspect", "sparsify", "models"):
        assert command in res.output


def test_models_lists_reference_models():
    res = invoke("models")
    assert res.exit_code == 0
    for name in ("mlp", "resnet", "hf-llama-tiny"):
        assert name in res.stdout


def test_main_runs_the_app(capsys):
    from sparsecc.cli import main

    with pytest.raises(SystemExit) as info:
        main(["models"])
    assert info.value.code in (0, None)
    assert "mlp" in capsys.readouterr().out



def test_a_ctrl_c_after_a_command_does_not_stop_a_later_one_in_the_same_process(tmp_path, capsys):
    """main() records interrupts for its own command only: a Ctrl-C that other code of this
    process handled later (a notebook cell, a test) must not make the next compile exit 130."""
    import os
    import signal
    import time

    from sparsecc.bundle.staging import interrupt_guard
    from sparsecc.cli import main

    with pytest.raises(SystemExit):
        main(["models"])
    with pytest.raises(KeyboardInterrupt):
        with interrupt_guard():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises in the main thread before this ends
    res = invoke("sparsify", "mlp", "--recipe", "2of4", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out").is_dir()
