"""Running a ``.pte``: input checks, dim bounds, and the once-per-process thread count."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("executorch")

from sparsecc.backends.base import InputMismatchError  # noqa: E402
from sparsecc.backends.executorch import ThreadCountError  # noqa: E402
from sparsecc.backends.executorch.runtime import set_threads_once, thread_count  # noqa: E402


@pytest.fixture(scope="module")
def mlp_runner(cases, backend):
    return backend.load(cases["mlp"].artifact)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ([], r"expected 1 inputs \(x: float32\[batch, 16\]\), got 0"),
        ([torch.randn(4, 15)], r"x: float32\[batch, 16\]: got shape \[4, 15\]"),
        ([torch.randn(4, 16, 1)], r"got shape \[4, 16, 1\]"),
        ([torch.randn(4, 16, dtype=torch.float64)], r"got dtype float64"),
        ([torch.randn(65, 16)], r"batch=65 at axis 0 is above the artifact's bound 64"),
    ],
)
def test_bad_inputs_name_the_cause(mlp_runner, inputs, match):
    with pytest.raises(InputMismatchError, match=match):
        mlp_runner(inputs)


def test_run_validates_before_loading(cases, backend):
    with pytest.raises(InputMismatchError, match="got dtype int64"):
        backend.run(cases["mlp"].artifact, [torch.ones(4, 16, dtype=torch.int64)])


def test_non_contiguous_input(cases, mlp_runner):
    x = torch.randn(16, 6).t()
    (got,) = mlp_runner([x])
    torch.testing.assert_close(got, cases["mlp"].model(x).detach(), rtol=1e-4, atol=1e-5)


def test_thread_count_cannot_change_once_a_program_is_loaded(mlp_runner):
    current = thread_count()
    set_threads_once(current)  # asking for what it has is fine
    set_threads_once(None)
    with pytest.raises(ThreadCountError, match="own process"):
        set_threads_once(current + 1)
    with pytest.raises(ValueError, match=">= 1"):
        set_threads_once(0)


_CHILD = """
import json, sys, torch
from pathlib import Path
from sparsecc.backends.base import Artifact
from sparsecc.backends.executorch import ExecuTorchBackend
from sparsecc.backends.executorch.runtime import thread_count
art = Artifact.from_dict(json.loads(sys.argv[1]), Path(sys.argv[2]))
runner = ExecuTorchBackend().load(art, threads=1)
(out,) = runner([torch.zeros(3, 16)])
print(json.dumps({"threads": thread_count(), "shape": list(out.shape)}))
"""


def test_threads_are_set_before_the_first_load_in_a_fresh_process(cases):
    art = cases["mlp"].artifact
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(art.to_dict()), str(art.root)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"threads": 1, "shape": [3, 8]}
