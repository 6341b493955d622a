"""The reward objectives, as pure functions of rewards.

- `bradley_terry_loss`: pairs, `-log sigmoid(r_c - r_r - margin)`.
- `rao_kupper_loss`: pairs and ties (Rao & Kupper 1967): a tie parameter theta = exp(alpha) > 1 widens the
  gap a win needs, and the probability left between the two wins is the tie's.
- `plackett_luce_loss`: full rankings of K responses, the listwise likelihood; for K = 2 it is Bradley-Terry.
- `rating_regression_loss`, `attribute_pairwise_loss`: ratings of A attributes, one reward output each.
- `length_decorrelation_loss`, `orthogonality_loss`: ODIN (Chen et al. 2024), a quality head decorrelated from
  length and a length head that carries it.

`OBJECTIVES` is the table of `--loss` choices: what each one trains on and what goes with it. Configuration,
data loading, the trainer and the model card read it; no other module names an objective.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> torch.Tensor:
    """Per-pair loss `-log sigmoid(r_c - r_r - margin)`, shape (P,).

    `F.logsigmoid` is computed stably: a gap of -100 gives 100, where the naive `-log(sigmoid(x))`
    underflows to `inf`. With `center_rewards_coefficient`, adds `coef * (r_c + r_r)^2` per pair,
    which keeps rewards centred on zero without changing which response wins.
    """
    logits = chosen - rejected  # (P,)
    if margin is not None:
        logits = logits - margin
    loss = -F.logsigmoid(logits)
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * (chosen + rejected) ** 2
    return loss


def rao_kupper_log_probs(chosen: torch.Tensor, rejected: torch.Tensor, alpha: torch.Tensor) -> tuple:
    """(log P(chosen wins), log P(tie)) per pair under Rao-Kupper with theta = exp(alpha), alpha > 0.

    With d = r_c - r_r:  P(c wins) = sigmoid(d - alpha),  P(r wins) = sigmoid(-d - alpha),
    P(tie) = 1 - both = sigmoid(alpha - d) - sigmoid(-alpha - d)
           = sigmoid(alpha - d) * sigmoid(alpha + d) * (1 - exp(-2 alpha)),
    the last form in logs so that it stays finite at any gap. alpha -> 0 is Bradley-Terry (no ties).
    """
    d = chosen - rejected  # (P,)
    win = F.logsigmoid(d - alpha)
    tie = F.logsigmoid(alpha - d) + F.logsigmoid(alpha + d) + torch.log(-torch.expm1(-2 * alpha))
    return win, tie


def rao_kupper_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, tie: torch.Tensor, alpha: torch.Tensor
) -> torch.Tensor:
    """Per-pair negative log-likelihood, shape (P,): `-log P(tie)` where `tie` > 0, else `-log P(chosen wins)`."""
    win, tied = rao_kupper_log_probs(chosen, rejected, alpha)
    return -torch.where(tie > 0, tied, win)


def plackett_luce_loss(rewards: torch.Tensor, ranks: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each group's ranking, shape (G,), groups in sorted order of their ids.

    `rewards`, `ranks` and `group` are (U,): one entry per response; a higher rank is better. A ranking
    y_1 > y_2 > ... > y_K has likelihood prod_i exp(r_i) / sum_{j >= i} exp(r_j), so the loss is
    sum_i [logsumexp_{j >= i} r_j - r_i] (the last term is 0). Responses of equal rank share their place:
    each one's denominator holds every response ranked at or below it (Breslow's convention). For K = 2,
    log(e^r_c + e^r_r) - r_c = -log sigmoid(r_c - r_r): Bradley-Terry.
    """
    same = group[:, None] == group[None, :]  # (U, U)
    at_or_below = same & (ranks[None, :] <= ranks[:, None])  # [i, j]: j is ranked at or below i
    denominator = torch.logsumexp(rewards[None, :].masked_fill(~at_or_below, -math.inf), dim=1)  # (U,)
    groups, slot = torch.unique(group, return_inverse=True)
    return torch.zeros(len(groups), dtype=rewards.dtype, device=rewards.device).index_add(
        0, slot, denominator - rewards
    )


