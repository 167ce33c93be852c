from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from graphopt import ConfigError, DistillConfig, FeatureHint
from graphopt.recovery import RecoveryLoss, distillation_loss


def test_alpha_one_is_cross_entropy():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.equal(distillation_loss(s, t, y, DistillConfig(alpha=1.0)), F.cross_entropy(s, y))


def test_hinton_formula():
    s, t, y = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    tau, alpha = 3.0, 0.3
    p_t, p_s = F.softmax(t / tau, -1), F.softmax(s / tau, -1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(-1).mean()  # KL(p_t || p_s), batch mean
    expected = alpha * F.cross_entropy(s, y) + (1 - alpha) * tau**2 * kl
    torch.testing.assert_close(distillation_loss(s, t, y, DistillConfig(tau=tau, alpha=alpha)), expected)


def test_soft_term_vanishes_when_student_matches_teacher():
    s, y = torch.randn(4, 3), torch.randint(0, 3, (4,))
    loss = distillation_loss(s, s.clone(), y, DistillConfig(alpha=0.0))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize(("tau", "alpha"), [(0.0, 0.5), (2.0, 1.5), (2.0, -0.1)])
def test_bad_distill_config(tau, alpha):
    with pytest.raises(ConfigError):
        DistillConfig(tau=tau, alpha=alpha)


class Net(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_hint_adapter_maps_channels_and_hooks_are_removed():
    student, teacher = Net(4), Net(8)
    x = torch.randn(2, 1, 5, 5)
    loss_module = RecoveryLoss(student, teacher, DistillConfig(), (FeatureHint("conv", "conv", 2.0),), (x,))
    adapter = loss_module.adapters[0]
    assert isinstance(adapter, nn.Conv2d) and (adapter.in_channels, adapter.out_channels) == (4, 8)
    t_logits = teacher(x)
    loss = loss_module(student(x), t_logits, torch.tensor([0, 1]))
    plain = distillation_loss(student(x), t_logits, torch.tensor([0, 1]), DistillConfig())
    assert loss.item() > plain.item()  # the hint term is added
    loss_module.detach_hooks()
    assert not student.conv._forward_hooks and not teacher.conv._forward_hooks


def test_hint_names_must_exist():
    with pytest.raises(ConfigError, match=r"student submodule 'nope'.*some that do: conv, fc"):
        RecoveryLoss(
            Net(4), Net(8), DistillConfig(), (FeatureHint("nope", "conv"),), (torch.randn(1, 1, 3, 3),)
        )
