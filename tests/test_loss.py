"""The Bradley-Terry loss against values derived by hand.

loss(d) = -log sigmoid(d) = log(1 + exp(-d)), with d = r_c - r_r - margin:
  d = 0    -> log 2
  d = +100 -> log(1 + e^-100) ~ e^-100 ~ 3.7e-44 (finite, ~0)
  d = -100 -> log(1 + e^100) = 100 + log(1 + e^-100) ~ 100
"""

import math

import pytest
import torch

from reward_trainer.loss import bradley_terry_loss


def test_equal_rewards_give_log_2():
    loss = bradley_terry_loss(torch.tensor([0.3, -2.0]), torch.tensor([0.3, -2.0]))
    torch.testing.assert_close(loss, torch.full((2,), math.log(2)))


def test_large_gaps_are_finite_and_exact():
    loss = bradley_terry_loss(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 0.0]))
    assert torch.isfinite(loss).all()
    assert loss[0] < 1e-40
    assert loss[1] == pytest.approx(100.0, abs=1e-5)
    # The naive -log(sigmoid(x)) overflows to inf where ours stays exact.
    assert torch.isinf(-torch.log(torch.sigmoid(torch.tensor(-100.0))))


def test_margin_is_subtracted_from_the_gap():
    # gap 2 with margin 2 is the same as a gap of 0: log 2; gap 1 margin -1 -> d = 2 -> log(1 + e^-2).
    loss = bradley_terry_loss(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 0.0]), margin=torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(loss, torch.tensor([math.log(2), math.log1p(math.exp(-2))]))


def test_center_rewards_term():
    # r_c = 1, r_r = 1: log 2 + 0.5 * (1 + 1)^2 = log 2 + 2.
    loss = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0]), center_rewards_coefficient=0.5)
    torch.testing.assert_close(loss, torch.tensor([math.log(2) + 2.0]))


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    # d/dr_c = -(1 - sigmoid(0)) = -0.5, d/dr_r = +0.5
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.5]))
    torch.testing.assert_close(rejected.grad, torch.tensor([0.5]))
