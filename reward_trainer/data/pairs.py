"""Expanding normalized, tokenized rows into pairs: `chosen_ids`, `rejected_ids`, `weight`, `tie`, `group`, ..."""

import math

import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value

from .mapping import fingerprint


def is_tie(scores: list[float]) -> bool:
    """Whether a row's responses (two or more) all score the same: the annotators called it a tie."""
    return len(scores) >= 2 and len(set(scores)) == 1


def _expand_batch(
    batch: pa.Table,
    indices: list[int],
    keep_ties: bool,
    margin: bool,
    group_offset: int,
    tie_weight: float,
    ratings: bool = False,
    single_responses: bool = False,
) -> pa.Table:
    # The pairs are decided in Python from the scores; the token ids stay in Arrow (`take` on the flat list
    # of responses), so no id is converted to a Python int and back.
    ids = batch["ids"].combine_chunks()
    responses = ids.flatten()  # every response of the batch, row after row
    starts = pc.subtract(ids.offsets, ids.offsets[0]).to_pylist()
    keys = ("chosen_at", "rejected_at", "weight", "tie", "group", "chosen_response", "rejected_response", "subset")
    out = {k: [] for k in (*keys, "margin", "chosen_ratings", "rejected_ratings")}
    row_ratings = batch["ratings"].to_pylist() if ratings else [None] * len(indices)
    rows = zip(
        indices,
        starts,
        starts[1:],
        batch["scores"].to_pylist(),
        batch["margin"].to_pylist(),
        batch["subset"].to_pylist(),
        row_ratings,
        strict=False,
    )
    for index, start, stop, scores, row_margin, subset, rated in rows:
        if start == stop:  # filtered
            continue
        k = stop - start
        if k == 1:  # a single response: a pair of itself, for a loss that reads each response alone
            pairs, weight = ([(0, 0)] if single_responses else []), 1.0
        elif is_tie(scores):
            pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] if keep_ties else []
            weight = tie_weight / max(len(pairs), 1)
        else:
            pairs = [
                (i, j) if scores[i] > scores[j] else (j, i)
                for i in range(k)
                for j in range(i + 1, k)
                if scores[i] != scores[j]
            ]
            weight = 1.0 / len(pairs)
        for better, worse in pairs:
            out["chosen_at"].append(start + better)
            out["rejected_at"].append(start + worse)
            out["weight"].append(weight)
            out["tie"].append(1.0 if is_tie(scores) else 0.0)
            out["margin"].append(scores[better] - scores[worse] if math.isnan(row_margin) else row_margin)
            out["group"].append(group_offset + index)
            out["chosen_response"].append(better)
            out["rejected_response"].append(worse)
            out["subset"].append(subset)
            if ratings:
                out["chosen_ratings"].append(rated[better])
                out["rejected_ratings"].append(rated[worse])
    columns = {  # in the order of `expand_pairs`' features
        "chosen_ids": responses.take(pa.array(out["chosen_at"], type=pa.int64())),
        "rejected_ids": responses.take(pa.array(out["rejected_at"], type=pa.int64())),
        "weight": pa.array(out["weight"], pa.float32()),
        "tie": pa.array(out["tie"], pa.float32()),
        "group": pa.array(out["group"], pa.int64()),
        "chosen_response": pa.array(out["chosen_response"], pa.int32()),
        "rejected_response": pa.array(out["rejected_response"], pa.int32()),
        "subset": pa.array(out["subset"], pa.string()),
    }
    if margin:
        columns["margin"] = pa.array(out["margin"], pa.float32())
    if ratings:
        for key in ("chosen_ratings", "rejected_ratings"):
            columns[key] = pa.array(out[key], pa.list_(pa.float32()))
    return pa.table(columns)


def expand_pairs(
    rows: Dataset,
    keep_ties: bool,
    margin: bool,
    group_offset: int = 0,
    tie_weight: float = 0.0,
    ratings: bool = False,
    single_responses: bool = False,
) -> Dataset:
    """Rows -> one pair per (better, worse) response: `chosen_ids`, `rejected_ids`, `weight`, `tie`, `group`.

    A pair row has weight 1; a tie (all responses score the same) gives its pairs `tie` 1.0 and weights summing to
    `tie_weight` (0: left out of the loss; 1 for a loss that models ties), kept only when `keep_ties` (evaluation
    counts them 0.5); a ranking of K responses gives its K(K-1)/2 pairs (equal scores excepted) weight 1/num_pairs
    each, so each prompt weighs 1, and `group` (the row index) ties them to their prompt; `chosen_response` and
    `rejected_response` are the two responses' places in the row, so that evaluation can rebuild the ranking.
    A row with a single response (ratings) has no pair: with `single_responses` (a loss that reads each response
    alone) it becomes the pair of that response with itself, weight 1, places (0, 0); else it is left out.
    `margin` is the row's margin, or the score difference; `subset` the row's subset name. With `ratings` (the
    `ratings` format), `chosen_ratings` / `rejected_ratings` hold each response's ratings (NaN: missing).
    """
    features = {"chosen_ids": Sequence(Value("int32")), "rejected_ids": Sequence(Value("int32")),
                "weight": Value("float32"), "tie": Value("float32"), "group": Value("int64"),
                "chosen_response": Value("int32"), "rejected_response": Value("int32"),
                "subset": Value("string")}  # fmt: skip
    if margin:
        features["margin"] = Value("float32")
    if ratings:
        features["chosen_ratings"] = features["rejected_ratings"] = Sequence(Value("float32"))
    pairs = rows.with_format("arrow").map(
        _expand_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "keep_ties": keep_ties,
            "margin": margin,
            "group_offset": group_offset,
            "tie_weight": tie_weight,
            "ratings": ratings,
            "single_responses": single_responses,
        },  # fmt: skip
        remove_columns=rows.column_names,
        features=Features(features),
        new_fingerprint=fingerprint(
            rows._fingerprint, keep_ties, margin, group_offset, tie_weight, ratings, single_responses
        ),
        desc="Pairing",
    )
    return pairs.with_format(None)


def expand_rankings(rows: Dataset, group_offset: int = 0) -> Dataset:
    """Rows -> one item per row, for a listwise loss: `ranking_ids` (the K responses' ids), `ranking_scores`,
    `group`. Filtered rows and rows whose responses all score the same (ties) are left out. The collators turn
    an item into its pairs (`collator.pairs_of_rankings`), so every response of a ranking lands in one batch."""
    features = Features({"ranking_ids": Sequence(Sequence(Value("int32"))), "ranking_scores": Sequence(Value("float32")),
                         "group": Value("int64")})  # fmt: skip

    def items(batch: dict, indices: list[int]) -> dict:
        out = {key: [] for key in features}
        for index, ids, scores in zip(indices, batch["ids"], batch["scores"], strict=True):
            if ids and len(set(scores)) > 1:
                out["ranking_ids"].append(ids)
                out["ranking_scores"].append(scores)
                out["group"].append(group_offset + index)
        return out

    return rows.map(
        items,
        batched=True,
        with_indices=True,
        remove_columns=rows.column_names,
        features=features,
        new_fingerprint=fingerprint(rows._fingerprint, "rankings", group_offset),
        desc="Rankings",
    )


def encode_subsets(pairs: Dataset) -> Dataset:
    """The `subset` names as a `ClassLabel` (sorted names, integer ids), or no `subset` column if no row has one."""
    if "subset" not in pairs.column_names or len(pairs) == 0 or set(pairs.unique("subset")) == {""}:
        return pairs.remove_columns([c for c in ("subset",) if c in pairs.column_names])
    return pairs.class_encode_column("subset")
