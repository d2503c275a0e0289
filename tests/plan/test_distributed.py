"""Data-parallel calibration under torchrun (gloo, loopback) reproduces the single-process result bit for bit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sparsecc.plan.activation_stats import Stats

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).with_name("torchrun")

# One script, run by one process and by two torchrun ranks: SparseGPT 2:4 on the zoo's tiny
# decoder (q, k and v share one Hessian; their owners differ), sequential or one-shot.
WORKER = textwrap.dedent("""
    import json, os, sys, torch
    from sparsecc.core.capture import capture
    from sparsecc.flows.sparsify import sparsify
    from sparsecc.models import get_model
    from sparsecc.plan.calibrate import CalibrationData
    from sparsecc.plan.distributed import start_ranks

    out, sequential = sys.argv[1], sys.argv[2] == "1"
    ranks = start_ranks() if "WORLD_SIZE" in os.environ else None
    spec = get_model("llama")
    torch.manual_seed(0)
    batches = [spec.make_inputs(2, 8) for _ in range(16)]
    program = capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes)
    recipe = {"pattern": "2:4", "criterion": "sparsegpt", "layers": {"min_params": 256},
              "calibration": {"sequential": sequential}}
    result = sparsify(program, recipe, fold=True, calibration=CalibrationData(batches), ranks=ranks)
    state = {k: v.detach() for k, v in result.program.state_dict.items()}
    rank = 0 if ranks is None else ranks.rank
    torch.save(state, f"{out}.{rank}.pt")
    if ranks is not None:
        with open(f"{out}.{rank}.json", "w") as f:
            json.dump({"owners": ranks.owner_of, "bytes": ranks.comm_bytes()}, f)
        ranks.close()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    # torchrun gives each rank one intra-op thread; the single process gets the same.
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(*args: str) -> list[str]:
    return [str(TORCHRUN), "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
            "--master-port", str(_free_port()), *args]


@pytest.mark.parametrize("sequential", [True, False], ids=["sequential", "one-shot"])
def test_two_ranks_give_the_single_process_sparsegpt_result_bit_for_bit(tmp_path, sequential):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    flag = "1" if sequential else "0"
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "single"), flag],
                            env=_env(), capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run(_torchrun(str(script), str(tmp_path / "dist"), flag),
                          env=_env(), capture_output=True, text=True, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]

    want = torch.load(tmp_path / "single.0.pt")
    for rank in (0, 1):  # every rank ends with the same program
        got = torch.load(tmp_path / f"dist.{rank}.pt")
        assert sorted(got) == sorted(want)
        for k in want:
            assert torch.equal(got[k], want[k]), (rank, k, float((got[k] - want[k]).abs().max()))
    info = json.loads((tmp_path / "dist.0.json").read_text())
    owners = info["owners"]
    assert set(owners.values()) == {0, 1}, "solves are spread over both ranks"
    qkv = [f for f in owners if f.endswith(("q.weight", "k.weight", "v.weight"))
           or f.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight"))]
    assert qkv and len({owners[f] for f in qkv}) == 2
    pruned = [k for k in want if k in owners]
    assert pruned and all(float((want[k] == 0).float().mean()) >= 0.5 for k in pruned)
    assert info["bytes"] and all(n > 0 for n in info["bytes"].values())


def test_cli_sparsify_under_torchrun_writes_once_and_matches_one_process(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("pattern: '2:4'\ncriterion: sparsegpt\nlayers: {min_params: 1024}\n"
                      "calibration: {samples: 16, seq_len: 32, sequential: true}\n")
    cmd = ["-m", "sparsecc", "sparsify", "mlp", "--recipe", str(recipe), "--out"]
    single = subprocess.run([sys.executable, *cmd, str(tmp_path / "single")], env=_env(),
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    dist = subprocess.run(_torchrun(*cmd, str(tmp_path / "dist"), "--distributed"), env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert dist.stdout.count("wrote ") == 1, "only rank 0 writes and reports"
    files = sorted(p.name for p in (tmp_path / "dist").iterdir())
    assert files == sorted(p.name for p in (tmp_path / "single").iterdir()) and "program.pt2" in files
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no staging left behind"

    from sparsecc.core.program import load_program

    a = load_program(tmp_path / "single" / "program.pt2").state_dict
    b = load_program(tmp_path / "dist" / "program.pt2").state_dict
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_distributed_without_torchrun_says_how_to_launch(tmp_path):
    env = {k: v for k, v in _env().items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "sparsecc", "sparsify", "mlp", "--recipe", "2of4",
                        "--out", str(tmp_path / "o"), "--distributed"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "torchrun" in r.stderr + r.stdout and "MASTER_ADDR" in r.stderr + r.stdout
    assert not (tmp_path / "o").exists()


def test_statistics_do_not_depend_on_how_the_batches_are_split():
    """Float64 running sums: the split two ranks make sums to the one-process statistics, bit for bit."""
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(64, 300, generator=g) * (1 + i) for i in range(6)]  # 300 wide: chunked Hessian
    whole = Stats(frozenset({"hessian", "act_sq"}))
    for m in mats:
        whole.add(m)
    halves = [Stats(frozenset({"hessian", "act_sq"})) for _ in range(2)]
    for i, m in enumerate(mats):
        halves[i >= 3].add(m)
    halves[0].hessian += halves[1].hessian  # what the all-reduce does, in float64
    halves[0].rows += halves[1].rows
    halves[0]._read = None
    a, b = whole.as_dict(), halves[0].as_dict()
    assert a["rows"] == b["rows"] == 6 * 64
    assert a["hessian"].dtype == torch.float32
    assert torch.equal(a["hessian"], b["hessian"]) and torch.equal(a["act_sq"], b["act_sq"])
    assert a is whole.as_dict(), "one tensor per statistics object, so readers share one factor"
