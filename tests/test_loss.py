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


# Rao-Kupper, theta = exp(alpha). With d = r_c - r_r = 0 and theta = 3 (alpha = log 3):
#   P(c wins) = sigmoid(-log 3) = 1 / (1 + 3) = 1/4            -> loss log 4
#   P(tie) = (theta - 1) / (theta + 1) = 2/4 = 1/2              -> loss log 2
#   (Rao-Kupper with equal strengths: (theta^2 - 1) / (1 + theta)^2; 1/4 + 1/4 + 1/2 = 1)
# With d = log 3 and theta = 3: P(c wins) = sigmoid(0) = 1/2, P(r wins) = sigmoid(-2 log 3) = 1/10,
#   P(tie) = 1 - 1/2 - 1/10 = 2/5.
def test_rao_kupper_hand_values():
    from reward_trainer.loss import rao_kupper_log_probs, rao_kupper_loss

    alpha = torch.tensor(math.log(3.0))
    loss = rao_kupper_loss(torch.zeros(2), torch.zeros(2), tie=torch.tensor([0.0, 1.0]), alpha=alpha)
    torch.testing.assert_close(loss, torch.tensor([math.log(4), math.log(2)]))
    win, tie = rao_kupper_log_probs(torch.tensor([math.log(3.0)]), torch.zeros(1), alpha)
    torch.testing.assert_close(win.exp(), torch.tensor([0.5]))
    torch.testing.assert_close(tie.exp(), torch.tensor([0.4]))


def test_rao_kupper_probabilities_sum_to_one_and_stay_finite():
    from reward_trainer.loss import rao_kupper_log_probs

    alpha = torch.tensor(0.7)
    d = torch.tensor([-200.0, -3.0, 0.0, 2.5, 200.0])
    win, tie = rao_kupper_log_probs(d, torch.zeros_like(d), alpha)
    lose, _ = rao_kupper_log_probs(torch.zeros_like(d), d, alpha)
    assert torch.isfinite(win).all() and torch.isfinite(tie).all()
    torch.testing.assert_close(win.exp() + lose.exp() + tie.exp(), torch.ones(5), atol=1e-6, rtol=0)
    assert tie[0] == pytest.approx(-200 + 0.7 + math.log(-math.expm1(-1.4)), abs=1e-3)  # ~ e^(alpha - |d|)


def test_rao_kupper_tends_to_bradley_terry_as_theta_tends_to_one():
    from reward_trainer.loss import rao_kupper_loss

    chosen, rejected = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 2.0])
    loss = rao_kupper_loss(chosen, rejected, torch.zeros(2), alpha=torch.tensor(1e-6))
    torch.testing.assert_close(loss, bradley_terry_loss(chosen, rejected), atol=1e-5, rtol=0)


# Plackett-Luce: a ranking y1 > y2 > y3 has likelihood e^r1 / (e^r1 + e^r2 + e^r3) * e^r2 / (e^r2 + e^r3).
#   All rewards 0: 1/3 * 1/2 = 1/6 -> loss log 6 (each of the 3! orders is as likely).
#   Rewards (2, 1, 0): loss = log(e^2 + e + 1) - 2 + log(e + 1) - 1.
#   Two responses (1, 0): log(e + 1) - 1 = log(1 + e^-1) = -log sigmoid(1): Bradley-Terry.
def test_plackett_luce_hand_values():
    from reward_trainer.loss import plackett_luce_loss

    e = math.e
    rewards = torch.tensor([0.0, 0.0, 0.0, 2.0, 1.0, 0.0, 1.0, 0.0])
    ranks = torch.tensor([3.0, 2.0, 1.0, 3.0, 2.0, 1.0, 1.0, 0.0])
    group = torch.tensor([7, 7, 7, 2, 2, 2, 9, 9])
    loss = plackett_luce_loss(rewards, ranks, group)  # groups in sorted order: 2, 7, 9
    expected = [math.log(e**2 + e + 1) - 2 + math.log(e + 1) - 1, math.log(6), math.log1p(math.exp(-1))]
    torch.testing.assert_close(loss, torch.tensor(expected))