def pearson(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson's correlation of two (N,) tensors, differentiable; 0 where either is constant."""
    x, y = x - x.mean(), y - y.mean()
    return (x * y).sum() / (x.norm() * y.norm() + eps)


def length_decorrelation_loss(quality: torch.Tensor, length_reward: torch.Tensor, lengths: torch.Tensor):
    """ODIN's length term, either sign: `|corr(r_Q, L)| - |corr(r_L, L)|` over the responses of a batch, a scalar.

    Zero correlation of the quality reward with length costs nothing; the length reward is pushed to carry
    all of it (-1 at perfect correlation), in the direction the preferences reward length. ODIN writes
    `- corr(r_L, L)`, for data where the longer answer wins; where the shorter one does (HH-RLHF harmless:
    short refusals are chosen), that sign would have the length head fight the preference loss on the sum
    r_Q + r_L instead of absorbing the length part of it."""
    lengths = lengths.to(quality.dtype)
    return pearson(quality, lengths).abs() - pearson(length_reward, lengths).abs()


def orthogonality_loss(quality_weight: torch.Tensor, length_weight: torch.Tensor) -> torch.Tensor:
    """ODIN's `|w_Q . w_L|`: the two heads read different directions of the last hidden state."""
    return (quality_weight * length_weight).sum().abs()


def rating_regression_loss(rewards: torch.Tensor, ratings: torch.Tensor) -> torch.Tensor:
    """Per response, the mean squared error over its rated attributes, shape (N,): `rewards` and `ratings` are
    (N, A); a NaN rating is missing and left out; a response with no rating costs 0."""
    known = ~torch.isnan(ratings)
    error = torch.where(known, rewards - torch.nan_to_num(ratings), torch.zeros_like(rewards)) ** 2
    return error.sum(-1) / known.sum(-1).clamp_min(1)


def attribute_pairwise_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_ratings: torch.Tensor,
    rejected_ratings: torch.Tensor,
    alpha: torch.Tensor | None = None,
) -> torch.Tensor:
    """A pairwise loss applied to each attribute, ordered by that attribute's ratings; per pair, shape (P,).

    All inputs are (P, A). For attribute a, the response rated higher on a is the winner: Bradley-Terry on
    `s * (r_c,a - r_r,a)`, s = sign(y_c,a - y_r,a). Equal ratings are left out, or with `alpha` (Rao-Kupper) are
    ties. Missing (NaN) ratings are left out. The loss of a pair is the mean over its attributes used (0 if none).
    """
    known = ~(torch.isnan(chosen_ratings) | torch.isnan(rejected_ratings))
    gap = torch.nan_to_num(chosen_ratings - rejected_ratings)
    sign = torch.where(gap < 0, -1.0, 1.0)
    winner, loser = torch.where(sign > 0, chosen, rejected), torch.where(sign > 0, rejected, chosen)
    if alpha is None:
        used = known & (gap != 0)
        losses = bradley_terry_loss(winner, loser)
    else:
        used = known
        losses = rao_kupper_loss(winner, loser, (gap == 0).float(), alpha)
    losses = torch.where(used, losses, torch.zeros_like(losses))
    return losses.sum(-1) / used.sum(-1).clamp_min(1)


@dataclass(frozen=True)
class Objective:
    """One `--loss` choice.

    `data`: what it trains on: "pairs" (with ratings: pairs of each attribute, ordered by its ratings), "rankings"
    (each prompt's responses batched whole) or "ratings" (each response's own ratings: a prompt with a single
    response is trained on). `ties_in_loss`: annotated ties are trained on (a tie parameter theta), not left out.
    `length_terms`: `--length_debias` / `--length_projection` apply. `loss`: the pure function above that computes
    it. `description`: a phrase for `--help` and the model card ("Trained with <description>"); `tag`: the Hub tag.
    """

    name: str
    data: str
    ties_in_loss: bool
    length_terms: bool
    loss: Callable[..., torch.Tensor]
    description: str
    tag: str


DEFAULT_LOSS = "bradley_terry"
OBJECTIVES = {
    objective.name: objective
    for objective in (
        Objective(
            "bradley_terry",
            data="pairs",
            ties_in_loss=False,
            length_terms=True,
            loss=bradley_terry_loss,
            description="the Bradley-Terry loss on preference pairs (annotated ties left out)",
            tag="bradley-terry",
        ),
        Objective(
            "bt_ties",
            data="pairs",
            ties_in_loss=True,
            length_terms=True,
            loss=rao_kupper_loss,
            description="the Rao-Kupper loss (Bradley-Terry with ties) on preference pairs, annotated ties included",
            tag="rao-kupper",
        ),
        Objective(
            "plackett_luce",
            data="rankings",
            ties_in_loss=False,
            length_terms=False,
            loss=plackett_luce_loss,
            description="the Plackett-Luce loss on each prompt's whole ranking (for two responses, Bradley-Terry)",
            tag="plackett-luce",
        ),
        Objective(
            "regression",
            data="ratings",
            ties_in_loss=False,
            length_terms=False,
            loss=rating_regression_loss,
            description="a squared error on each response's ratings (the `ratings` format)",
            tag="rating-regression",
        ),
    )
}
