"""ProgramEditor (edits never touch the source program) and save/load with sparsecc metadata."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

import sparsecc
from sparsecc.core.ir import get_node_info, set_node_info
from sparsecc.core.program import (
    PROGRAM_META_FILE,
    ProgramEditor,
    load_program,
    placeholders_by_target,
    save_program,
    state_tensor,
)

aten = torch.ops.aten


class Net(nn.Module):
    """Parameters, a buffer and a lifted constant tensor, so every kind of lifted state is there."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)
        self.register_buffer("scale", torch.full((4,), 2.0))
        self.offset = torch.arange(4.0)  # a plain tensor attribute: lifted as CONSTANT_TENSOR

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x))) * self.scale + self.offset


X = (torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def program() -> ExportedProgram:
    torch.manual_seed(0)
    p = sparsecc.capture(Net(), X)
    kinds = [s.kind for s in p.graph_signature.input_specs]
    assert kinds == [InputKind.PARAMETER] * 4 + [InputKind.BUFFER, InputKind.CONSTANT_TENSOR, InputKind.USER_INPUT]
    return p


def _snapshot(p: ExportedProgram):
    return {
        "graph": str(p.graph),
        "code": p.graph_module.code,
        "signature": str(p.graph_signature),
        "state_ids": {k: id(v) for k, v in p.state_dict.items()},
        "state_values": {k: v.detach().clone() for k, v in p.state_dict.items()},
        "const_ids": {k: id(v) for k, v in p.constants.items()},
        "const_values": {k: v.clone() for k, v in p.constants.items()},
        "meta": {n.name: dict(n.meta) for n in p.graph.nodes},
    }


def _assert_unchanged(p: ExportedProgram, snap) -> None:
    assert str(p.graph) == snap["graph"]
    assert p.graph_module.code == snap["code"]
    assert str(p.graph_signature) == snap["signature"]
    assert {k: id(v) for k, v in p.state_dict.items()} == snap["state_ids"]
    for k, v in snap["state_values"].items():
        assert torch.equal(p.state_dict[k], v), k
    assert {k: id(v) for k, v in p.constants.items()} == snap["const_ids"]
    for k, v in snap["const_values"].items():
        assert torch.equal(p.constants[k], v), k
    for n in p.graph.nodes:
        assert n.meta.keys() == snap["meta"][n.name].keys(), n.name
        for key, value in snap["meta"][n.name].items():
            assert n.meta[key] is value, (n.name, key)


def test_editor_does_not_mutate_the_source(program):
    snap = _snapshot(program)
    ref = program.module()(*X)
    ed = ProgramEditor(program)
    w = ed.node_for_target("fc1.weight")
    mask = torch.rand(16, 8) > 0.5
    c = ed.add_constant("fc1.weight_mask", mask, name="c_fc1_weight_mask")
    users = list(w.users)
    with ed.graph.inserting_before(users[0]):
        mul = ed.graph.call_function(aten.mul.Tensor, (w, c))
    mul.meta["val"] = ed.fake_call(aten.mul.Tensor, w, c)
    for u in users:
        u.replace_input_with(w, mul)
    set_node_info(w, mask="fc1.weight_mask")
    ed.set_tensor("fc2.weight", torch.zeros(4, 16))
    ed.set_tensor("offset", torch.ones(4))
    new = ed.finish()

    _assert_unchanged(program, snap)
    assert get_node_info(next(n for n in program.graph.nodes if n.name == w.name)) is None
    torch.testing.assert_close(program.module()(*X), ref, rtol=0, atol=0)
    # The edit itself took effect in the new program.
    assert "fc1.weight_mask" in new.constants and "fc1.weight_mask" not in program.constants
    assert torch.equal(new.state_dict["fc2.weight"], torch.zeros(4, 16))
    out = new.module()(*X)
    torch.testing.assert_close(out, program.state_dict["fc2.bias"].expand(2, 4) * 2.0 + 1.0, rtol=1e-5, atol=1e-6)


def test_set_tensor_keeps_parameters_parameters(program):
    ed = ProgramEditor(program)
    ed.set_tensor("fc1.weight", torch.zeros(16, 8))
    new = ed.finish()
    assert isinstance(new.state_dict["fc1.weight"], nn.Parameter)
    assert isinstance(program.state_dict["fc1.weight"], nn.Parameter)
    assert not torch.equal(program.state_dict["fc1.weight"], torch.zeros(16, 8))
    with pytest.raises(KeyError, match="nope"):
        ed.set_tensor("nope", torch.zeros(1))


def test_editor_does_not_mutate_source_node_info():
    torch.manual_seed(0)
    masked = sparsecc.sparsify(sparsecc.capture(Net(), X), {"pattern": "2:4"}).program
    w = placeholders_by_target(masked)["fc1.weight"]
    before = get_node_info(w)
    ed = ProgramEditor(masked)
    set_node_info(ed.node_for_target("fc1.weight"), mask=None, extra={"touched": True})
    ed.finish()
    assert get_node_info(w) is before
    assert before.mask == "fc1.weight_mask" and before.extra == {}


def _reference(program: ExportedProgram) -> Net:
    m = Net()
    m.load_state_dict(program.state_dict)
    return m


def test_add_constant_goes_after_lifted_state_and_before_user_inputs(program):
    ed = ProgramEditor(program)
    t = torch.full((16,), 3.0)
    c = ed.add_constant("hidden_scale", t, name="c_hidden_scale")
    relu = next(n for n in ed.graph.nodes if n.target == aten.relu.default)
    with ed.graph.inserting_after(relu):
        mul = ed.graph.call_function(aten.mul.Tensor, (relu, c))
    mul.meta["val"] = ed.fake_call(aten.mul.Tensor, relu, c)
    relu.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)
    new = ed.finish()

    specs = new.graph_signature.input_specs
    assert [(s.kind, s.target) for s in specs] == [
        (InputKind.PARAMETER, "fc1.weight"),
        (InputKind.PARAMETER, "fc1.bias"),
        (InputKind.PARAMETER, "fc2.weight"),
        (InputKind.PARAMETER, "fc2.bias"),
        (InputKind.BUFFER, "scale"),
        (InputKind.CONSTANT_TENSOR, "offset"),
        (InputKind.CONSTANT_TENSOR, "hidden_scale"),
        (InputKind.USER_INPUT, None),
    ]
    placeholders = [n.name for n in new.graph.nodes if n.op == "placeholder"]
    assert placeholders == [s.arg.name for s in specs]
    assert placeholders[-2] == "c_hidden_scale"
    assert new.constants["hidden_scale"] is t
    assert state_tensor(new, "hidden_scale") is t
    new.validate()
    m = _reference(program)
    want = m.fc2(3.0 * torch.relu(m.fc1(X[0]))) * m.scale + m.offset
    torch.testing.assert_close(new.module()(*X), want, rtol=1e-5, atol=1e-6)