def test_plackett_luce_of_pairs_is_bradley_terry():
    from reward_trainer.loss import plackett_luce_loss

    chosen, rejected = torch.tensor([0.3, -2.0, 5.0]), torch.tensor([1.0, -2.5, -5.0])
    rewards = torch.stack([chosen, rejected], 1).reshape(-1)  # c0 r0 c1 r1 ...
    ranks = torch.tensor([1.0, 0.0] * 3)
    group = torch.arange(3).repeat_interleave(2)
    torch.testing.assert_close(plackett_luce_loss(rewards, ranks, group), bradley_terry_loss(chosen, rejected))


def test_plackett_luce_ties_share_their_place():
    from reward_trainer.loss import plackett_luce_loss

    # ranks (1, 0, 0), rewards 0: the best over all three (log 3), each tied one over both (log 2 each).
    loss = plackett_luce_loss(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(loss, torch.tensor([math.log(3) + 2 * math.log(2)]))


# ODIN: corr(r_Q, L) = 0 and corr(r_L, L) = +-1 cost |0| - 1 = -1; r_Q = -L costs 1 - |corr(r_L, L)|.
def test_length_decorrelation_hand_values():
    from reward_trainer.loss import length_decorrelation_loss, orthogonality_loss, pearson

    lengths = torch.tensor([1.0, 2.0, 3.0, 4.0])
    uncorrelated = torch.tensor([1.0, -1.0, -1.0, 1.0])  # centred lengths -1.5 -.5 .5 1.5: dot 0
    assert pearson(uncorrelated, lengths).item() == pytest.approx(0.0, abs=1e-7)
    assert length_decorrelation_loss(uncorrelated, 2 * lengths, lengths).item() == pytest.approx(-1.0, abs=1e-6)
    assert length_decorrelation_loss(-lengths, uncorrelated, lengths).item() == pytest.approx(1.0, abs=1e-6)
    # The length head carries length in either direction: r_L = -2 L (shorter wins) costs as much as 2 L.
    assert length_decorrelation_loss(uncorrelated, -2 * lengths, lengths).item() == pytest.approx(-1.0, abs=1e-6)
    # w_Q = (1, 2), w_L = (3, -1): |3 - 2| = 1.
    assert orthogonality_loss(torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])).item() == pytest.approx(1.0)


# Ratings. Regression: rewards (1, 2) against ratings (3, NaN) -> only the first attribute: (1 - 3)^2 = 4.
# Per attribute: ratings (4 vs 2) and (1 vs 3) -> attribute 0 chosen wins, attribute 1 rejected wins; rewards
# (1, 0) vs (0, 0): BT(1 - 0) on a0 and BT(0 - 0) on a1 -> (-log sigmoid(1) + log 2) / 2.
def test_rating_regression_hand_values():
    from reward_trainer.loss import rating_regression_loss

    rewards = torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    ratings = torch.tensor([[3.0, math.nan], [1.0, -1.0], [math.nan, math.nan]])
    torch.testing.assert_close(rating_regression_loss(rewards, ratings), torch.tensor([4.0, 1.0, 0.0]))


