"""sparsecc.recovery.outputs: the distillation loss leaves a batch's padding out."""

from __future__ import annotations

import pytest
import torch

from sparsecc.recovery import RecoveryOptions
from sparsecc.recovery.hidden import hidden_loss
from sparsecc.recovery.outputs import batch_loss, distillation_loss, real_tokens, token_mask


def _padded_pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    teacher = torch.randn(2, 5, 6, generator=g)
    student = teacher + 0.1 * torch.randn(2, 5, 6, generator=g)
    return student, teacher, mask


@pytest.mark.parametrize("kind", ["cosine", "mse", "kl"])
def test_padded_positions_do_not_change_the_loss(kind):
    student, teacher, mask = _padded_pair()
    m = token_mask({"attention_mask": mask})
    base = distillation_loss(student, teacher, kind, 2.0, m)
    junk = student.clone()
    junk[0, 3:] = 1e3  # whatever the student says at padding
    assert float(distillation_loss(junk, teacher, kind, 2.0, m)) == pytest.approx(float(base), rel=1e-6)
    assert float(distillation_loss(junk, teacher, kind, 2.0)) > 10 * float(base)  # unmasked it counts
    # the masked loss is the loss of the real tokens alone
    real = distillation_loss(student[mask.bool()], teacher[mask.bool()], kind, 2.0)
    if kind == "kl":  # batchmean: summed over the kept tokens, divided by the 2 sequences, not the 8 tokens
        real = real * 8 / 2
    torch.testing.assert_close(base, real, rtol=1e-6, atol=0)


def test_a_batch_without_padding_has_no_mask_and_the_loss_is_unchanged():
    student, teacher, _ = _padded_pair(1)
    assert token_mask({"attention_mask": torch.ones(2, 5, dtype=torch.long)}) is None
    assert token_mask({"input_ids": torch.zeros(2, 5)}) is None and token_mask(None) is None
    opts = RecoveryOptions("distill", loss="cosine")
    assert token_mask({"attention_mask": torch.tensor([[1, 0]])}, opts) is not None
    off = RecoveryOptions("distill", loss="cosine", extra={"mask_padding": False})
    assert token_mask({"attention_mask": torch.tensor([[1, 0]])}, off) is None
    full = batch_loss([student], [teacher], opts, {"attention_mask": torch.ones(2, 5)})
    torch.testing.assert_close(full, distillation_loss(student, teacher, "cosine"), rtol=0, atol=0)


def test_outputs_without_a_token_axis_and_hidden_states_under_the_mask():
    student, teacher, mask = _padded_pair(2)
    m = mask.bool()
    pooled = torch.randn(2, 6)
    assert real_tokens(pooled, m) is pooled  # [batch, features]: nothing to select
    assert real_tokens(student, m).shape == (8, 6)
    junk = student.clone()
    junk[0, 3:] = -50.0
    torch.testing.assert_close(hidden_loss([junk], [teacher], m), hidden_loss([student], [teacher], m),
                               rtol=1e-6, atol=0)
    assert float(hidden_loss([junk], [teacher])) > 10 * float(hidden_loss([student], [teacher], m))


def test_the_loss_before_and_after_is_measured_on_the_first_loss_batches():
    from sparsecc.recovery.outputs import LOSS_BATCHES, loss_batch_count, output_loss

    class Scale(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    batches = [((torch.full((1, 3), float(i + 1)),), {}) for i in range(5)]
    targets = [[x * 1.0] for (x,), _ in batches]  # MSE of 2x against x: x**2, (i + 1)**2 for batch i
    opts = RecoveryOptions("distill", loss="mse")
    assert loss_batch_count(opts, 1000) == LOSS_BATCHES and loss_batch_count(opts, 5) == 5
    assert output_loss(Scale(), targets, batches, opts) == pytest.approx(sum((i + 1) ** 2 for i in range(5)) / 5)
    two = RecoveryOptions("distill", loss="mse", extra={"loss_batches": 2})
    assert output_loss(Scale(), targets, batches, two) == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="loss_batches must be >= 1"):
        loss_batch_count(RecoveryOptions("distill", extra={"loss_batches": 0}), 5)


def test_the_pooled_term_is_the_cosine_of_the_mean_over_real_tokens():
    from sparsecc.recovery.outputs import mean_pooled

    student, teacher, mask = _padded_pair(3)
    m = mask.bool()
    torch.testing.assert_close(mean_pooled(teacher, m)[0], teacher[0, :3].mean(0), rtol=1e-6, atol=0)
    torch.testing.assert_close(mean_pooled(teacher, None), teacher.mean(1), rtol=0, atol=0)
    plain = distillation_loss(student, teacher, "cosine", 2.0, m)
    both = distillation_loss(student, teacher, "cosine", 2.0, m, pooled=3.0)
    by_hand = 1 - torch.nn.functional.cosine_similarity(
        torch.stack([student[0, :3].mean(0), student[1].mean(0)]),
        torch.stack([teacher[0, :3].mean(0), teacher[1].mean(0)]), dim=-1).mean()
    torch.testing.assert_close(both - plain, 3.0 * by_hand, rtol=1e-5, atol=1e-7)
    assert float(by_hand) > 0
    junk = student.clone()
    junk[0, 3:] = 1e3  # padding stays out of the pooled embedding too
    torch.testing.assert_close(distillation_loss(junk, teacher, "cosine", 2.0, m, pooled=3.0), both,
                               rtol=1e-6, atol=0)
    # only token outputs under the cosine loss get it; options.extra["pooled"] reaches it through batch_loss
    assert distillation_loss(student, teacher, "mse", 2.0, m, pooled=3.0) == distillation_loss(
        student, teacher, "mse", 2.0, m)
    opts = RecoveryOptions("distill", loss="cosine", extra={"pooled": 3.0})
    torch.testing.assert_close(batch_loss([student], [teacher], opts, {"attention_mask": mask}), both,
                               rtol=0, atol=0)
