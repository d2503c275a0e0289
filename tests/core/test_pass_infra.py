"""Pass infrastructure: ordering, nesting, instruments, and errors that name the pass and node."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from torch.export import ExportedProgram

import sparsecc
from sparsecc.core.pass_infra import (
    GraphDumpInstrument,
    PassBase,
    PassError,
    PassInstrument,
    PassManager,
    PassResult,
    PostconditionError,
    PreconditionError,
    TimingInstrument,
    VerifyInstrument,
)
from sparsecc.core.program import ProgramEditor

aten = torch.ops.aten


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


X = (torch.randn(2, 8, generator=torch.Generator().manual_seed(0)),)


@pytest.fixture(scope="module")
def program() -> ExportedProgram:
    torch.manual_seed(0)
    return sparsecc.capture(TwoLayer(), X)


# -- passes used by the tests -----------------------------------------------------------


class Record(PassBase):
    """Appends its tag to ``log``; optionally returns a new program and says it modified it."""

    def __init__(self, tag: str, log: list, modify: bool = False):
        self.tag, self.log, self.modify = tag, log, modify
        self.seen: list[ExportedProgram] = []

    @property
    def name(self) -> str:
        return f"Record[{self.tag}]"

    def call(self, program: ExportedProgram) -> PassResult:
        self.log.append(self.tag)
        self.seen.append(program)
        if self.modify:
            return PassResult(ProgramEditor(program).finish(), True)
        return PassResult(program, False)


class DoubleReluPass(PassBase):
    """relu(x) -> relu(x) * 2: a real edit that changes the output."""

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        for n in list(ed.graph.nodes):
            if n.target == aten.relu.default:
                with ed.graph.inserting_after(n):
                    mul = ed.graph.call_function(aten.mul.Tensor, (n, 2.0))
                mul.meta["val"] = ed.fake_call(aten.mul.Tensor, n, 2.0)
                n.replace_all_uses_with(mul, delete_user_cb=lambda u: u is not mul)
        return PassResult(ed.finish(), True)


class BreakWeightPass(PassBase):
    """Returns a program that validates but no longer runs: fc2's weight has the wrong shape."""

    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        ed.set_tensor("fc2.weight", torch.zeros(3, 3))
        return PassResult(ed.finish(), True)


class FailAtNodePass(PassBase):
    def call(self, program: ExportedProgram) -> PassResult:
        ed = ProgramEditor(program)
        for n in ed.graph.nodes:
            if n.target == aten.relu.default:
                with self.at(n):
                    raise ValueError("cannot rewrite this relu")
        return PassResult(ed.finish(), False)


class FailAtNamePass(PassBase):
    def call(self, program: ExportedProgram) -> PassResult:
        with self.at("some_node"):
            {}["missing"]
        return PassResult(program, False)


class FailPlainPass(PassBase):
    def call(self, program: ExportedProgram) -> PassResult:
        raise RuntimeError("plain failure")


class NeedsMulPass(PassBase):
    def requires(self, program: ExportedProgram) -> None:
        if not any(n.target == aten.mul.Tensor for n in program.graph.nodes):
            raise ValueError("needs a mul node")

    def call(self, program: ExportedProgram) -> PassResult:
        return PassResult(program, False)


class PromisesNoReluPass(PassBase):
    def call(self, program: ExportedProgram) -> PassResult:
        return PassResult(program, False)

    def ensures(self, program: ExportedProgram) -> None:
        relus = [n.name for n in program.graph.nodes if n.target == aten.relu.default]
        if relus:
            raise AssertionError(f"relu left: {relus}")


class Events(PassInstrument):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def before(self, pass_: PassBase, program: ExportedProgram) -> None:
        self.events.append(("before", pass_.name))

    def after(self, pass_: PassBase, result: PassResult) -> None:
        self.events.append(("after", pass_.name))


# -- ordering, nesting, modified ---------------------------------------------------------


