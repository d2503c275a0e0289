"""sparsecc's ExecuTorch custom ops (libsparsecc_executorch.so, sparsecc::et_sparse_*) and the
executorch-custom-ops target."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

pytest.importorskip("executorch")
pytest.importorskip("zstandard")

from sparsecc.backends.base import LowerOptions, get_backend  # noqa: E402
from sparsecc.backends.executorch import CustomOpError, ExecuTorchCustomOpsBackend  # noqa: E402
from sparsecc.core.ir import MaskSpec, SparsityPattern  # noqa: E402
from sparsecc.kernels import compress  # noqa: E402
from sparsecc.kernels import et_library  # noqa: E402
from sparsecc.kernels.et_library import LIBRARY_NAME, EtLibraryError  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def library() -> Path:
    try:
        return et_library.load_et_library()
    except EtLibraryError as e:  # no g++, or an executorch install without its C++ headers
        pytest.skip(f"the ExecuTorch kernel library cannot be built here: {e}")


def block_sparse(n: int, k: int, block: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    """A weight with exactly round(sparsity * blocks) all-zero ``block x block`` tiles (block 1: entries)."""
    g = torch.Generator().manual_seed(seed)
    tiles = (n // block) * (k // block)
    keep = torch.ones(tiles)
    keep[torch.randperm(tiles, generator=g)[: round(sparsity * tiles)]] = 0
    keep = keep.reshape(n // block, k // block).repeat_interleave(block, 0).repeat_interleave(block, 1)
    return torch.randn(n, k, generator=g) * keep


# -- the kernels in the ExecuTorch runtime, against a dense reference ------------------------------------------


class _Op(nn.Module):
    """One custom-op call with the compressed weight as inputs, so one method runs any weight of its shape."""

    def __init__(self, conv: bool, n: int, k: int):
        super().__init__()
        self.conv, self.n, self.k = conv, n, k

    def forward(self, x, crow, col, values, bias=None):
        op = torch.ops.sparsecc.et_sparse_conv1x1 if self.conv else torch.ops.sparsecc.et_sparse_linear
        return op(x, crow, col, values, bias, self.n, self.k)


N, K = 48, 64
# method -> (conv, x example, x dynamic dims, block of the example, bias)
METHODS = {
    "lin2_csr_bias": (False, (5, K), {0: Dim("t", max=200)}, 1, True),
    "lin3_bsr_bias": (False, (2, 5, K), {0: Dim("b", max=4), 1: Dim("s", max=64)}, 4, True),
    "lin3_csr": (False, (2, 5, K), {0: Dim("b2", max=4), 1: Dim("s2", max=64)}, 1, False),
    "lin2_bsr": (False, (5, K), {0: Dim("t2", max=200)}, 4, False),
    "conv_csr_bias": (True, (2, K, 5, 6), {0: Dim("cb", max=4), 2: Dim("h", max=16), 3: Dim("w", max=16)}, 1, True),
    "conv_bsr": (True, (2, K, 5, 6), {0: Dim("cb2", max=4), 2: Dim("h2", max=16), 3: Dim("w2", max=16)}, 4, False),
}


def _args(x: torch.Tensor, w: torch.Tensor, block: int, bias: torch.Tensor | None) -> list:
    cw = compress(w, block)
    return [x, cw.crow_indices, cw.col_indices, cw.values] + ([bias] if bias is not None else [])


@pytest.fixture(scope="module")
def kernel_program(library):
    """One .pte with a method per op / input rank / format / bias; the stored count (and BSR block) dynamic."""
    from sparsecc.backends.executorch import _deps
    from sparsecc.kernels.executorch_ops import define_ops

    define_ops()

    exir, passes = _deps.exir(), _deps.exir_passes()
    programs = {}
    for name, (conv, shape, dyn, block, bias) in METHODS.items():
        stored = Dim(f"stored_{name}", min=1, max=N * K)
        vdyn = {0: stored} if block == 1 else {0: stored, 1: Dim(f"bl_{name}", min=2, max=16),
                                                2: Dim(f"bl_{name}", min=2, max=16)}
        args = _args(torch.randn(shape), block_sparse(N, K, block, 0.5), block, torch.randn(N) if bias else None)
        rows = None if block == 1 else {0: Dim(f"rows_{name}", min=2, max=N + 1)}  # N / B + 1
        dynamic = (dyn, rows, {0: stored}, vdyn) + ((None,) if bias else ())
        programs[name] = torch.export.export(_Op(conv, N, K), tuple(args), dynamic_shapes=dynamic, strict=False)
    config = exir.ExecutorchBackendConfig(memory_planning_pass=passes.MemoryPlanningPass(alloc_graph_input=False))
    data = exir.to_edge_transform_and_lower(programs).to_executorch(config).buffer
    program = _deps.runtime().Runtime.get().load_program(bytes(data))
    methods = {name: program.load_method(name) for name in METHODS}
    methods["__program__"] = program  # the program owns the methods' memory: keep it alive with them
    return methods


def _reference(conv: bool, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if conv:
        return nn.functional.conv2d(x, w[:, :, None, None], bias)
    return nn.functional.linear(x, w, bias)


CASES = [  # (method, x shape, block)
    ("lin2_csr_bias", (1, K), 1), ("lin2_csr_bias", (37, K), 1), ("lin2_csr_bias", (200, K), 1),
    ("lin3_bsr_bias", (2, 7, K), 4), ("lin3_bsr_bias", (1, 64, K), 8), ("lin3_bsr_bias", (3, 1, K), 16),
    ("lin3_csr", (4, 9, K), 1), ("lin2_bsr", (33, K), 2), ("lin2_bsr", (1, K), 16),
    ("conv_csr_bias", (1, K, 7, 9), 1), ("conv_csr_bias", (3, K, 1, 1), 1),
    ("conv_bsr", (2, K, 16, 16), 8), ("conv_bsr", (1, K, 3, 5), 4),
]


@pytest.mark.parametrize("method,shape,block", CASES)
def test_kernel_parity_with_dense(kernel_program, method, shape, block):
    conv, _, _, _, with_bias = METHODS[method]
    seed = len(CASES) + sum(shape) + block
    w = block_sparse(N, K, block, 0.8, seed=seed)
    bias = torch.randn(N, generator=torch.Generator().manual_seed(seed)) if with_bias else None
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    got = kernel_program[method].execute(_args(x, w, block, bias))[0]
    want = _reference(conv, x, w, bias)
    assert got.shape == want.shape
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_eager_ops_match_the_runtime(kernel_program):
    """The ops' CPU kernels (used when the rewritten program runs in PyTorch) compute the same."""
    w, x = block_sparse(N, K, 4, 0.7, seed=3), torch.randn(2, 5, K)
    want = kernel_program["lin3_bsr_bias"].execute(_args(x, w, 4, torch.ones(N)))[0]
    got = torch.ops.sparsecc.et_sparse_linear(*_args(x, w, 4, torch.ones(N)), N, K)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("what,match", [
    ("col", r"sparsecc::et_sparse_linear\.out: col_indices\[\d+\] = 99 is outside \[0, 16\)"),
    ("crow", r"sparsecc::et_sparse_linear\.out: crow_indices"),
    ("width", r"sparsecc::et_sparse_linear\.out: input must end in in_features = 64 columns, got 72"),
])
def test_bad_inputs_fail_naming_the_op(kernel_program, what, match):
    w = block_sparse(N, K, 4, 0.5, seed=4)
    args = _args(torch.randn(3, K), w, 4, None)
    if what == "col":
        args[2] = torch.full_like(args[2], 99)
    elif what == "crow":
        args[1] = args[1].flip(0).contiguous()
    else:
        args[0] = torch.randn(3, K + 8)
    et_library.clear_error()
    with pytest.raises(RuntimeError):
        kernel_program["lin2_bsr"].execute(args)
    assert et_library.last_error()
    import re

    assert re.search(match, et_library.last_error()), et_library.last_error()


