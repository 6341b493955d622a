"""Length projection: erase the linear direction of response length from a trained reward head.

A reward is linear in its head's input h: r = w . h. A ridge probe p = v . h fits y = log(1 + response tokens)
over the training responses (its penalty chosen by 5-fold cross-validation). The head becomes w - b v with
b = cov(r, y) / cov(p, y), so that the new reward, r - b p, is uncorrelated with y on the training responses.
It is one linear edit of the head: the saved model stays a plain single-output reward model.

`RewardTrainer.project_out_length` collects h and the lengths and applies the edit (`--length_projection`).
"""

import numpy as np

# A probe that explains less of log length than this leaves nothing worth subtracting.
MIN_PROBE_R2 = 0.1


def ridge_probe(features: np.ndarray, targets: np.ndarray, folds: int = 5) -> tuple[np.ndarray, float, float]:
    """Ridge regression of `targets` (N,) on `features` (N, H), both centred: the coefficients (H,), the penalty
    with the least `folds`-fold cross-validated squared error over a grid spanning ten decades below the largest
    squared singular value of the features (folds drawn with a fixed seed), and the in-sample R^2."""
    x = features - features.mean(0)
    y = targets - targets.mean()
    grid = np.linalg.norm(x, 2) ** 2 * np.logspace(-10, 0, 21)
    errors = np.zeros(len(grid))
    for held in np.array_split(np.random.default_rng(0).permutation(len(y)), folds):
        kept = np.setdiff1d(np.arange(len(y)), held)
        x_mean, y_mean = x[kept].mean(0), y[kept].mean()  # the held-out fold is centred as the kept folds are
        u, s, vt = np.linalg.svd(x[kept] - x_mean, full_matrices=False)
        uty = u.T @ (y[kept] - y_mean)
        x_held, y_held = x[held] - x_mean, y[held] - y_mean
        for i, penalty in enumerate(grid):
            residual = y_held - x_held @ (vt.T @ (s / (s**2 + penalty) * uty))
            errors[i] += residual @ residual
    penalty = grid[int(np.argmin(errors))]
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    coefficients = vt.T @ (s / (s**2 + penalty) * (u.T @ y))
    residual = y - x @ coefficients
    return coefficients, float(penalty), float(1 - (residual @ residual) / (y @ y))


def length_projection(features: np.ndarray, lengths: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, dict]:
    """The head row `weight` (H,) with the length direction of `features` (N, H) erased, and a summary.

    `lengths` (N,) are the responses' tokens. The summary gives the probe's R^2 on log(1 + length), the
    coefficient b and the Pearson correlation of reward and log length before and after. With a probe of
    R^2 below `MIN_PROBE_R2` the row is returned unchanged (`applied` 0)."""
    x = features.astype(np.float64)
    y = np.log1p(lengths.astype(np.float64))
    weight = weight.astype(np.float64)
    reward = x @ weight
    probe, penalty, r2 = ridge_probe(x, y)
    predicted = x @ probe
    summary = {"probe_r2": r2, "probe_penalty": penalty, "correlation_before": float(np.corrcoef(reward, y)[0, 1])}
    if r2 < MIN_PROBE_R2:
        return weight, {
            **summary,
            "coefficient": 0.0,
            "correlation_after": summary["correlation_before"],
            "applied": 0,
        }
    b = np.cov(reward, y)[0, 1] / np.cov(predicted, y)[0, 1]
    after = float(np.corrcoef(reward - b * predicted, y)[0, 1])
    return weight - b * probe, {**summary, "coefficient": float(b), "correlation_after": after, "applied": 1}
