"""What users of trtexec and friends expect: help, --json, --version, named recipes, --shapes, progress, noise."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import typer
from rich.console import Console
from typer.testing import CliRunner

from sparsecc import __version__
from sparsecc.cli import app
from sparsecc.cli.activity import Activity
from sparsecc.cli.shapes import InputShape, parse_shapes
from sparsecc.errors import UsageError

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(typer.main.get_command(app).commands)


def invoke(*args: object, columns: int = 400):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": str(columns)})


# -- help -----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_fits_80_columns_without_percent_signs_or_emoji(command):
    res = invoke(*([command] if command else []), "--help", columns=200)
    assert res.exit_code == 0, res.output
    long = [line for line in res.output.splitlines() if len(line) > 80]
    assert not long, long
    assert "%%" not in res.output
    assert not re.search(r"[\U0001F300-\U0001FAFF\u2600-\u27BF]", res.output)  # rich turns :4: etc. into emoji


@pytest.mark.parametrize("command", COMMANDS)
def test_metavars_are_capitals(command):
    cmd = typer.main.get_command(app).commands[command]
    for p in cmd.params:
        if getattr(p, "is_flag", False) or getattr(p, "hidden", False):
            continue
        metavar = p.metavar or p.name.upper()
        assert metavar == metavar.upper(), (command, p.name, metavar)


def test_top_level_help_documents_exit_codes_and_global_flags():
    res = invoke("--help")
    text = " ".join(res.output.split())
    for code in ("0 ok", "1 a step failed", "2 usage", "3 missing dependency", "4 verification failed",
                 "130 interrupted"):
        assert code in text, code
    for flag in ("--verbose", "-q", "--version"):
        assert flag in text


def test_recover_help_names_every_training_source():
    from sparsecc.data import TRAINING_SOURCES

    text = " ".join(invoke("recover", "--help", columns=200).output.replace("│", " ").split())
    for name in ("calibration", "synthetic", *TRAINING_SOURCES):
        assert re.search(rf"\b{name}\b", text), name


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"sparsecc {__version__}"


# -- --json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS)
def test_every_verb_takes_json(command):
    cmd = typer.main.get_command(app).commands[command]
    assert any("--json" in getattr(p, "opts", ()) for p in cmd.params), command


@pytest.mark.parametrize("args", [("models",), ("recipes",), ("inspect", "mlp")])
def test_json_has_one_shape_on_stdout_and_in_a_file(args, tmp_path: Path):
    res = invoke(*args, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)  # nothing else on stdout
    assert set(doc) == {"sparsecc", "command", "ok", "exit_code", "result", "error"}
    assert (doc["command"], doc["ok"], doc["exit_code"], doc["sparsecc"]) == (args[0], True, 0, __version__)
    res = invoke(*args, "--json", tmp_path / "out.json")
    assert res.exit_code == 0
    assert json.loads((tmp_path / "out.json").read_text()) == doc


# -- named recipes ----------------------------------------------------------------------------


def test_recipes_lists_every_builtin_with_a_description():
    res = invoke("recipes", "--json")
    listed = json.loads(res.stdout)["result"]
    assert set(listed) == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    assert all(v["description"] for v in listed.values()), listed
    assert "2:4" in listed["2of4"]["description"]


def test_named_recipe_works_from_another_folder(tmp_path: Path):
    """A subprocess started in an empty folder: `-r 2of4` finds the shipped recipe."""
    res = subprocess.run(
        [sys.executable, "-m", "sparsecc", "sparsify", "mlp", "-r", "2of4", "-o", "out", "-q"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {r["pattern"] for r in report["layers"] if r["status"] == "sparse"} == {"2:4"}


def test_a_file_named_like_a_recipe_wins_over_the_builtin(tmp_path: Path, monkeypatch):
    (tmp_path / "2of4").write_text("pattern: unstructured\nsparsity: 0.9\n")
    monkeypatch.chdir(tmp_path)
    res = invoke("sparsify", "mlp", "-r", "2of4", "-o", "out", "--json")
    assert res.exit_code == 0, res.output
    layers = json.loads(res.stdout)["result"]["report"]["layers"]
    assert {r["pattern"] for r in layers if r["status"] == "sparse"} == {"unstructured"}


# -- --shapes -------------------------------------------------------------------------------


def test_parse_shapes():
    assert parse_shapes("input_ids:1x128") == {"input_ids": InputShape("input_ids", (1, 128), (1, 128), (1, 128))}
    s = parse_shapes("input_ids:1x16,1x128,4x256,attention_mask:1x128")
    assert s["input_ids"] == InputShape("input_ids", (1, 16), (1, 128), (4, 256))
    assert s["input_ids"].dynamic_axes() == {0: (1, 4), 1: (16, 256)}
    assert s["attention_mask"].dynamic_axes() == {}
    assert parse_shapes(None) == {} and parse_shapes("") == {}


@pytest.mark.parametrize("text,why", [
    ("1x128", "must start with an input name"),
    ("x:1x128,1x64", "give one shape, or three"),
    ("x:1xabc", "not a shape"),
    ("x:0x4", ">= 1"),
    ("x:1x16,1x8,1x32", "min <= opt <= max"),
    ("x:1x16,1x32,1x32x2", "same rank"),
    ("x:1x4,x:1x4", "given twice"),
])
def test_bad_shapes_are_usage_errors(text, why):
    with pytest.raises(UsageError, match=why):
        parse_shapes(text)


FILE_MODEL = """
import torch
from torch import nn


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 128)
        self.fc = nn.Linear(128, 64)

    def forward(self, input_ids):
        return self.fc(self.emb(input_ids)).mean(1)