def test_finish_follows_a_replaced_output(program):
    # A pass that rewrites the op feeding the output (here: one more op after the last add)
    # gives a program whose output signature names the new node.
    ed = ProgramEditor(program)
    out_node = next(n for n in ed.graph.nodes if n.op == "output")
    (result,) = out_node.args[0]
    with ed.graph.inserting_before(out_node):
        neg = ed.graph.call_function(aten.neg.default, (result,))
    neg.meta["val"] = ed.fake_call(aten.neg.default, result)
    out_node.args = ((neg,),)
    new = ed.finish()
    assert [s.arg.name for s in new.graph_signature.output_specs] == [neg.name]
    torch.testing.assert_close(new.module()(*X), -program.module()(*X), rtol=0, atol=0)


def test_add_constant_refuses_an_existing_name(program):
    ed = ProgramEditor(program)
    for target in ("offset", "fc1.weight"):
        with pytest.raises(ValueError, match=f"'{target}'"):
            ed.add_constant(target, torch.zeros(1), name="c_dup")


def test_remove_input_refuses_while_used_then_removes(program):
    ed = ProgramEditor(program)
    node = ed.node_for_target("offset")
    with pytest.raises(ValueError) as info:
        ed.remove_input(node)
    assert node.name in str(info.value) and "users" in str(info.value)
    assert "offset" in ed.constants  # nothing removed

    # Replace `+ offset` by `+ 0` and the constant can go.
    (add,) = list(node.users)
    add.replace_input_with(node, 0.0)
    ed.remove_input(node)
    new = ed.finish()
    assert "offset" not in new.constants
    assert "offset" in program.constants
    assert all(s.target != "offset" for s in new.graph_signature.input_specs)
    torch.testing.assert_close(
        new.module()(*X), program.module()(*X) - program.constants["offset"], rtol=1e-5, atol=1e-6
    )


def test_node_for_target_unknown(program):
    with pytest.raises(KeyError, match="no_such"):
        ProgramEditor(program).node_for_target("no_such.weight")


def test_state_tensor_unknown(program):
    with pytest.raises(KeyError, match="no_such"):
        state_tensor(program, "no_such")


