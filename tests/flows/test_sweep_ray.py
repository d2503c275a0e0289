"""`sweep --ray`: the grid as Ray tasks on a local cluster gives the sequential sweep's table."""

from __future__ import annotations

import pytest

import sparsecc.data as ds
from sparsecc.flows import sweep as sw
from sparsecc.flows.sweep_ray import RayUnavailableError, connect
from sparsecc.quality.evaluate import EvalOptions


def _table(res: sw.SweepResult) -> list[tuple]:
    """Every column of the table but the timings."""
    return [(p.criterion, p.pattern, p.sparsity, p.achieved, p.metrics, p.quality, p.drop, p.error)
            for p in res.points]


def test_unreachable_ray_address_is_a_clear_error():
    with pytest.raises(RayUnavailableError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        connect("127.0.0.1:1")
    with pytest.raises(RayUnavailableError, match="expected HOST:PORT"):
        connect("nowhere")


@pytest.mark.slow
def test_ray_sweep_equals_the_sequential_sweep():
    try:
        ds.mnist_digits()
    except ds.DataUnavailableError as e:
        pytest.skip(str(e))
    ray = pytest.importorskip("ray", reason="Ray is installed by make (the ray extra)")
    kwargs = dict(criteria=["magnitude", "wanda"], patterns=["2:4", "unstructured"], sparsities=[0.5],
                  options=EvalOptions(max_digits=300),
                  recipe={"pattern": "2:4", "layers": {"min_params": 4096}, "calibration": {"samples": 4, "sequential": False}})
    seq = sw.sweep("mnist", **kwargs)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        par = sw.sweep("mnist", ray="local", **kwargs)
    finally:
        ray.shutdown()
    assert len(seq.points) == 4 and not any(p.error for p in seq.points)
    assert _table(par) == _table(seq)
    assert par.markdown().splitlines()[4:6] == seq.markdown().splitlines()[4:6]  # header rows