def make():
    torch.manual_seed(0)
    return Tagger().eval(), (torch.randint(0, 50, (1, 8)),)
"""


def test_shapes_set_example_and_dynamic_dims_of_compile(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    f = tmp_path / "tagger.py"
    f.write_text(FILE_MODEL)
    out = tmp_path / "bundle"
    res = invoke("compile", f"{f}:make", "-r", "2of4", "-t", "onnx", "-o", out, "--no-dense-reference",
                 "--shapes", "input_ids:1x4,2x16,4x32")
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"batch"' in text and '"seq"' in text, text[:2000]
    import numpy as np

    with np.load(out / "inputs" / "example.npz") as z:
        assert [z[k].shape for k in z.files] == [(2, 16)]
    res = invoke("compile", f"{f}:make", "-t", "onnx", "-o", tmp_path / "b2", "--shapes", "mask:1x4")
    assert res.exit_code == 2 and "input_ids" in " ".join(res.output.split())


# -- bench on plain files ---------------------------------------------------------------------


def test_bench_plain_onnx_files_and_verdict(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    bundle = tmp_path / "b"
    res = invoke("compile", "mlp", "-r", "2of4", "-t", "onnx", "-o", bundle)
    assert res.exit_code == 0, res.output
    sparse = next((bundle / "onnx").glob("*.onnx"))
    dense = next((bundle / "dense" / "onnx").glob("*.onnx"))
    res = invoke("bench", sparse, "--runs", "5", "--warmup", "1", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)["result"]
    (only,) = data["files"]
    assert only["backend"] == "onnx" and only["latency_ms"]["p50"] > 0 and only["comparison"] is None
    res = invoke("bench", dense, sparse, "--runs", "8", "--warmup", "1", "--md", tmp_path / "b.md",
                 "--shapes", "x:4x64")
    assert res.exit_code == 0, res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("verdict: b/onnx/model.onnx") and last.endswith(" dense/onnx/model.onnx"), last
    assert "| file |" in (tmp_path / "b.md").read_text()
    res = invoke("bench", sparse, "--shapes", "x:4x65", "--runs", "2")
    assert res.exit_code == 2 and "declared shape" in res.output


def test_bench_warns_on_a_loaded_machine(tmp_path: Path, monkeypatch):
    import os

    import sparsecc.cli.bench as bench_cli

    monkeypatch.setattr(os, "getloadavg", lambda: (3.2, 1.0, 1.0))
    assert bench_cli._warn_if_loaded() == 3.2
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 1.0, 1.0))
    assert bench_cli._warn_if_loaded() == 0.2


def test_speed_verdict():
    from sparsecc.cli.bench import speed_verdict

    fast = {"ratio": 1.8, "ci95": [1.7, 1.9], "label": "faster"}
    same = {"ratio": 1.01, "ci95": [0.97, 1.05], "label": "no measurable change"}
    assert speed_verdict([("onnx", fast)]) == "verdict: sparse is 1.80x faster than dense on onnx"
    assert speed_verdict([("onnx", same)]).startswith("verdict: no speed-up")
    assert "no speed-up on executorch" in speed_verdict([("onnx", fast), ("executorch", same)])


# -- progress and noise -----------------------------------------------------------------------


def test_heartbeat_prints_while_a_step_runs_silently():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    with Activity(console, "compile mlp", every=0.2) as act:
        act.step("lowering onnx")
        act.detail("fc2")
        time.sleep(0.75)
    lines = buf.getvalue().splitlines()
    assert lines[0].endswith("compile mlp: lowering onnx") and lines[0].startswith("[")
    beats = [line for line in lines if "still lowering onnx (fc2)" in line]
    assert len(beats) >= 2, lines
    quiet = io.StringIO()
    with Activity(Console(file=quiet), "x", every=0.1, quiet=True) as act:
        act.step("y")
        time.sleep(0.3)
    assert quiet.getvalue() == ""


def test_progress_lines_on_a_pipe_and_none_with_q():
    res = invoke("inspect", "mlp")
    assert "mlp: capturing with torch.export" in res.output
    res = invoke("inspect", "mlp", "-q")
    assert "capturing" not in res.output and "fc1.weight" in res.output


def test_third_party_warnings_hidden_unless_v():
    from sparsecc.cli.noise import quiet_third_party

    def noisy() -> list:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("default")
            quiet_third_party(verbose)
            warnings.warn_explicit("torchao kernel not found", UserWarning, "torchao/x.py", 1, module="torchao.x")
            warnings.warn_explicit("LeafSpec is deprecated", FutureWarning, "torch/utils/_pytree.py", 1,
                                   module="torch.utils._pytree")
            warnings.warn_explicit("user warning", UserWarning, "mine.py", 1, module="mine")
        return [str(w.message) for w in seen]

    verbose = False
    assert noisy() == ["user warning"]
    verbose = True
    assert len(noisy()) == 3


def test_cpuinfo_lines_from_cpp_are_dropped_and_the_rest_kept():
    """fd 2 itself is filtered (ExecuTorch logs from C++); run in a subprocess with a real stderr."""
    code = (
        "import os, sys\n"
        "from sparsecc.cli.noise import filtered_stderr\n"
        "with filtered_stderr():\n"
        "    os.write(2, b'[cpuinfo_utils.cpp:71] Reading file /sys/x\\nkept line\\n')\n"
        "    sys.stderr.write('python line\\n')\n"
        "os.write(2, b'[cpuinfo_utils.cpp:9] after\\n')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stderr == "kept line\npython line\n[cpuinfo_utils.cpp:9] after\n"


def _stamp(line: str) -> float:
    """The elapsed seconds an Activity line starts with: ``[   9.6s] ...``."""
    return float(line.split("]", 1)[0].strip("[ s"))


@pytest.mark.slow
def test_a_piped_compile_prints_at_least_every_10_seconds(tmp_path: Path):
    """The ExecuTorch lowering of even a small MLP is one call of 20-30 s: the heartbeat fills it."""
    pytest.importorskip("executorch")
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparsecc", "compile", "mlp", "-r", "2of4", "-t", "executorch", "-o",
         str(tmp_path / "b"), "--no-dense-reference"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={"HF_HUB_OFFLINE": "1", "PATH": ""},
    )
    stamps = [time.monotonic()]
    lines = []
    for line in proc.stderr:  # a pipe, as in `make demo | tee`
        stamps.append(time.monotonic())
        lines.append(line.decode())
    assert proc.wait(timeout=600) == 0, "".join(lines)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) < 12, (max(gaps), lines)
    # a fast machine may lower in under 10 s; where the step ran longer, the heartbeat must have filled it
    lower_at = [i for i, line in enumerate(lines) if line.rstrip().endswith("executorch: lower")]
    assert lower_at, lines
    start, end = _stamp(lines[lower_at[0]]), _stamp(lines[lower_at[0] + 1])
    if end - start > 11:
        assert any("still executorch: lower" in line for line in lines), lines
    # the bundle's .pte is a plain file bench can time too
    # in its own process: ExecuTorch's thread pool is sized once per process, and another test of
    # this worker may have sized it already
    res = subprocess.run([sys.executable, "-m", "sparsecc", "bench", str(tmp_path / "b" / "executorch" / "model.pte"),
                          "--runs", "3", "--warmup", "1", "--json"], capture_output=True, text=True, timeout=600,
                         env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert res.returncode == 0, res.stderr
    (only,) = json.loads(res.stdout)["result"]["files"]
    assert only["backend"] == "executorch" and only["latency_ms"]["p50"] > 0
