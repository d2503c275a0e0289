"""Sweep grid points as Ray tasks: `sparsecc sweep --ray [ADDRESS]`.

The driver captures the model, evaluates it dense and builds the calibration
data (and, unless calibration is sequential, the statistics) once; those go
into Ray's object store (`ray.put`) and every task reads them from there.
Each task prunes and evaluates one point with ``num_cpus`` CPUs reserved,
capturing the model once per worker process (an export is deterministic, so
every worker prunes the program the driver would). Results come back in grid
order, so the table is the sequential sweep's.

A remote cluster (``--ray HOST:PORT`` or ``ray://HOST:10001``) needs sparsecc,
its models and data installed on every node; ``local`` starts a cluster in
this process with the machine's CPUs.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from sparsecc.errors import DependencyError, UsageError

__all__ = ["RayUnavailableError", "ray_points", "connect"]

# Per worker process: the model argument -> (spec, program), so a worker captures each model once.
_CAPTURED: dict[str, tuple[Any, Any]] = {}


class RayUnavailableError(UsageError, RuntimeError):
    """The Ray cluster cannot be reached or started."""


def connect(address: str, num_cpus: int | None = None) -> Any:
    """``ray`` after joining the cluster at ``address`` (``local``: start one here)."""
    try:
        import ray
    except ImportError as e:
        raise DependencyError("--ray needs Ray: pip install 'sparsecc[ray]' (make installs it)") from e
    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "")}}}
    _check_reachable(address)
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count(), **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError, TimeoutError, ValueError for a malformed address...
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address!r}: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''} (start one with `ray start --head`, "
                                  "or pass --ray local)") from None
    return ray


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens at (ray.init retries such an address for minutes)."""
    import socket

    if address in ("local", "auto"):
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailableError(f"--ray {address!r}: expected HOST:PORT, ray://HOST:PORT, auto or nothing")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise RayUnavailableError(f"cannot reach the Ray cluster at {address!r}: {e.strerror or e} (start one "
                                  "with `ray start --head`, or pass --ray alone for a local one)") from None


def _point(point_fn: Callable[..., Any], model: Any, point: tuple[str, str, float | None], base: dict[str, Any],
           task: str, opts: Any, ref_raw: Any, dense: dict[str, float], calibration: Any, stats: dict | None) -> Any:
    from sparsecc.core.capture import capture
    from sparsecc.quality.evaluate import _spec

    key = model if isinstance(model, str) else model.name
    if key not in _CAPTURED:
        spec = _spec(model)
        _CAPTURED[key] = (spec, capture(spec.model, spec.example_args, spec.example_kwargs, spec.dynamic_shapes))
    spec, program = _CAPTURED[key]
    crit, pat, s = point
    return point_fn(program, spec, base, crit, pat, s, task, opts, ref_raw, dense, calibration, stats)


def ray_points(point_fn: Callable[..., Any], address: str, model: Any, grid: Sequence[tuple[str, str, float | None]], base: dict[str, Any],
               task: str, opts: Any, ref_raw: Any, dense: dict[str, float], calibration: Any, stats: dict | None,
               *, num_cpus: float = 1.0, say: Callable[[str], None] = lambda msg: None) -> list[Any]:
    """``point_fn`` (`sweep.sweep_point`) at every grid point, each a Ray task with ``num_cpus`` CPUs.

    In grid order; a task that failed (its worker died) is returned as its exception.
    """
    ray = connect(address)
    say(f"{len(grid)} points as Ray tasks ({num_cpus:g} CPU each) on {ray.cluster_resources().get('CPU', 0):g} CPUs")
    shared = [ray.put(x) for x in (base, opts, ref_raw, dense, calibration, stats)]
    task_fn = ray.remote(num_cpus=num_cpus, max_retries=0)(_point)
    refs = [task_fn.remote(point_fn, model, point, *shared[:1], task, *shared[1:]) for point in grid]
    points = []
    for (crit, pat, s), ref in zip(grid, refs):
        try:
            points.append(ray.get(ref))
        except Exception as e:  # a worker died or the task raised: the caller records it
            points.append(e)
        p = points[-1]
        done = f"failed: {p}" if isinstance(p, Exception) else (p.error or f"{p.quality:.4g}")
        say(f"  {crit} {pat} {'' if s is None else f'{s:.0%}'}: {done}")
    return points
