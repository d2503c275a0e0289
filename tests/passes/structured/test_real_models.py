"""Real pretrained models prune at 50% and the shrunk program equals the channel-masked one."""

from __future__ import annotations

import pytest
import torch

from sparsecc.passes.structured import (
    MaskChannelsPass,
    ShrinkChannelsPass,
    find_dependency_groups,
    plan_structured_pruning,
)
from sparsecc.core.program import ProgramEditor

pytestmark = pytest.mark.slow
RTOL = 1e-5


def as_float64(program):
    """The same program computing in float64 (state and dtype casts), to check a transform
    is exact beyond fp32 rounding: deep models amplify summation-order differences."""
    editor = ProgramEditor(program)
    for target in list(editor.state_dict) + list(editor.constants):
        t = editor.tensor(target)
        if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
            editor.set_tensor(target, t.detach().double())
            try:
                editor.node_for_target(target).meta["val"] = editor.fake(editor.tensor(target))
            except KeyError:
                pass
    swap = lambda a: torch.float64 if a is torch.float32 else a  # noqa: E731
    for node in editor.graph.nodes:
        if node.op == "call_function":
            node.args = tuple(swap(a) for a in node.args)
            node.kwargs = {k: swap(v) for k, v in node.kwargs.items()}
    return editor.finish()


def check(spec, program, plan, float64=False):
    small = ShrinkChannelsPass(plan)(program).program
    masked = MaskChannelsPass(plan)(program).program
    if float64:
        small, masked = as_float64(small), as_float64(masked)
    sets = [(spec.example_args, spec.example_kwargs)]
    if spec.make_inputs is not None and spec.dynamic_shapes is not None:
        sets.append(spec.make_inputs(3, 7))
    for args, kwargs in sets:
        with torch.no_grad():
            got = torch.utils._pytree.tree_leaves(small.module()(*args, **kwargs))[0]
            want = torch.utils._pytree.tree_leaves(masked.module()(*args, **kwargs))[0]
        assert got.shape == want.shape
        err = float((got - want).abs().max() / want.abs().max())
        assert err <= RTOL, f"{spec.name}: shrunk differs from masked by {err:.2e} of the output scale"
    return small


def test_minilm_heads_and_ffn(zoo):
    spec, program = zoo("minilm")
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, 0.5, analysis=analysis)
    kinds = [analysis.groups[g].kind for g in plan.kept]
    assert kinds.count("head") == 6 and kinds.count("channel") == 6  # every layer: heads and FFN
    small = check(spec, program, plan)
    sd = small.state_dict
    assert sd["encoder.layer.0.attention.self.query.weight"].shape == (192, 384)  # 6 of 12 heads
    assert sd["encoder.layer.0.intermediate.dense.weight"].shape == (768, 384)
    # the residual stream (LayerNorm) and the output stay whole, and say why
    hidden = next(g for g in analysis.groups if any(m.target.endswith("attention.output.dense.weight") and m.axis == 0 for m in g.members))
    assert not hidden.prunable and any("layer_norm" in r for r in hidden.reasons)


def test_efficientnet_lite0_channels(zoo):
    spec, program = zoo("efficientnet-lite0")
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, 0.5, analysis=analysis, round_to=8)
    # the stem, every block's expanded (depthwise) space and projection, the head: all 24 prunable
    assert len(plan.kept) == len(analysis.prunable()) == 24
    small = check(spec, program, plan)
    assert small.state_dict["_conv_stem.weight"].shape[0] == 16
    x = torch.randn(5, 3, 224, 224)  # the dynamic batch survives the shrink
    assert small.module()(x).shape == (5, 1000)


def test_smollm2_gqa_heads_and_ffn(zoo):
    spec, program = zoo("smollm2")
    analysis = find_dependency_groups(program)
    plan = plan_structured_pruning(program, 0.5, analysis=analysis)
    heads = [analysis.groups[g] for g in plan.kept if analysis.groups[g].kind == "head"]
    kv_groups = [g for g in heads if any(m.target.endswith("k_proj.weight") for m in g.members)]
    assert len(kv_groups) == 30 and len(heads) == 60  # per layer: kv groups and query heads within them
    small = check(spec, program, plan, float64=True)
    sd = small.state_dict
    # 9 query heads over 3 kv heads (head dim 64): 2 kv groups x 2 query heads each remain
    assert sd["model.layers.0.self_attn.k_proj.weight"].shape == (128, 576)
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (256, 576)
    assert sd["model.layers.0.mlp.down_proj.weight"].shape == (576, 768)
