"""sparsecc.structured (one-call structured pruning), its recipe section, recovery, and the bench lines."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sparsecc.benchmarking.markdown import structured_lines
from sparsecc.plan.recipe import RecipeError, load_recipe
from sparsecc.recovery.distill import distill, distillation_loss, mask_sparsity_regularizer, recalibrate_batchnorm
from sparsecc.flows.structured import (
    ShrinkMismatchError,
    count_macs,
    count_params,
    prune_structured,
)
from sparsecc.plan.structured_options import StructuredOptions
from sparsecc.testing import assert_same_structure, export_module


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = F.relu(self.bn(self.c1(x)))
        return self.fc(F.relu(self.c2(x)).mean((2, 3)))


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    m = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    return m, x, export_module(m, (x,))


def test_prune_structured_report_and_verification(cnn):
    m, x, prog = cnn
    res = prune_structured(prog, {"ratio": 0.5, "round_to": 4}, verify_inputs=[((x,), {}), ((torch.randn(2, 3, 8, 8),), {})])
    s = res.report["summary"]
    assert s["pruned_groups"] == 2 and s["removed_units"] == 8 + 16
    assert res.state_dict["c1.weight"].shape == (8, 3, 3, 3) and res.state_dict["c2.weight"].shape == (16, 8, 3, 3)
    assert s["macs"] == [count_macs(prog), count_macs(res.program)]
    assert s["params"] == [count_params(prog), count_params(res.program)]
    # conv1 MACs halve (out), conv2 quarter (in and out), fc halves (in)
    want = (8 * 27 * 64 + 16 * 72 * 64 + 16 * 5) / (16 * 27 * 64 + 32 * 144 * 64 + 32 * 5)
    assert s["macs_ratio"] == pytest.approx(want)
    assert [c["ok"] for c in res.report["verification"]["cases"]] == [True, True]
    assert all(c["max_rel_err"] <= 1e-5 for c in res.report["verification"]["cases"])
    json.dumps(res.report)  # goes into the bundle manifest as is


def test_prune_structured_catches_a_wrong_shrink(cnn, monkeypatch):
    """If the shrunk program ever drifted from the masked one, the check names it."""
    m, x, prog = cnn
    from sparsecc.passes.structured import mask_channels

    original = mask_channels.MaskChannelsPass.call

    def sloppy(self, program):  # a reference that forgets to zero anything
        self.plan = type(self.plan)(self.plan.analysis)
        return original(self, program)

    monkeypatch.setattr(mask_channels.MaskChannelsPass, "call", sloppy)
    with pytest.raises(ShrinkMismatchError, match="differs from the channel-masked one"):
        prune_structured(prog, {"ratio": 0.5}, verify_inputs=[((x,), {})])


def test_taylor_needs_calibration_and_uses_it(cnn):
    m, x, prog = cnn
    with pytest.raises(ValueError, match="taylor.*calibration"):
        prune_structured(prog, {"criterion": "taylor"})
    res = prune_structured(prog, {"criterion": "taylor"}, calibration=[((x,), {})], verify_inputs=[((x,), {})])
    assert res.report["summary"]["pruned_groups"] == 2


def test_recipe_structured_section():
    r = load_recipe("structured:\n  ratio: 0.3\n  units: [channel]\n  round_to: 8\n  protect: [stem]\n")
    assert r.structured == StructuredOptions(ratio=0.3, units=("channel",), round_to=8, protect=("stem",))
    assert r.pattern.kind == "channel" and r.sparsity == 0.3
    assert load_recipe(r.to_dict()) == r  # round trip
    assert load_recipe({"pattern": "2:4"}).structured is None
    fixed = load_recipe({"structured": {"ratio": 0.5, "reconstruct": True}})
    assert fixed.structured.reconstruct and load_recipe(fixed.to_dict()) == fixed
    for bad, key in (
        ({"ratio": 1.0}, "structured.ratio"),
        ({"units": ["neuron"]}, "structured.units"),
        ({"criterion": "wanda"}, "structured.criterion"),
        ({"scope": "model"}, "structured.scope"),
        ({"round_to": 0}, "structured.round_to"),
        ({"overrides": {"fc*": 2}}, "structured.overrides.fc*"),
        ({"ratios": 0.5}, "structured.ratios"),
        ({"reconstruct": "yes"}, "structured.reconstruct"),
    ):
        with pytest.raises(RecipeError) as e:
            load_recipe({"structured": bad})
        assert e.value.key == key


def test_distill_recovers_a_pruned_program(cnn):
    m, x, prog = cnn
    res = prune_structured(prog, {"ratio": 0.5})
    batches = [((torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)),), {}) for i in range(4)]
    out = distill(res.program, m, batches, steps=60, lr=3e-3, loss="mse")
    assert out.last_loss < 0.5 * out.first_loss
    # same graph, trained weights, input untouched
    assert_same_structure(out.program, res.program, "distilled")
    assert not torch.equal(out.program.state_dict["c1.weight"], res.program.state_dict["c1.weight"])
    with torch.no_grad():
        err_before = (res.program.module()(x) - m(x)).pow(2).mean()
        err_after = (out.program.module()(x) - m(x)).pow(2).mean()
    assert err_after < err_before
    # the teacher may be the dense captured program itself
    assert len(distill(res.program, prog, batches, steps=2, loss="mse").losses) == 2


def test_distill_trains_only_the_parameters_train_names(cnn):
    m, x, prog = cnn
    res = prune_structured(prog, {"ratio": 0.5})
    batches = [((torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)),), {}) for i in range(4)]
    out = distill(res.program, m, batches, steps=20, lr=3e-3, loss="mse", train=["bn.*"])
    before, after = res.program.state_dict, out.program.state_dict
    changed = {k for k in before if isinstance(before[k], torch.nn.Parameter) and not torch.equal(before[k], after[k])}
    assert changed == {"bn.weight", "bn.bias"}
    assert out.last_loss < out.first_loss
    with pytest.raises(ValueError, match=r"train=\['norm\*'\] matches none of the student's parameters"):
        distill(res.program, m, batches, steps=1, train=["norm*"])


def test_distillation_losses_and_bad_input():
    t = torch.randn(4, 10)
    assert distillation_loss(t, t, "kl") == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(t, t, "cosine") == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(t + 1, t, "mse") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not match"):
        distillation_loss(torch.randn(4, 9), t, "kl")
    with pytest.raises(ValueError, match="unknown distillation loss"):
        distillation_loss(t, t, "l1")


def test_bench_markdown_shows_structured_ratios():
    b = {"structured": {"macs_ratio": 0.25, "params_ratio": 0.3},
         "runs": [{"backend": "onnx", "threads": 1, "status": "ok", "comparison": {"ratio": 3.2}},
                  {"backend": "executorch", "threads": 1, "status": "error", "comparison": None}]}
    text = "\n".join(structured_lines(b))
    assert "MACs x0.250, params x0.300" in text
    # latency 1/3.2 = 0.3125; realised (1 - 0.3125) / (1 - 0.25) = 92%
    assert "| onnx | 1 | 0.250 | 0.300 | 0.312 | 92% |" in text
    assert "executorch" not in text
    assert structured_lines({"runs": []}) == []


def test_mask_sparsity_pushes_only_the_removed_bn_scales(cnn):
    m, x, prog = cnn
    from sparsecc.passes.structured import plan_structured_pruning

    plan = plan_structured_pruning(prog, 0.5, criterion="bn_scale")
    reg = mask_sparsity_regularizer(plan, strength=0.05)
    drop = reg.targets["bn.weight"]
    assert drop.sum() == 8
    batches = [((torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(i)),), {}) for i in range(2)]
    out = distill(prog, m, batches, steps=100, lr=1e-2, loss="mse", regularizer=reg)
    before, after = prog.state_dict["bn.weight"].detach(), out.program.state_dict["bn.weight"].detach()
    assert after[drop].abs().max() < 0.2  # pushed to (near) zero: Adam moves each scale by ~lr per step
    assert after[~drop].abs().sum() > 0.8 * before[~drop].abs().sum()


class _ConvBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))


def test_recalibrate_batchnorm_measures_each_norm_on_the_recalibrated_layers_before_it():
    m = _ConvBN().eval()
    g = torch.Generator().manual_seed(0)
    batches = [((torch.randn(2, 3, 6, 6, generator=g) * 2 + 1,), {}) for _ in range(3)]
    program = export_module(m, batches[0][0])
    dense_mean = program.state_dict["b1.running_mean"].clone()
    new, changed = recalibrate_batchnorm(program, batches)
    assert torch.equal(program.state_dict["b1.running_mean"], dense_mean)  # the source program is untouched
    assert changed == ["b1.running_mean", "b1.running_var", "b2.running_mean", "b2.running_var"]
    x = torch.cat([b[0][0] for b in batches])
    with torch.no_grad():
        h1 = m.c1(x)
        want1 = (h1.mean((0, 2, 3)), h1.var((0, 2, 3), unbiased=True))
        m.b1.running_mean.copy_(want1[0])
        m.b1.running_var.copy_(want1[1])
        h2 = m.c2(torch.relu(m.b1(h1)))
        want2 = (h2.mean((0, 2, 3)), h2.var((0, 2, 3), unbiased=True))
    for name, want in (("b1", want1), ("b2", want2)):
        torch.testing.assert_close(new.state_dict[f"{name}.running_mean"], want[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(new.state_dict[f"{name}.running_var"], want[1], rtol=1e-5, atol=1e-5)
    # the new program runs with the new statistics
    with torch.no_grad():
        m.b2.running_mean.copy_(want2[0])
        m.b2.running_var.copy_(want2[1])
        x0 = batches[0][0][0]
        torch.testing.assert_close(new.module()(x0), m(x0), rtol=1e-5, atol=1e-5)


def test_recalibrate_batchnorm_bad_input():
    program = export_module(nn.Linear(4, 2).eval(), (torch.randn(2, 4),))
    with pytest.raises(ValueError, match="has no BatchNorm"):
        recalibrate_batchnorm(program, [((torch.randn(2, 4),), {})])
    with pytest.raises(ValueError, match="at least one batch"):
        recalibrate_batchnorm(program, [])


def test_reconstruct_is_the_ridge_least_squares_fit_of_the_dense_layer():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    g = torch.Generator().manual_seed(1)
    calib = [((torch.randn(32, 8, generator=g),), {}) for _ in range(4)]
    program = export_module(m, calib[0][0])
    opts = StructuredOptions(ratio=0.5, units=("channel",), criterion="l2")
    plain = prune_structured(program, opts, verify_inputs=calib[:1])
    fixed = prune_structured(program, opts, verify_inputs=calib[:1], calibration=calib, reconstruct=True)
    assert fixed.report["reconstructed"] == ["2.weight"]
    keep = torch.from_numpy(next(iter(fixed.plan.kept.values())))
    with torch.no_grad():
        hidden = torch.relu(m[0](torch.cat([b[0][0] for b in calib]))).double()  # [rows, 16]
        target = hidden @ m[2].weight.double().t()
        hk = hidden[:, keep]
        lam = 0.01 * float((hk * hk).sum(0).mean())
        # independent: ridge regression as an augmented least-squares problem
        a = torch.cat([hk, lam ** 0.5 * torch.eye(len(keep), dtype=torch.float64)])
        b = torch.cat([target, torch.zeros(len(keep), 4, dtype=torch.float64)])
        want = torch.linalg.lstsq(a, b).solution.t()
    torch.testing.assert_close(fixed.program.state_dict["2.weight"].double(), want, rtol=1e-4, atol=1e-5)
    # and it reproduces the dense outputs better than the plainly shrunk layer
    x = calib[0][0][0]
    with torch.no_grad():
        dense, before, after = m(x), plain.program.module()(x), fixed.program.module()(x)
    assert (after - dense).pow(2).mean() < 0.5 * (before - dense).pow(2).mean()
    with pytest.raises(ValueError, match="reconstruct=True needs calibration batches"):
        prune_structured(program, opts, reconstruct=True)


def test_compile_reconstructs_when_the_recipe_asks(tmp_path):
    """`reconstruct: true` in a recipe: compile gets calibration data and repairs the layers after removed channels;
    without a model whose loader provides calibration data, it says what needs it."""
    from sparsecc.flows.compile import compile
    from sparsecc.models import get_model

    spec = get_model("mlp")
    recipe = {"structured": {"ratio": 0.5, "units": ["channel"], "reconstruct": True}, "calibration": {"samples": 300}}
    result = compile(spec, recipe, tmp_path / "b", targets=("onnx",), dense_reference=False)
    report = json.loads((tmp_path / "b" / "manifest.json").read_text())["structured"]
    # fc2 loses inputs and outputs (between two pruned groups), fc3 its inputs: both refit
    assert report["reconstructed"] == ["fc2.weight", "fc3.weight"], report
    plain = compile(spec, {**recipe, "structured": {**recipe["structured"], "reconstruct": False}}, tmp_path / "p",
                    targets=("onnx",), dense_reference=False)
    x = torch.randn(64, *spec.example_args[0].shape[1:], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = spec.model(x)
        err = {k: float((r.program.module()(x) - dense).pow(2).mean()) for k, r in (("fixed", result), ("plain", plain))}
    assert err["fixed"] < err["plain"], err
    with pytest.raises(ValueError, match="structured reconstruct: true needs calibration data"):
        compile(spec.model, recipe, tmp_path / "c", example_args=spec.example_args, targets=("onnx",),
                dense_reference=False)


def test_compile_quantizes_the_shrunk_layers_when_the_recipe_asks(tmp_path):
    """`structured:` with `quantize:` gives int8 weights on the smaller layers (stored int8 in the ONNX file),
    not a silently fp32 bundle."""
    from sparsecc.flows.compile import compile
    from sparsecc.models import get_model
    from sparsecc.passes.quantize_weights import int8_grid, quant_info

    spec = get_model("mlp")
    recipe = {"structured": {"ratio": 0.5, "units": ["channel"]}, "quantize": {"weights": "int8"}}
    result = compile(spec, recipe, tmp_path / "b", targets=("onnx",), dense_reference=False)
    program = result.program
    quantized = [n for n, _ in program.named_parameters() if quant_info(program, n) is not None]
    assert quantized == ["fc1.weight", "fc2.weight", "fc3.weight"], quantized
    q, scale = int8_grid(program, "fc2.weight")
    assert q.shape == (128, 128) and q.dtype == torch.int8  # fc2 lost half its inputs and outputs, then int8
    torch.testing.assert_close(q.float() * scale.view(-1, 1), program.state_dict["fc2.weight"], rtol=0, atol=0)
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["targets"]["onnx"]["artifact"]["meta"]["int8_qdq"]["weights"] == 3