def test_unedited_finish_is_equivalent(program):
    new = ProgramEditor(program).finish()
    assert new is not program
    assert str(new.graph) == str(program.graph)
    assert str(new.graph_signature) == str(program.graph_signature)
    torch.testing.assert_close(new.module()(*X), program.module()(*X), rtol=0, atol=0)


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.sum() > 0, lambda x: self.fc(x), lambda x: x - 1.0, (x,))


def test_editor_keeps_submodules_of_control_flow():
    # torch.cond keeps its branches as submodules of the graph module (get_attr nodes).
    torch.manual_seed(0)
    program = sparsecc.capture(Branchy(), (torch.randn(2, 4),))
    new = ProgramEditor(program).finish()
    for x in (torch.ones(2, 4), -torch.ones(2, 4)):
        torch.testing.assert_close(new.module()(x), program.module()(x), rtol=0, atol=0)


# -- save / load ---------------------------------------------------------------------------


def _infos(p: ExportedProgram):
    out = {}
    for n in p.graph.nodes:
        info = get_node_info(n)
        if info is not None:
            out[n.name] = (info.spec, info.mask, info.mask_of, info.apply_mask_of)
    return out


def test_save_load_round_trip_keeps_node_info_and_outputs(tmp_path):
    torch.manual_seed(0)
    masked = sparsecc.sparsify(sparsecc.capture(Net(), X), {"pattern": "2:4"}).program
    infos = _infos(masked)
    # What a masked program carries: specs and mask names on weights, mask_of on masks,
    # apply_mask_of on the mul nodes.
    assert {name: v[1:] for name, v in infos.items()} == {
        "p_fc1_weight": ("fc1.weight_mask", None, None),
        "p_fc2_weight": ("fc2.weight_mask", None, None),
        "c_fc1_weight_mask": (None, "fc1.weight", None),
        "c_fc2_weight_mask": (None, "fc2.weight", None),
        "mul_tensor": (None, None, "fc1.weight"),
        "mul_tensor_1": (None, None, "fc2.weight"),
    }
    spec = infos["p_fc1_weight"][0]
    assert (str(spec.pattern), spec.target, spec.achieved) == ("2:4", 0.5, 0.5)

    path = tmp_path / "masked.pt2"
    save_program(masked, path)
    loaded = load_program(path)
    assert _infos(loaded) == infos
    assert sparsecc.mask_specs(loaded) == sparsecc.mask_specs(masked)
    for k, v in masked.constants.items():
        assert torch.equal(loaded.constants[k], v), k
    for x in (X[0], torch.randn(2, 8)):
        assert torch.equal(loaded.module()(x), masked.module()(x))

    # A loaded program still goes through the passes: folding it works and keeps the outputs.
    folded = sparsecc.sparsify(loaded, {"pattern": "2:4"}, fold=True).program
    torch.testing.assert_close(folded.module()(X[0]), masked.module()(X[0]), rtol=1e-5, atol=1e-6)


def test_save_load_round_trip_of_a_folded_program(tmp_path):
    torch.manual_seed(0)
    folded = sparsecc.sparsify(sparsecc.capture(Net(), X), {"pattern": "2:4"}, fold=True).program
    path = tmp_path / "folded.pt2"
    save_program(folded, path)
    loaded = load_program(path)
    assert _infos(loaded) == _infos(folded)
    assert set(sparsecc.mask_specs(loaded)) == {"fc1.weight", "fc2.weight"}
    assert all(v[1:] == (None, None, None) for v in _infos(loaded).values())  # no masks left
    assert torch.equal(loaded.module()(*X), folded.module()(*X))


def test_load_program_of_a_plain_export(tmp_path, program):
    path = tmp_path / "plain.pt2"
    torch.export.save(program, path)
    loaded = load_program(path)
    assert _infos(loaded) == {}
    assert torch.equal(loaded.module()(*X), program.module()(*X))
    assert PROGRAM_META_FILE == "sparsecc.json"


def test_sequential_input_named_input_survives_editing():
    """FX renames a placeholder called ``input`` when copying; the signature must follow."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4)).eval()
    x = torch.randn(2, 8)
    program = sparsecc.capture(model, (x,))
    assert program.graph_signature.user_inputs == ("input",)
    folded = sparsecc.sparsify(program, {"pattern": "2:4"}, fold=True).program
    assert len(folded.graph_signature.user_inputs) == 1
    masks = {n: (p != 0) for n, p in folded.state_dict.items()}
    assert torch.equal(masks["0.weight"].sum(1), torch.full((8,), 4))
    torch.testing.assert_close(folded.module()(x), torch.nn.functional.linear(
        torch.relu(torch.nn.functional.linear(x, folded.state_dict["0.weight"], model[0].bias)),
        folded.state_dict["2.weight"], model[2].bias), rtol=1e-5, atol=1e-6)
