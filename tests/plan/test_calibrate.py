"""Calibration statistics against direct computations, and sequential pruning's data flow."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparsecc.core.analyze import find_prunable_weights
from sparsecc.plan.calibrate import (
    CalibrationData,
    CalibrationError,
    block_key,
    collect_stats,
    gradient_stats,
    objective_loss,
    sequential_solve,
)
from sparsecc.plan.masks import rows_view
from sparsecc.testing import export_module

torch.manual_seed(0)


def _data(*shapes, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return CalibrationData([(tuple(torch.randn(s, generator=g) for s in shapes), {}) for _ in range(n)])


class Linear2(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_linear_act_sq_and_hessian_equal_direct_sums():
    m = Linear2().eval()
    data = _data((2, 5, 8))
    program = export_module(m, data.batches[0][0])
    stats = collect_stats(program, data, needs=("act_sq", "hessian"))
    xs = torch.cat([b[0][0].reshape(-1, 8) for b in data.batches])
    hs = torch.cat([torch.relu(m.a(b[0][0])).reshape(-1, 16) for b in data.batches]).detach()
    for fqn, x in (("a.weight", xs), ("b.weight", hs)):
        assert stats[fqn]["rows"] == x.shape[0]
        torch.testing.assert_close(stats[fqn]["act_sq"], x.square().sum(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(stats[fqn]["hessian"], x.t() @ x, rtol=1e-5, atol=1e-4)


def test_wide_hessian_accumulated_by_blocks_equals_the_full_product():
    """Activations of 256+ features accumulate only the upper blocks of X^T X; reading mirrors them."""
    m = nn.Linear(301, 3).eval()  # 301 columns: blocks of unequal width
    data = _data((40, 301), n=3)
    data = CalibrationData(data.batches, join_batches=False)  # three separate accumulations
    program = export_module(m, data.batches[0][0])
    stats = collect_stats(program, data, needs=("hessian",))["weight"]
    x = torch.cat([b[0][0] for b in data.batches]).double()
    torch.testing.assert_close(stats["hessian"].double(), x.t() @ x, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(stats["act_sq"].double(), x.square().sum(0), rtol=1e-5, atol=1e-3)
    assert torch.equal(stats["hessian"], stats["hessian"].t())


class Convs(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding="same", groups=2, dilation=2)
        self.c3 = nn.Conv1d(8, 6, 2, padding="same")

    def forward(self, x):
        y = self.c2(torch.relu(self.c1(x)))
        return self.c3(y.flatten(2))


@pytest.mark.parametrize("layer", ["c1", "c2", "c3"])
def test_conv_columns_follow_the_rows_view_of_the_weight(layer):
    """The Hessian's quadratic form in the weight's rows view must equal the conv's output energy."""
    m = Convs().eval()
    data = _data((2, 4, 9, 9), n=2)
    program = export_module(m, data.batches[0][0])
    stats = collect_stats(program, data, needs=("act_sq", "hessian"))
    mod = getattr(m, layer)
    fqn = f"{layer}.weight"
    feats = {}
    hook = mod.register_forward_hook(lambda _m, _i, o: feats.setdefault(len(feats), o.detach()))
    for (x,), _ in data.batches:
        m(x)
    hook.remove()
    # Output without bias, energy per output channel: sum over rows of (w_o . x)^2 = w_o H w_o^T.
    w = rows_view(mod.weight.detach(), 0, 1)
    energy = sum((o - mod.bias.detach().view(1, -1, *([1] * (o.dim() - 2)))).square().transpose(0, 1)
                 .reshape(o.shape[1], -1).sum(1) for o in feats.values())
    h = stats[fqn]["hessian"]
    if h.dim() == 3:  # grouped: each output row reads its group's Hessian
        per = w.shape[0] // h.shape[0]
        quad = torch.stack([w[o] @ h[o // per] @ w[o] for o in range(w.shape[0])])
    else:
        quad = torch.einsum("ok,kl,ol->o", w, h, w)
    torch.testing.assert_close(quad, energy, rtol=1e-4, atol=1e-3)


def test_weights_reading_one_activation_share_statistics():
    class QKV(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            return self.q(x) + self.k(x) * self.v(x)

    data = _data((3, 8))
    program = export_module(QKV().eval(), data.batches[0][0])
    stats = collect_stats(program, data, needs=("hessian",))
    assert stats["q.weight"]["hessian"] is stats["k.weight"]["hessian"] is stats["v.weight"]["hessian"]


def test_matmul_with_weight_on_the_left_reads_columns_of_the_activation():
    class Left(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 6))

        def forward(self, x):  # x: [6, 7]
            return self.w @ x

    data = _data((6, 7))
    program = export_module(Left().eval(), data.batches[0][0])
    stats = collect_stats(program, data, needs=("hessian",))
    xs = torch.cat([b[0][0].t() for b in data.batches])
    torch.testing.assert_close(stats["w"]["hessian"], xs.t() @ xs, rtol=1e-5, atol=1e-4)


def test_bad_inputs_name_the_cause():
    with pytest.raises(CalibrationError, match="no batches"):
        CalibrationData([])
    with pytest.raises(CalibrationError, match="batch 1"):
        CalibrationData([((torch.ones(1),), {}), "text"])
    with pytest.raises(CalibrationError, match="objective"):
        CalibrationData([torch.ones(1)], objective="nope")
    program = export_module(Linear2().eval(), (torch.randn(2, 8),))
    with pytest.raises(CalibrationError, match="does not fit"):
        collect_stats(program, _data((2, 3)))
    with pytest.raises(CalibrationError, match="not a prunable weight"):
        collect_stats(program, _data((2, 8)), ["a.bias"])
    with pytest.raises(CalibrationError, match="gradient_stats"):
        collect_stats(program, _data((2, 8)), needs=("taylor",))


class Blocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(6, 6) for _ in range(3))
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return self.head(x)


def test_segments_follow_numbered_blocks():
    program = export_module(Blocks().eval(), (torch.randn(2, 6),))
    keys = {block_key(n) for n in program.graph.nodes} - {None}
    assert keys == {"layers.0", "layers.1", "layers.2", "head"}


def test_sequential_solve_feeds_each_block_the_pruned_outputs_of_the_blocks_before():
    m = Blocks().eval()
    data = _data((4, 6), n=2)
    program = export_module(m, data.batches[0][0])
    seen: list[list[str]] = []

    def zero_first_half(fqns, stats):
        seen.append(sorted(fqns))
        out = {}
        for f in fqns:
            w = program.state_dict[f].detach().clone()
            w[:, :3] = 0
            out[f] = w
        return out

    new = sequential_solve(program, data, zero_first_half, needs=("act_sq",))
    assert seen == [["layers.0.weight"], ["layers.1.weight"], ["layers.2.weight"], ["head.weight"]]
    # Recompute the activation statistics of the head by hand with all blocks pruned:
    # the stats that `solve` saw for it must come from the pruned model.
    captured = {}

    def keep_stats(fqns, stats):
        captured.update(stats)
        return zero_first_half(fqns, stats)

    sequential_solve(program, data, keep_stats)
    pruned = Blocks().eval()
    pruned.load_state_dict(m.state_dict())
    with torch.no_grad():
        for f, w in new.items():
            pruned.get_parameter(f).copy_(w)
    xs = []
    for (x,), _ in data.batches:
        h = x
        for layer in pruned.layers:
            h = h + torch.tanh(layer(h))
        xs.append(h.detach())
    xs = torch.cat(xs)
    torch.testing.assert_close(captured["head.weight"]["act_sq"], xs.square().sum(0), rtol=1e-5, atol=1e-5)
    # ... and differ from the dense statistics.
    dense = collect_stats(program, data)["head.weight"]["act_sq"]
    assert not torch.allclose(dense, captured["head.weight"]["act_sq"], rtol=1e-3)


class Attention(nn.Module):
    """q, k, v read one activation; o reads their combination; fc reads o's output."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o, self.fc = (nn.Linear(8, 8) for _ in range(5))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2), -1) @ self.v(x)
        return self.fc(torch.relu(self.o(a)))


def test_sequential_solve_is_true_sequential_in_one_pass():
    m = Attention().eval()
    data = _data((2, 5, 8), n=2)
    program = export_module(m, data.batches[0][0])
    calls: list[list[str]] = []
    seen: dict[str, dict] = {}

    def halve(fqns, stats):
        calls.append(sorted(fqns))
        seen.update(stats)
        return {f: program.state_dict[f].detach() * 0.5 for f in fqns}

    new = sequential_solve(program, data, halve)
    # q, k and v are solved together, where their shared statistics are complete.
    assert calls == [["k.weight", "q.weight", "v.weight"], ["o.weight"], ["fc.weight"]]
    assert seen["q.weight"]["act_sq"] is seen["v.weight"]["act_sq"]
    # o's statistics come from the already-halved q/k/v, fc's from the halved o as well.
    pruned = Attention().eval()
    pruned.load_state_dict(m.state_dict())
    with torch.no_grad():
        for f, w in new.items():
            pruned.get_parameter(f).copy_(w)
        xs = [b[0][0] for b in data.batches]
        att = torch.cat([torch.softmax(pruned.q(x) @ pruned.k(x).transpose(-1, -2), -1) @ pruned.v(x) for x in xs])
        hidden = torch.relu(pruned.o(att))
    torch.testing.assert_close(seen["o.weight"]["act_sq"], att.reshape(-1, 8).square().sum(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seen["fc.weight"]["act_sq"], hidden.reshape(-1, 8).square().sum(0), rtol=1e-5, atol=1e-5)


def test_objective_loss_with_overrides_matches_the_module():
    m = Blocks().eval()
    data = _data((4, 6), n=2)
    data.objective = "output_norm"
    program = export_module(m, data.batches[0][0])
    with torch.no_grad():
        want = sum(0.5 * m(b[0][0]).square().mean() for b in data.batches) / 2
    assert objective_loss(program, data, max_batches=None) == pytest.approx(float(want), rel=1e-5)
    zero = {"head.weight": torch.zeros(2, 6), "head.bias": torch.zeros(2)}
    assert objective_loss(program, data, zero) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(CalibrationError, match="not parameters"):
        objective_loss(program, data, {"nope": torch.zeros(1)})


def test_lm_objective_is_next_token_cross_entropy():
    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(11, 6)
            self.out = nn.Linear(6, 11)

        def forward(self, input_ids):
            return self.out(self.emb(input_ids))

    m = LM().eval()
    ids = torch.randint(0, 11, (2, 7), generator=torch.Generator().manual_seed(1))
    data = CalibrationData([((), {"input_ids": ids})])
    program = torch.export.export(m, (), {"input_ids": ids}, strict=False)
    logits = m(ids)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert objective_loss(program, data) == pytest.approx(float(want), rel=1e-5)


def test_taylor_scores_are_rms_of_weight_times_gradient():
    m = Linear2().eval()
    data = _data((3, 8), n=2)
    program = export_module(m, data.batches[0][0])
    got = gradient_stats(program, data, ["a.weight"])["a.weight"]["taylor"]
    acc = torch.zeros_like(m.a.weight)
    for (x,), _ in data.batches:
        m.zero_grad()
        out = m(x)
        F.cross_entropy(out, out.detach().argmax(-1)).backward()  # "auto" on 2-D logits: self cross-entropy
        acc += (m.a.weight * m.a.weight.grad).detach().square()
    torch.testing.assert_close(got, (acc / 2).sqrt(), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["mlp", "resnet", "mobilenet", "vit", "bert", "llama"])
def test_every_zoo_weight_gets_statistics(zoo, name):
    """Every prunable non-embedding weight of every reference model is reached by calibration."""
    spec, program = zoo(name)
    if True:
        data = CalibrationData([spec.make_inputs(2, 8)])
        stats = collect_stats(program, data)
        wanted = {w.fqn for w in find_prunable_weights(program).weights if w.role != "embedding"}
        assert set(stats) == wanted, name
        for fqn, d in stats.items():
            assert d["rows"] > 0 and torch.isfinite(d["act_sq"]).all(), (name, fqn)


def test_joining_batches_changes_no_statistic():
    m = Linear2().eval()
    data = _data((2, 5, 8), n=5)
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = torch.export.export(m, data.batches[0][0], dynamic_shapes=dynamic, strict=False)
    from sparsecc.plan.calibrate import _stacked

    assert len(_stacked(program, data.batches)) == 1  # five batches of one shape become one
    static = export_module(m, data.batches[0][0])
    assert len(_stacked(static, data.batches)) == 5  # a static batch axis takes no join
    joined = collect_stats(program, data, needs=("hessian",))
    data.join_batches = False
    apart = collect_stats(program, data, needs=("hessian",))
    for fqn in joined:
        assert joined[fqn]["rows"] == apart[fqn]["rows"]
        torch.testing.assert_close(joined[fqn]["hessian"], apart[fqn]["hessian"], rtol=1e-5, atol=1e-4)