def test_attribute_pairwise_hand_values():
    from reward_trainer.loss import attribute_pairwise_loss

    chosen, rejected = torch.tensor([[1.0, 0.0], [2.0, 2.0]]), torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    yc, yr = torch.tensor([[4.0, 1.0], [2.0, math.nan]]), torch.tensor([[2.0, 3.0], [2.0, 1.0]])
    loss = attribute_pairwise_loss(chosen, rejected, yc, yr)
    # pair 2: equal ratings on a0 and a missing one on a1: nothing used, 0.
    torch.testing.assert_close(loss, torch.tensor([(math.log1p(math.exp(-1)) + math.log(2)) / 2, 0.0]))
    # With ties (alpha = log 3): pair 2's a0 is a tie at d = 2: -log P(tie) = -[log sig(log3 - 2) + log sig(log3 + 2)
    # + log(8/9)]; pair 1 as Rao-Kupper wins: -log sig(1 - log 3) and -log sig(0 - log 3) = log 4 (a1: rejected wins).
    alpha = torch.tensor(math.log(3.0))
    ties = attribute_pairwise_loss(chosen, rejected, yc, yr, alpha=alpha)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    tie = -(math.log(sig(math.log(3) - 2)) + math.log(sig(math.log(3) + 2)) + math.log(8 / 9))
    torch.testing.assert_close(ties, torch.tensor([(-math.log(sig(1 - math.log(3))) + math.log(4)) / 2, tie]))


# ---------------------------------------------------------------------------------------------------------
# The table of objectives (`loss.OBJECTIVES`): configuration, data loading, the trainer and the model card read it.


def test_configuration_reads_the_table():
    import dataclasses

    from reward_trainer.config import RewardConfig
    from reward_trainer.loss import OBJECTIVES

    loss_field = {f.name: f for f in dataclasses.fields(RewardConfig)}["loss"]
    assert loss_field.metadata["choices"] == list(OBJECTIVES)
    assert all(o.description in loss_field.metadata["help"] for o in OBJECTIVES.values())
    for name, objective in OBJECTIVES.items():
        for flag in ("length_debias", "length_projection"):
            if objective.length_terms:
                assert getattr(RewardConfig(output_dir="x", loss=name, **{flag: True}), flag)
            else:
                with pytest.raises(ValueError, match=f"--{flag} works with a pairwise loss"):
                    RewardConfig(output_dir="x", loss=name, **{flag: True})
        if objective.ties_in_loss:
            assert RewardConfig(output_dir="x", loss=name, tie_theta=3.0).tie_theta == 3.0
        else:
            with pytest.raises(ValueError, match="--tie_theta needs --loss bt_ties"):
                RewardConfig(output_dir="x", loss=name, tie_theta=3.0)
    with pytest.raises(ValueError, match="--loss must be one of bradley_terry, bt_ties, plackett_luce, regression"):
        RewardConfig(output_dir="x", loss="hinge")


def test_an_objective_added_to_the_table_is_configured_trained_and_carded(monkeypatch, tiny_tokenizer):
    """One row added to the table, and nothing else: the configuration accepts it, the trainer computes its loss
    function on pairs, and the model card names it."""
    from dataclasses import replace

    import reward_trainer.loss as loss
    from reward_trainer import RewardConfig, RewardTrainer
    from reward_trainer.hub import model_card
    from reward_trainer.quickstart import build_tiny_gpt2

    def hinge(chosen, rejected, margin=None, center_rewards_coefficient=None):
        return torch.relu(1 - (chosen - rejected))

    hinge_row = replace(loss.OBJECTIVES["bradley_terry"], name="hinge", loss=hinge, description="a hinge", tag="hinge")
    monkeypatch.setitem(loss.OBJECTIVES, "hinge", hinge_row)
    args = RewardConfig(output_dir="x", loss="hinge", use_cpu=True, eval_strategy="no")
    trainer = RewardTrainer(model=build_tiny_gpt2(tiny_tokenizer), args=args)
    chosen, rejected = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([0.0, 0.0, 0.0])
    losses, weight = trainer.objective(trainer.model, chosen, rejected, {})
    torch.testing.assert_close(losses, torch.tensor([0.0, 0.5, 2.0]))  # max(0, 1 - gap): gaps 2, 0.5, -1
    torch.testing.assert_close(weight, torch.ones(3))
    card = model_card("me/rm", "b", "d", None, "c", loss="hinge")
    assert "with a hinge." in card.text and "hinge" in card.data.tags