def test_the_library_registers_in_the_python_runtime(library):
    from executorch.runtime import Runtime

    names = set(Runtime.get().operator_registry.operator_names)
    assert set(et_library.OP_NAMES) <= names
    assert et_library.library_isa() in ("avx512", "avx2", "neon", "portable")


# -- the executorch-custom-ops target ---------------------------------------------------------------------------


class Wide(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(256, 512), nn.Linear(512, 256, bias=False), nn.Linear(256, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class PointwiseNet(nn.Module):
    """1x1 expand with BatchNorm -> 3x3 depthwise -> 1x1 project with a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.expand, self.bn = nn.Conv2d(32, 64, 1, bias=False), nn.BatchNorm2d(64)
        self.dw = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.project = nn.Conv2d(64, 32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.relu(self.dw(torch.relu(self.bn(self.expand(x))))))


# margin 1e9: replace every sparse layer whatever the timing says, so the tests do not depend on load
OPTIONS = {"custom_ops_margin": 1e9, "custom_ops_rounds": 1}


@pytest.fixture(scope="module")
def lowered(library, tmp_path_factory):
    torch.manual_seed(0)
    m = Wide().eval()
    with torch.no_grad():
        for fc in (m.fc1, m.fc2):
            fc.weight.copy_(block_sparse(*fc.weight.shape, 8, 0.9))
    x = torch.randn(2, 16, 256)
    program = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("batch", max=8), 1: Dim("seq", max=64)},))
    art = ExecuTorchCustomOpsBackend().lower(program, tmp_path_factory.mktemp("et_custom_ops"),
                                             LowerOptions(extra=dict(OPTIONS)))
    return m, x, art


def test_target_is_registered():
    assert isinstance(get_backend("executorch-custom-ops"), ExecuTorchCustomOpsBackend)


def test_lowering_replaces_sparse_layers(lowered):
    _m, _x, art = lowered
    meta = art.meta["custom_ops"]
    assert meta["replaced"] == 2 and meta["library"] == LIBRARY_NAME
    assert meta["ops"] == ["sparsecc::et_sparse_linear.out"]
    # both formats of each layer timed; with the margin either one replaces it
    assert {e["fqn"]: sorted(e["median_s"]) for e in meta["layers"]} == {f: ["bsr8", "csr", "dense"]
                                                                        for f in ("fc1.weight", "fc2.weight")}
    assert all(e["choice"] in ("bsr8", "csr") for e in meta["layers"])
    assert all(e["tokens"] == 32 and e["median_s"]["dense"] > 0 and e["speedup"] > 0 for e in meta["layers"])
    assert "fc3.weight" in meta["not_candidates"]  # dense: not timed
    assert (art.root / art.files["custom_ops_library"]).is_file()
    assert "RTLD_GLOBAL" in (art.root / art.files["custom_ops_example"]).read_text()
    layers = {e["fqn"]: e for e in art.meta["delegation"]["layers"]}
    assert layers["fc1.weight"]["where"] == "custom_op" and layers["fc3.weight"]["where"] == "xnnpack"
    checks = {c.fqn: c for c in ExecuTorchCustomOpsBackend().check_artifact(None, art)}  # type: ignore[arg-type]
    assert checks["fc2.weight"].support.value == "runs sparse" and "et_sparse_linear" in checks["fc2.weight"].reason


@pytest.mark.parametrize("shape", [(2, 16, 256), (1, 1, 256), (8, 64, 256)])
def test_lowered_parity(lowered, shape):
    m, _x, art = lowered
    x = torch.randn(shape)
    got = ExecuTorchCustomOpsBackend().load(art)([x])[0]
    want = m(x).detach()
    assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())


def test_pattern_read_back_from_the_pte(lowered):
    _m, _x, art = lowered
    specs = [MaskSpec(f, SparsityPattern.parse("8x8"), 0.9) for f in ("fc1.weight", "fc2.weight")]
    checks = ExecuTorchCustomOpsBackend().verify_pattern(art, specs)
    assert all(c.ok for c in checks), [c.reason for c in checks]
    assert all("et_sparse_linear.out" in c.location and "constant buffers" in c.location for c in checks)
    wrong = ExecuTorchCustomOpsBackend().verify_pattern(art, [MaskSpec("fc1.weight", SparsityPattern.parse("8x8"),
                                                                       0.95)])
    assert not wrong[0].ok and "8x8 blocks" in wrong[0].reason


def test_corrupted_indices_fail_the_call_naming_the_op(lowered, tmp_path):
    """Column indices past the weight, written into the .pte: the kernel refuses them, nothing is read."""
    import shutil

    _m, x, art = lowered
    folder = tmp_path / "broken"
    shutil.copytree(art.root, folder)
    block = art.meta["weights"]["fc2.weight"]["block"]
    col = compress(art_weight(lowered, "fc2"), block).col_indices
    data = (folder / "model.pte").read_bytes()
    assert data.count(col.numpy().tobytes()) == 1
    (folder / "model.pte").write_bytes(data.replace(col.numpy().tobytes(), (col + 1000).numpy().tobytes()))
    broken = type(art).from_dict(art.to_dict(), folder)
    with pytest.raises(CustomOpError, match=r"sparsecc::et_sparse_linear\.out: col_indices\[0\] = 10\d\d+ is outside"):
        ExecuTorchCustomOpsBackend().load(broken)([x])
    check = ExecuTorchCustomOpsBackend().verify_pattern(broken, [MaskSpec("fc2.weight", SparsityPattern.parse("8x8"),
                                                                          0.9)])[0]
    assert not check.ok and "cannot read" in check.reason


def art_weight(lowered, layer: str) -> torch.Tensor:
    return getattr(lowered[0], layer).weight.detach()


def test_pointwise_convs_with_batchnorm(library, tmp_path):
    torch.manual_seed(0)
    m = PointwiseNet().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 1.5)
        for conv in (m.expand, m.project):
            conv.weight.copy_(block_sparse(conv.out_channels, conv.in_channels, 8, 0.75)[..., None, None])
    x = torch.randn(2, 32, 12, 10)
    program = torch.export.export(m, (x,), dynamic_shapes=({0: Dim("batch", max=4)},))
    art = ExecuTorchCustomOpsBackend().lower(program, tmp_path, LowerOptions(extra=dict(OPTIONS)))
    meta = art.meta["custom_ops"]
    assert meta["ops"] == ["sparsecc::et_sparse_conv1x1.out"] and meta["replaced"] == 2
    by_fqn = {e["fqn"]: e for e in meta["layers"]}
    assert by_fqn["expand.weight"]["batchnorm_folded"] and by_fqn["expand.weight"]["tokens"] == 240
    assert "dw.weight" in meta["not_candidates"]
    for batch in (2, 1, 4):
        xb = torch.randn(batch, 32, 12, 10)
        got = ExecuTorchCustomOpsBackend().load(art)([xb])[0]
        want = m(xb).detach()
        assert float((got - want).abs().max()) <= 1e-4 * float(want.abs().max())
    specs = [MaskSpec(f, SparsityPattern.parse("8x8"), 0.75) for f in ("expand.weight", "project.weight")]
    checks = ExecuTorchCustomOpsBackend().verify_pattern(art, specs)
    assert all(c.ok for c in checks), [c.reason for c in checks]
    assert art.meta["weights"]["expand.weight"]["verbatim"] is False  # BatchNorm rescaled it, zeros kept


def test_artifact_lists_its_library(lowered, tmp_path):
    _m, _x, art = lowered
    bare = type(art).from_dict(art.to_dict(), art.root)
    del bare.files["custom_ops_library"]
    with pytest.raises(EtLibraryError, match=LIBRARY_NAME):
        ExecuTorchCustomOpsBackend().load(bare)


def test_without_the_library_the_errors_name_it(lowered, tmp_path):
    """A fresh process: the .pte does not load without the library; a missing library file is named."""
    _m, _x, art = lowered
    import shutil

    folder = tmp_path / "no_library"
    shutil.copytree(art.root, folder)
    (folder / LIBRARY_NAME).unlink()
    (folder / "artifact.json").write_text(__import__("json").dumps(art.to_dict()))
    script = textwrap.dedent(f"""
        import json, sys
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from sparsecc.backends.base import Artifact, TensorSpec
        from sparsecc.backends.executorch import ExecuTorchCustomOpsBackend
        from sparsecc.backends.executorch.runtime import ExecuTorchRunner, PteFileError
        from sparsecc.kernels.et_library import EtLibraryError
        folder = Path({str(folder)!r})
        art = Artifact.from_dict(json.loads((folder / "artifact.json").read_text()), folder)
        try:
            ExecuTorchRunner(folder / "model.pte", art.inputs)
        except PteFileError as e:
            print("NOT_LOADED", e)
        try:
            ExecuTorchCustomOpsBackend().load(art)
        except EtLibraryError as e:
            print("MISSING", e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    lines = {ln.split(" ", 1)[0]: ln for ln in out.stdout.splitlines()
             if ln.split(" ", 1)[0] in ("NOT_LOADED", "MISSING")}
    assert "NOT_LOADED" in lines, out.stdout + out.stderr
    assert "sparsecc::et_sparse_linear.out" in lines["NOT_LOADED"] and LIBRARY_NAME in lines["NOT_LOADED"]
    assert "MISSING" in lines and LIBRARY_NAME in lines["MISSING"] and "missing" in lines["MISSING"]


def test_check_names_the_custom_op_for_sparse_layers(lowered):
    m, x, _art = lowered
    program = torch.export.export(m, (x,))
    checks = {c.fqn: c for c in ExecuTorchCustomOpsBackend().check(program)}
    assert "sparsecc::et_sparse_linear" in checks["fc1.weight"].reason
    assert "et_sparse" not in checks["fc3.weight"].reason  # dense: XNNPACK as before


def test_missing_compiler_is_a_dependency_error(monkeypatch, tmp_path):
    from sparsecc.errors import DependencyError

    monkeypatch.setenv("SPARSECC_ET_CACHE", str(tmp_path))  # nothing cached: it must compile
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
    with pytest.raises(EtLibraryError, match=r"no-such-g\+\+ is not installed") as e:
        et_library.build_et_library()
    assert isinstance(e.value, DependencyError)


class WideBundle(nn.Module):
    """Layers big enough that 8x8 blocks at 90% beat XNNPACK's dense product by a wide margin."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(1024, 1024), nn.Linear(1024, 1024), nn.Linear(1024, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def test_bundle_compiles_verifies_and_benches(library, tmp_path):
    """`sparsecc compile -t executorch-custom-ops` ships the library and its loading example; `sparsecc verify`
    re-checks the pattern in the .pte; `sparsecc bench` loads the library and times it against the dense .pte."""
    import json

    from sparsecc.benchmarking.api import bench
    from sparsecc.flows.compile import compile
    from sparsecc.flows.verify_bundle import verify_bundle

    torch.manual_seed(0)
    out = tmp_path / "bundle"
    recipe = {"pattern": "8x8", "sparsity": 0.9, "layers": {"exclude": ["head"]}}
    compile(WideBundle().eval(), recipe, out, example_args=(torch.randn(64, 1024),),
            targets=["executorch-custom-ops"], force=True)
    art = json.loads((out / "manifest.json").read_text())["targets"]["executorch-custom-ops"]["artifact"]
    assert art["files"]["custom_ops_library"] == LIBRARY_NAME
    assert art["meta"]["custom_ops"]["replaced"] >= 1, art["meta"]["custom_ops"]
    assert "libsparsecc_executorch.so" in (out / "README.md").read_text()
    report = verify_bundle(out)
    assert report.ok, report.problems
    (_b, run), = bench(out, backends=["executorch-custom-ops"], runs=3, warmup=1, profile_runs=2,
                       isolate=False).runs()
    assert run["status"] == "ok", run.get("error")
    assert run["comparison"]["ratio"] > 0 and set(run["variants"]) >= {"sparse", "dense"}
