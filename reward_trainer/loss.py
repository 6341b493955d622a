"""The pairwise Bradley-Terry objective, as a pure function."""

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
