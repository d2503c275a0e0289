"""`sparsecc bench --backend tensorrt`: the per-layer 2:4 report and dense-vs-sparse latency from a device build.

Reads what ``build.sh`` (edge bundle) or the ``tensorrt`` target left next
to the engines:

- ``sparse.build.log``: the builder's sparsity lines (eligible / picked);
- ``sparse.layers.json``: the inspector's layer JSON (tactics, ONNX origins);
  when it is missing but ``sparse.plan`` and the ``tensorrt`` module are at
  hand, the engine itself is inspected;
- ``{sparse,dense}.times.json``: trtexec's per-iteration times
  (``computeMs``: GPU time of one inference) for the latency ratio;
- ``{sparse,dense}.profile.json``: trtexec's per-layer average times.

and the bundle's ``expected_sparse_layers.json`` (step 1, from compile time).
trtexec runs the two engines one after the other, not interleaved: the
ratio's interval covers run-to-run noise within each run, not drift between
them; build.sh keeps the runs back to back on an otherwise idle GPU.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from sparsecc.backends.tensorrt.build_log import parse_build_log
from sparsecc.backends.tensorrt.bundle import EXPECTED_FILE
from sparsecc.backends.tensorrt.inspector import EngineInfo, load_engine_info, parse_engine_info
from sparsecc.backends.tensorrt.layer_map import LayerNameMap
from sparsecc.backends.tensorrt.report import layer_report, report_markdown, report_summary
from sparsecc.errors import UsageError

__all__ = ["tensorrt_bench", "tensorrt_markdown", "find_tensorrt_folder", "load_times", "load_profile",
           "SCHEMA", "TensorRTBenchError", "WARMUP_MS"]

SCHEMA = "sparsecc.tensorrt-bench/1"


class TensorRTBenchError(UsageError, ValueError):
    pass


def find_tensorrt_folder(bundle: Path) -> tuple[Path, Path]:
    """(folder with expected_sparse_layers.json, folder with the build outputs) of a bundle."""
    for sub in ("tensorrt-bundle", "tensorrt", "."):
        folder = (bundle / sub).resolve()
        if (folder / EXPECTED_FILE).is_file():
            # build.sh writes into tensorrt-bundle/build/; the tensorrt target keeps its engines beside the ONNX.
            has_build = (folder / "build").is_dir() or (folder / "build.sh").is_file()
            return folder, folder / "build" if has_build else folder
    raise TensorRTBenchError(
        f"{bundle} has no TensorRT artifact ({EXPECTED_FILE} not found in tensorrt-bundle/ or tensorrt/); "
        "compile with --target tensorrt-bundle (or tensorrt)")


# trtexec's default --warmUp: its exported trace includes the warm-up iterations.
WARMUP_MS = 200.0


def load_times(path: Path, warmup_ms: float = WARMUP_MS) -> list[float]:
    """GPU compute time per iteration (ms) from ``trtexec --exportTimes``, warm-up iterations dropped.

    The trace holds every iteration with ``startComputeMs`` counted from the
    first; those starting within ``warmup_ms`` are trtexec's warm-up (kept
    only if nothing else is left).
    """
    data = json.loads(path.read_text())
    key = "computeMs" if data and "computeMs" in data[0] else "latencyMs"
    timed = [rec for rec in data if float(rec.get("startComputeMs", warmup_ms)) >= warmup_ms] or data
    return [float(rec[key]) for rec in timed if key in rec]


def load_profile(path: Path) -> dict[str, float]:
    """Average ms per engine layer from ``trtexec --exportProfile`` (first record is ``{"count": N}``)."""
    data = json.loads(path.read_text())
    return {str(r["name"]): float(r.get("averageMs", r.get("timeMs", 0.0))) for r in data if "name" in r}


def _engine_info(build: Path) -> EngineInfo | None:
    layers = build / "sparse.layers.json"
    if layers.is_file():
        return load_engine_info(layers)
    plan = build / "sparse.plan"
    if plan.is_file():
        try:
            import tensorrt as trt  # the device's TensorRT, when it has the Python module
        except ImportError:
            return None
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            raise TensorRTBenchError(f"TensorRT could not load {plan} (built for another GPU or TensorRT version?)")
        return parse_engine_info(engine.create_engine_inspector().get_engine_information(
            trt.LayerInformationFormat.JSON))
    return None


def tensorrt_bench(bundle: str | Path, build_dir: str | Path | None = None, seed: int = 0) -> dict[str, Any]:
    """The per-layer report and, when the timings are there, the dense/sparse latency ratio."""
    from sparsecc.benchmarking.stats import bootstrap_ratio, summarize, verdict

    folder, build = find_tensorrt_folder(Path(bundle))
    build = Path(build_dir) if build_dir is not None else build
    expected = json.loads((folder / EXPECTED_FILE).read_text())
    log_path = build / "sparse.build.log"
    log = parse_build_log(log_path.read_text(errors="replace")) if log_path.is_file() else None
    info = _engine_info(build)
    if log is None and info is None:
        raise TensorRTBenchError(
            f"no TensorRT build outputs in {build}: run build.sh on the device first "
            "(it writes sparse.build.log, sparse.layers.json, *.times.json, *.profile.json)")
    names = LayerNameMap.build(expected["node_order"], expected["provenance"])
    rows = layer_report(expected["layers"], names, log, info)
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "bundle": str(bundle),
        "build": str(build),
        "tensorrt": (log.trt_version if log else None),
        "inspector_schema": info.schema if info else None,
        "summary": report_summary(rows),
        "layers": [r.to_dict() for r in rows],
        "sparsity_log_found": bool(log and log.found),
    }
    times = {v: build / f"{v}.times.json" for v in ("dense", "sparse")}
    if all(p.is_file() for p in times.values()):
        dense, sparse = load_times(times["dense"]), load_times(times["sparse"])
        ratio = bootstrap_ratio(dense, sparse, seed=seed, paired=False)
        result["latency"] = {"dense_ms": summarize(dense), "sparse_ms": summarize(sparse), "speedup": ratio,
                             "verdict": verdict(ratio.get("ci95")),
                             "note": "trtexec GPU compute time per inference; engines run one after the other"}
    elif all((build / f"{v}.plan").is_file() for v in ("dense", "sparse")):
        timed = _time_engines_here(Path(bundle), folder, build, seed)
        if timed is not None:
            dense, sparse = timed
            ratio = bootstrap_ratio(dense, sparse, seed=seed, paired=True)
            result["latency"] = {"dense_ms": summarize(dense), "sparse_ms": summarize(sparse), "speedup": ratio,
                                 "verdict": verdict(ratio.get("ci95")),
                                 "note": "wall time per inference on this GPU, dense and sparse interleaved"}
    profiles = {v: build / f"{v}.profile.json" for v in ("dense", "sparse")}
    if all(p.is_file() for p in profiles.values()):
        dense_p, sparse_p = load_profile(profiles["dense"]), load_profile(profiles["sparse"])
        for row in result["layers"]:
            if row["trt_layer"]:
                row["sparse_ms"] = sparse_p.get(row["trt_layer"])
                row["dense_ms"] = dense_p.get(row["trt_layer"])
    return result


def _time_engines_here(bundle: Path, folder: Path, build: Path, seed: int, rounds: int = 200,
                       warmup: int = 20) -> tuple[list[float], list[float]] | None:
    """Interleaved timings of the two engines of a ``--target tensorrt`` build, when TensorRT and CUDA are here."""
    import importlib.util
    import time

    import numpy as np
    import torch

    if importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available():
        return None
    from sparsecc.backends.base import TensorSpec

    from sparsecc.backends.tensorrt.runtime import TensorRTRunner

    from sparsecc.bundle.manifest import read_manifest

    target = read_manifest(bundle).targets.get(folder.name)
    record = target.artifact if target is not None else {}
    specs = [TensorSpec.from_dict(t) for t in record.get("inputs", [])]
    example = np.load(bundle / "inputs" / "example.npz")
    inputs = [torch.from_numpy(example[f"arr_{i}"]) for i in range(len(specs))]
    runners = {v: TensorRTRunner(build / f"{v}.plan", specs) for v in ("dense", "sparse")}
    times: dict[str, list[float]] = {"dense": [], "sparse": []}
    for i in range(warmup + rounds):
        order = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
        for v in order:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            runners[v](inputs)  # synchronises on its stream before returning
            if i >= warmup:
                times[v].append((time.perf_counter() - t0) * 1000.0)
    return times["dense"], times["sparse"]


def tensorrt_markdown(result: dict[str, Any]) -> str:
    from sparsecc.backends.tensorrt.report import LayerRow

    fields = set(LayerRow.__dataclass_fields__)
    rows = [LayerRow(**{k: v for k, v in r.items() if k in fields}) for r in result["layers"]]
    version = f"TensorRT {result['tensorrt']}" if result.get("tensorrt") else "TensorRT"
    text = report_markdown(rows, f"{version}: 2:4 per layer ({result['bundle']})")
    lat = result.get("latency")
    if lat:
        sp = lat["speedup"]
        ci = sp.get("ci95") or [float("nan"), float("nan")]
        text += (f"\nLatency (GPU compute per inference, median): dense {lat['dense_ms']['p50']:.4f} ms, "
                 f"sparse {lat['sparse_ms']['p50']:.4f} ms, speedup x{sp['ratio']:.3f} "
                 f"(95% CI {ci[0]:.3f}-{ci[1]:.3f}): {lat['verdict']}.\n")
    else:
        text += "\nNo dense/sparse timings (dense.times.json, sparse.times.json) in the build folder.\n"
    return text
