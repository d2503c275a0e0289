"""Capture: torch.export with eval mode, restored modes, and errors that say where and what to try."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.export import Dim, ExportedProgram

import sparsecc
from sparsecc import CaptureError, NoPrunableLayersError


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(self.drop(x))


def _conv_bn() -> ConvBN:
    torch.manual_seed(0)
    m = ConvBN()
    with torch.no_grad():  # non-trivial running statistics
        m.bn.running_mean.copy_(torch.randn(8) * 0.3)
        m.bn.running_var.copy_(torch.rand(8) + 0.5)
        m.bn.weight.copy_(torch.rand(8) + 0.5)
        m.bn.bias.copy_(torch.randn(8) * 0.1)
    return m


def test_capture_returns_exported_program():
    m = _conv_bn().eval()
    x = torch.randn(2, 3, 6, 6)
    program = sparsecc.capture(m, (x,))
    assert isinstance(program, ExportedProgram)
    torch.testing.assert_close(program.module()(x), m(x), rtol=1e-5, atol=1e-6)


def test_capture_accepts_a_single_tensor_as_args():
    m = _conv_bn().eval()
    x = torch.randn(2, 3, 6, 6)
    program = sparsecc.capture(m, x)
    torch.testing.assert_close(program.module()(x), m(x), rtol=1e-5, atol=1e-6)


def test_captured_in_eval_mode_and_training_mode_restored():
    m = _conv_bn().train()
    stats = (m.bn.running_mean.clone(), m.bn.running_var.clone(), int(m.bn.num_batches_tracked))
    x = torch.randn(4, 3, 6, 6)
    program = sparsecc.capture(m, (x,))
    assert m.training and all(sub.training for sub in m.modules())
    # Capture did not update the running statistics.
    assert torch.equal(m.bn.running_mean, stats[0]) and torch.equal(m.bn.running_var, stats[1])
    assert int(m.bn.num_batches_tracked) == stats[2]
    # The program uses running stats (eval BatchNorm) and no dropout: it is the eager eval output.
    expected = m.eval()(x)
    out = program.module()(x)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(program.module()(x), out, rtol=0, atol=0)  # deterministic: no dropout


def test_eval_model_stays_in_eval_mode():
    m = _conv_bn().eval()
    sparsecc.capture(m, (torch.randn(2, 3, 6, 6),))
    assert not any(sub.training for sub in m.modules())


def test_mixed_submodule_modes_restored():
    # Fine-tuning with frozen BatchNorm: the model trains, its BN stays in eval mode.
    m = _conv_bn().train()
    m.bn.eval()
    sparsecc.capture(m, (torch.randn(2, 3, 6, 6),))
    assert m.training and m.conv.training and m.drop.training
    assert not m.bn.training


def test_training_mode_restored_after_a_failed_capture():
    m = DataDependent().train()
    with pytest.raises(CaptureError):
        sparsecc.capture(m, (torch.randn(2, 4),))
    assert m.training and m.block.training


def test_non_module_is_a_type_error():
    with pytest.raises(TypeError, match="torch.nn.Module.*function"):
        sparsecc.capture(lambda x: x * 2, (torch.randn(2),))
    with pytest.raises(TypeError, match="ExportedProgram"):
        sparsecc.capture(sparsecc.capture(nn.Linear(2, 2), (torch.randn(1, 2),)), (torch.randn(1, 2),))


# -- errors ---------------------------------------------------------------------------


class Gate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent branch
            return self.fc(x)
        return x


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre = nn.Linear(4, 4)
        self.block = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pre(x))


def test_data_dependent_control_flow_names_module_line_and_hint():
    with pytest.raises(CaptureError) as info:
        sparsecc.capture(DataDependent(), (torch.randn(2, 4),))
    err = info.value
    msg = str(err)
    lines, first = inspect.getsourcelines(Gate.forward)
    branch_line = first + next(i for i, ln in enumerate(lines) if "x.sum() > 0" in ln)
    assert "block (Gate)" in msg, msg
    assert err.module is not None and err.module.startswith("block")
    assert f"test_capture.py:{branch_line}" in msg, msg
    assert "x.sum() > 0" in msg
    assert "torch.cond" in err.hint and "try: " + err.hint in msg
    assert err.cause is not None and err.__cause__ is err.cause


class Specializes(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 4))  # fixes the batch size at 2


def test_specialized_dynamic_dim_gives_dynamic_shapes_hint():
    with pytest.raises(CaptureError) as info:
        sparsecc.capture(Specializes(), (torch.randn(2, 4),), dynamic_shapes=({0: Dim("batch")},))
    msg = str(info.value)
    assert "dynamic_shapes" in info.value.hint and "Dim.AUTO" in info.value.hint
    assert "try: " + info.value.hint in msg
    assert "batch" in msg  # names the dim


def test_specialized_dynamic_dim_says_what_it_was_fixed_to():
    with pytest.raises(CaptureError) as info:
        sparsecc.capture(Specializes(), (torch.randn(2, 4),), dynamic_shapes=({0: Dim("batch")},))
    # torch explains the specialization on a later line of its message; it must survive.
    msg = str(info.value)
    assert "specialized" in msg and "constant (2)" in msg, msg


# -- Hugging Face models: keyword inputs, dynamic batch and sequence --------------------


@pytest.mark.parametrize("name", ["hf-bert-tiny", "hf-llama-tiny"])
def test_capture_hf_tiny_runs_at_other_shapes(name, zoo):
    pytest.importorskip("transformers")
    # `zoo` (conftest) captures with sparsecc.capture(model, args, kwargs, dynamic_shapes), once per session.
    spec, program = zoo(name)
    assert isinstance(program, ExportedProgram)
    assert spec.example_args == () and set(spec.example_kwargs) == {"input_ids", "attention_mask"}
    assert not spec.model.training
    ex_batch, ex_seq = spec.example_kwargs["input_ids"].shape
    module = program.module()
    for batch, seq in ((3, 24), (1, 5)):
        assert (batch, seq) != (ex_batch, ex_seq)
        args, kwargs = spec.make_inputs(batch, seq)
        out = module(*args, **kwargs)
        ref = spec.model(*args, **kwargs)
        got, want = out[0], ref[0]  # last_hidden_state / logits
        assert got.shape[:2] == (batch, seq)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


# -- sparsify on a program with nothing to prune -------------------------------------------


class NoWeights(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x * self.scale).sum(-1)


def test_sparsify_without_prunable_layer():
    program = sparsecc.capture(NoWeights(), (torch.randn(2, 4),))
    with pytest.raises(NoPrunableLayersError) as info:
        sparsecc.sparsify(program, {"pattern": "2:4"})
    msg = str(info.value)
    assert "no prunable layer" in msg
    assert "aten.mul.Tensor" in msg  # what the program does call
