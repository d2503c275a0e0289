"""One error path: every failure is ``error: MESSAGE`` and the exit code of its kind."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import sparsecc.core.analyze
from sparsecc.cli import app
from sparsecc.core.program import ProgramFileError, load_program
from sparsecc.errors import DependencyError, SparseccError, UsageError, VerificationError

runner = CliRunner()
ENV = {"COLUMNS": "400"}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], env=ENV)


def flat(text: str) -> str:
    return " ".join(text.split())


def _raise_in_inspect(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> None:
    def boom(program):
        raise error

    monkeypatch.setattr(sparsecc.core.analyze, "find_prunable_weights", boom)


@pytest.mark.parametrize("error,code", [
    (SparseccError("lowering fc1 failed"), 1),
    (UsageError("bad --shapes"), 2),
    (DependencyError("pip install 'sparsecc[onnx]'"), 3),
    (VerificationError("fc1.weight group 3 has 3 nonzeros"), 4),
])
def test_each_error_kind_has_its_exit_code(monkeypatch, error, code):
    _raise_in_inspect(monkeypatch, error)
    res = invoke("inspect", "mlp")
    assert res.exit_code == code, res.output
    assert f"error: {error}" in flat(res.output)
    assert "Traceback" not in res.output  # a reported failure is a message, not a traceback


def test_interrupt_exits_130(monkeypatch):
    _raise_in_inspect(monkeypatch, KeyboardInterrupt())
    assert invoke("inspect", "mlp").exit_code == 130


def test_unexpected_exception_gives_a_hint_and_the_traceback_with_v(monkeypatch):
    _raise_in_inspect(monkeypatch, ZeroDivisionError("division by zero"))
    res = invoke("inspect", "mlp")
    assert res.exit_code == 1
    msg = flat(res.output)
    assert "error: ZeroDivisionError: division by zero" in msg and "-v" in msg and "test_errors.py" in msg
    assert "Traceback" not in res.output
    res = invoke("-v", "inspect", "mlp")
    assert res.exit_code == 1 and "Traceback (most recent call last)" in res.output
    res = invoke("inspect", "mlp", "-v")  # a global flag after the verb works too
    assert res.exit_code == 1 and "Traceback (most recent call last)" in res.output


def test_error_with_json_writes_the_error_envelope(monkeypatch, tmp_path: Path):
    _raise_in_inspect(monkeypatch, VerificationError("fc1.weight group 3"))
    res = invoke("inspect", "mlp", "--json", tmp_path / "r.json")
    assert res.exit_code == 4
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["ok"] is False and doc["exit_code"] == 4 and doc["result"] is None
    assert doc["error"] == {"type": "VerificationError", "message": "fc1.weight group 3", "exit_code": 4}


def test_usage_errors_exit_2():
    assert invoke("inspect", "no-such-model").exit_code == 2
    assert invoke("compile", "mlp", "-o", "x", "--bogus-flag").exit_code == 2  # click's own usage errors too
    assert invoke("bench", "nothing.txt").exit_code == 2
    assert invoke("-v", "-q", "models").exit_code == 2


def test_no_command_catches_exception_broadly():
    """The one handler lives in app.py; a verb that catches Exception would swallow the exit codes."""
    root = Path(__file__).resolve().parents[2] / "sparsecc" / "cli"
    for f in root.glob("*.py"):
        text = f.read_text()
        if f.name == "app.py":
            assert text.count("except Exception") == 1, f  # the handler itself
        else:
            assert "except Exception" not in text, f


# -- a model file that raises, or runs code at import --------------------------------------


RAISING = textwrap.dedent(
    """
    from pathlib import Path

    def boom():
        raise RuntimeError("boom")

    def make():
        Path(__file__).with_name("factory-was-called").write_text("yes")
        import torch
        return torch.nn.Linear(4, 4), (torch.randn(1, 4),)
    """
)


def test_factory_that_raises_names_the_reference_and_type(tmp_path: Path):
    f = tmp_path / "my_model.py"
    f.write_text(RAISING)
    res = invoke("inspect", f"{f}:boom")
    assert res.exit_code == 1
    msg = flat(res.output)
    assert f"{f}:boom" in msg and "RuntimeError: boom" in msg and "the factory raised" in msg


def test_missing_recipe_and_unknown_target_are_reported_before_the_model_loads(tmp_path: Path):
    f = tmp_path / "my_model.py"
    f.write_text(RAISING)
    marker = tmp_path / "factory-was-called"
    res = invoke("compile", f"{f}:make", "-r", tmp_path / "missing.yaml", "-t", "onnx", "-o", tmp_path / "b")
    assert res.exit_code == 2 and "missing.yaml" in flat(res.output)
    assert "built-in" in flat(res.output)
    res = invoke("compile", f"{f}:make", "-r", "2of4", "-t", "onnx,tpu", "-o", tmp_path / "b")
    assert res.exit_code == 2 and "unknown target tpu" in flat(res.output) and "onnx" in flat(res.output)
    assert not marker.exists()  # neither ran the user's factory


def test_binary_recipe_file_is_named(tmp_path: Path):
    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    res = invoke("sparsify", "mlp", "-r", bad, "-o", tmp_path / "out")
    assert res.exit_code == 2
    msg = flat(res.output)
    assert str(bad) in msg and "not a text YAML file" in msg and "UnicodeDecodeError" not in msg


def test_corrupt_program_file_is_named(tmp_path: Path):
    bad = tmp_path / "program.pt2"
    bad.write_bytes(b"not a zip archive" * 4)
    with pytest.raises(ProgramFileError, match=str(bad)):
        load_program(bad)
    with pytest.raises(ProgramFileError, match="no such program file"):
        load_program(tmp_path / "absent.pt2")


def test_torch_sparse_program_points_to_load_sparse_program(tmp_path: Path, monkeypatch):
    """Without the kernels registered, loading the torch-sparse program says which loader to use."""
    folder = tmp_path / "torch-sparse"
    folder.mkdir()
    prog = folder / "program.pt2"
    program = torch.export.export(torch.nn.Linear(4, 4), (torch.randn(1, 4),))
    torch.export.save(program, prog)
    real_load = torch.export.load

    def load_without_kernels(path, **kw):  # what torch says when the archive names an unregistered op
        raise RuntimeError("Could not find schema for sparsecc::bsr_linear")

    monkeypatch.setattr(torch.export, "load", load_without_kernels)
    monkeypatch.setattr(torch._C, "_dispatch_get_all_op_names", lambda: ["aten::add"])
    with pytest.raises(ProgramFileError, match="load_sparse_program") as info:
        load_program(prog)
    assert str(prog) in str(info.value)
    monkeypatch.setattr(torch.export, "load", real_load)
    assert load_program(prog) is not None


def test_corrupt_pte_is_named(tmp_path: Path):
    pytest.importorskip("executorch")
    from sparsecc.backends.base import TensorSpec
    from sparsecc.backends.executorch.runtime import ExecuTorchRunner, PteFileError

    bad = tmp_path / "model.pte"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(PteFileError, match=str(bad)):
        ExecuTorchRunner(bad, [TensorSpec("x", (1, 4), "float32")])
    res = invoke("bench", bad)  # and through the CLI, as a plain file
    assert res.exit_code == 1 and str(bad) in flat(res.output)


def test_load_recipe_names_a_missing_or_binary_file(tmp_path: Path):
    from sparsecc.plan.recipe import RecipeFileError, load_recipe

    with pytest.raises(RecipeFileError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.yaml")
    bad = tmp_path / "r.yaml"
    bad.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(RecipeFileError, match=f"{bad} is not a text YAML file"):
        load_recipe(bad)
    with pytest.raises(FileNotFoundError):  # the built-in base callers may catch
        load_recipe(tmp_path / "absent.yaml")