def test_passes_run_in_order_each_on_the_previous_output(program):
    log: list[str] = []
    a, b, c = Record("a", log, modify=True), Record("b", log, modify=True), Record("c", log)
    result = PassManager([a, b, c])(program)
    assert log == ["a", "b", "c"]
    assert a.seen == [program]
    assert b.seen[0] is not program and c.seen[0] is not b.seen[0]
    assert result.program is c.seen[0]  # c returned its input unchanged


def test_manager_runs_a_real_edit(program):
    result = PassManager([DoubleReluPass()])(program)
    assert result.modified
    ref = program.module()(*X)
    m = TwoLayer()
    m.load_state_dict(program.state_dict)
    want = m.fc2(2.0 * torch.relu(m.fc1(X[0])))
    torch.testing.assert_close(result.program.module()(*X), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(program.module()(*X), ref, rtol=0, atol=0)  # input untouched


@pytest.mark.parametrize(
    "flags,expected",
    [((False, False), False), ((True, False), True), ((False, True), True), ((), False)],
)
def test_modified_is_any_pass_modified(program, flags, expected):
    log: list[str] = []
    passes = [Record(str(i), log, modify=f) for i, f in enumerate(flags)]
    assert PassManager(passes)(program).modified is expected


def test_modified_aggregates_through_nesting(program):
    log: list[str] = []
    inner = PassManager([Record("i1", log), Record("i2", log, modify=True)], name="inner")
    assert PassManager([Record("o1", log), inner])(program).modified is True
    inner_clean = PassManager([Record("i1", log)], name="inner")
    assert PassManager([Record("o1", log), inner_clean])(program).modified is False


def test_nested_managers_run_in_order_and_outer_instruments_see_inner_passes(program):
    log: list[str] = []
    outer_events, inner_events = Events(), Events()
    inner = PassManager([Record("i1", log), Record("i2", log)], instruments=[inner_events], name="inner")
    outer = PassManager([Record("a", log), inner, Record("z", log)], instruments=[outer_events], name="outer")
    outer(program)
    assert log == ["a", "i1", "i2", "z"]
    assert outer_events.events == [
        ("before", "Record[a]"), ("after", "Record[a]"),
        ("before", "inner"),
        ("before", "Record[i1]"), ("after", "Record[i1]"),
        ("before", "Record[i2]"), ("after", "Record[i2]"),
        ("after", "inner"),
        ("before", "Record[z]"), ("after", "Record[z]"),
    ]
    # The inner manager's own instruments see only its passes.
    assert inner_events.events == [
        ("before", "Record[i1]"), ("after", "Record[i1]"),
        ("before", "Record[i2]"), ("after", "Record[i2]"),
    ]


def test_manager_is_a_pass_with_a_name(program):
    pm = PassManager([Record("a", [])], name="mask")
    assert isinstance(pm, PassBase)
    assert pm.name == "mask"
    assert PassManager([]).name == "PassManager"
    assert repr(pm) == "mask([Record[a]()])"
    assert PassManager([])(program).program is program


# -- instruments ------------------------------------------------------------------------


def test_timing_instrument_records_each_pass(program):
    log: list[str] = []
    timer = TimingInstrument()
    inner = PassManager([Record("i", log)], name="inner")
    PassManager([Record("a", log), inner, DoubleReluPass()], instruments=[timer])(program)
    names = [n for n, _ in timer.timings]
    assert names == ["Record[a]", "Record[i]", "inner", "DoubleReluPass"]
    assert all(t >= 0.0 for _, t in timer.timings)
    # The nested manager's time covers its pass.
    t = dict(timer.timings)
    assert t["inner"] >= t["Record[i]"]
    assert timer.total() == pytest.approx(sum(t for _, t in timer.timings), rel=1e-9)


def test_timing_total_excludes_unnamed_managers(program):
    timer = TimingInstrument()
    PassManager([PassManager([Record("i", [])])], instruments=[timer])(program)
    assert [n for n, _ in timer.timings] == ["Record[i]", "PassManager"]
    assert timer.total() == pytest.approx(timer.timings[0][1], rel=1e-9)


def test_graph_dump_writes_one_file_per_pass(program, tmp_path):
    folder = tmp_path / "dump" / "nested"
    log: list[str] = []
    inner = PassManager([Record("i", log)], name="inner")
    PassManager([DoubleReluPass(), inner, Record("z", log)], instruments=[GraphDumpInstrument(folder)])(program)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["00_input.txt", "01_DoubleReluPass.txt", "02_Record[i].txt", "03_Record[z].txt"]
    assert (folder / "00_input.txt").read_text() == str(program.graph)
    first = (folder / "01_DoubleReluPass.txt").read_text()
    assert first.startswith("# DoubleReluPass modified=True\n")
    assert "aten.mul.Tensor" in first and "aten.mul.Tensor" not in (folder / "00_input.txt").read_text()
    assert (folder / "03_Record[z].txt").read_text().startswith("# Record[z] modified=False\n")


def test_verify_instrument_names_the_pass_that_broke_the_program(program):
    log: list[str] = []
    after = Record("after", log)
    pm = PassManager(
        [Record("ok", log), BreakWeightPass(), after],
        instruments=[VerifyInstrument((X, {}))],
    )
    with pytest.raises(PostconditionError) as info:
        pm(program)
    assert info.value.pass_name == "BreakWeightPass"
    assert str(info.value).startswith("BreakWeightPass: program no longer valid")
    assert "shapes cannot be multiplied" in str(info.value)
    assert log == ["ok"]  # stopped at the broken pass


def test_verify_instrument_passes_a_sound_pipeline(program):
    result = PassManager([DoubleReluPass()], instruments=[VerifyInstrument((X, {}))])(program)
    assert result.modified


def test_verify_instrument_sees_passes_in_nested_managers(program):
    inner = PassManager([BreakWeightPass()], name="inner")
    with pytest.raises(PostconditionError) as info:
        PassManager([inner], instruments=[VerifyInstrument((X, {}))])(program)
    assert info.value.pass_name == "BreakWeightPass"


# -- errors -----------------------------------------------------------------------------


def test_error_inside_at_node_names_pass_and_node(program):
    with pytest.raises(PassError) as info:
        PassManager([FailAtNodePass()])(program)
    err = info.value
    assert type(err) is PassError
    assert (err.pass_name, err.node) == ("FailAtNodePass", "relu")
    assert str(err) == "FailAtNodePass at node relu: ValueError: cannot rewrite this relu"
    assert isinstance(err.__cause__, ValueError)


def test_error_inside_at_node_name_string(program):
    with pytest.raises(PassError) as info:
        FailAtNamePass()(program)
    assert info.value.node == "some_node"
    assert "FailAtNamePass at node some_node: KeyError" in str(info.value)


def test_error_outside_at_names_the_pass(program):
    log: list[str] = []
    with pytest.raises(PassError) as info:
        PassManager([Record("a", log), PassManager([FailPlainPass()], name="inner"), Record("b", log)])(program)
    err = info.value
    assert err.pass_name == "FailPlainPass" and err.node is None
    assert str(err) == "FailPlainPass: RuntimeError: plain failure"
    assert log == ["a"]


def test_requires_failing_is_a_precondition_error(program):
    with pytest.raises(PreconditionError) as info:
        PassManager([NeedsMulPass()])(program)
    assert info.value.pass_name == "NeedsMulPass"
    assert str(info.value) == "NeedsMulPass: needs a mul node"
    # With the mul in place the precondition holds.
    PassManager([DoubleReluPass(), NeedsMulPass()])(program)


def test_ensures_failing_is_a_postcondition_error(program):
    with pytest.raises(PostconditionError) as info:
        PromisesNoReluPass()(program)
    assert info.value.pass_name == "PromisesNoReluPass"
    assert re.fullmatch(r"PromisesNoReluPass: relu left: \['relu'\]", str(info.value))


def test_pass_errors_are_pass_errors():
    assert issubclass(PreconditionError, PassError) and issubclass(PostconditionError, PassError)
