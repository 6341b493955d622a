"""Loading preference data of any common shape, accounting for every row, and tokenizing it fast.

Every step is a `datasets` operation over Arrow tables, so memory stays flat as files grow and each step is
cached under a fingerprint of its input and settings (a second run with the same data and tokenizer reads
the cache instead of tokenizing again):

1. read each source into raw rows that remember their file and 1-based row number (the line number for
   JSON Lines). JSON Lines are read line by line here, so a malformed line or invalid UTF-8 is a bad row
   with its line number, not a loader crash;
2. normalize each row to `prompt`, `responses` (best first), `scores`, `margin`, or a reason it is bad
   (`_error`). The format is detected from the columns (see `detect_format`) and logged;
3. bad rows stop the run (`on_bad_row=error`: `DataError` naming file, row and field) or are skipped and
   listed in the report (`on_bad_row=skip`);
4. split train/eval: the source's own eval split if it has one, else by a hash of the prompt under the seed,
   so no prompt is on both sides; a mixture keeps a fraction `weight` of each source's training rows;
5. tokenize `prompt + response` with batched `map` over the fast tokenizer, applying the truncation policy;
6. expand rows to pairs: `chosen_ids`, `rejected_ids`, `weight`, `tie`, `group` (the row), `chosen_response` /
   `rejected_response` (the responses' places in the row), and `margin` when present. Eval pairs also carry
   `subset` (a `ClassLabel`): the row's own `source` or `subset` field, else its source in a mixture.

The report (`data_report.json`) puts every input row in exactly one bucket:
`input_rows == kept + truncated + filtered + ties + single_responses + skipped + unused` (`unused`: left out by
mixture weights or `max_train_samples`/`max_eval_samples`; `single_responses`: the rows of prompts with one response
(the `ratings` format), trained on by a loss that reads each response alone, `regression`, and left out of a
pairwise loss, as `single_responses_trained` says; a tie or single response that is also truncated counts as a tie
or single response, a filtered one as filtered). A prompt's `ratings` rows are grouped wherever they are in the
file, and the held-out split hashes the prompt, so all of a prompt's rows are on one side.
An empty (or whitespace-only) response is a response, not a bad row: HH-RLHF's annotators sometimes preferred
silence to harm. They are kept and counted in `empty_responses`. Whole-file problems (a missing or empty file, a
file that is not JSON rows, a missing column, a JSON array that does not parse) stop the run in both modes.

    # HH-RLHF (implicit prompt): all 2,312 rows, 4 with an empty final response
    reward-trainer train --dataset_name ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz
    # PandaLM with flags only: prompt = instruction + input, winner = strict majority of three annotators
    # ("0" tie, "1" response1, "2" response2); a tie majority or a three-way split makes the row a tie
    reward-trainer train --dataset_name ../shared/data/pandalm/testset-v1.json --on_bad_row skip \
        --prompt_columns instruction input --response_columns response1 response2 \
        --label_columns annotator1 annotator2 annotator3 --label_values '{"0": "tie", "1": 0, "2": 1}'
"""

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field

import pyarrow.compute as pc
from datasets import Dataset, concatenate_datasets
from transformers import PreTrainedTokenizerBase

from ..chat import chat_template_of, renders_implicit_prompt_with_template, split_implicit_prompt
from ..config import DataArguments
from ..errors import DataError
from .formats import (
    FormatSpec,
    drop_bad_rows,
    group_ratings,
    indices_where,
    normalize,
    resolve_format,
)
from .pairs import encode_subsets, expand_pairs, expand_rankings, is_tie
from .sources import display_name, parse_sources, read_source, subset_names
from .tokenizing import tokenize

__all__ = [
    "PreferenceData",
    "load_preference_data",
    "read_rows",
    "split_implicit_prompt",
    "subset_names",
    "write_data_report",
]

logger = logging.getLogger("reward_trainer")
# The buckets of the row accounting: every input row is in exactly one (see the module docstring).
BUCKETS = ("kept", "truncated", "filtered", "ties", "single_responses", "skipped", "unused")


@dataclass
class PreferenceData:
    train: Dataset
    eval: Dataset | None
    report: dict = field(default_factory=dict)
    attributes: list[str] | None = None  # the rating columns, for the `ratings` format


def load_preference_data(
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    seed: int = 42,
    ties_in_loss: bool = False,
    rankings: bool = False,
    single_responses: bool = False,
) -> PreferenceData:
    """Loads, checks, splits and tokenizes the pairs named by `data_args`; see the module docstring.

    `ties_in_loss` (a loss that models ties): tie pairs are trained on, with weight 1, and weigh 1 in the eval
    loss. `rankings` (a listwise loss): the training set holds one item per row (`expand_rankings`), so that
    all the responses of a ranking go to one batch; the eval set stays pairs, which the metrics read.
    `single_responses` (a loss that reads each response alone): a prompt with a single response is trained on, as
    the pair of that response with itself (`expand_pairs`), in both sets; else it is counted and left out."""
    sources = parse_sources(data_args)
    report = {k: 0 for k in ("input_rows", *BUCKETS)}
    report["empty_responses"] = 0
    report["skipped_rows"], report["sources"] = [], []
    train_parts, eval_parts, has_margin, has_ratings, attributes = [], [], False, False, None
    subsets = subset_names([name for name, _ in sources])
    for name, weight in sources:
        rows_before = report["input_rows"]
        spec, splits = read_rows(name, data_args, tokenizer, seed, report, subset=subsets[name])
        has_margin |= spec.has_margin
        has_ratings |= spec.format == "ratings"
        attributes = list(spec.rating_columns) or attributes
        source_rows = report["input_rows"] - rows_before
        if "eval" in splits:
            train, test = splits["train"], splits["eval"]
        else:
            in_eval = _eval_mask(splits["train"], data_args.eval_fraction)
            train = splits["train"].select(indices_where(in_eval, False))
            test = splits["train"].select(indices_where(in_eval, True))
        used = math.floor(len(train) * weight + 1e-9)
        if used < len(train):
            before = _input_rows(train)
            train = train.shuffle(seed=seed).select(range(used)).flatten_indices()
            report["unused"] += before - _input_rows(train)
        report["sources"].append({"name": name, "format": spec.format, "rows": source_rows, "weight": weight})
        train_parts.append(train)
        eval_parts.append(test)
    train, test = _concat(train_parts), _concat(eval_parts)
    train = _cap(train, data_args.max_train_samples, report)
    test = _cap(test, data_args.max_eval_samples, report)

    train, test = (tokenize(rows, tokenizer, data_args) for rows in (train, test))
    for rows in (train, test):
        _count_statuses(rows, report)
    # A loss that models ties trains on them; so do ratings, whose losses read each attribute's own ratings.
    tie_weight = 1.0 if ties_in_loss or has_ratings else 0.0
    if has_ratings and len(sources) > 1:
        raise DataError("the ratings format cannot be mixed with other sources in --dataset_mixture")
    if rankings:
        if has_ratings:
            raise DataError(
                "--loss plackett_luce takes rankings, not ratings: use bradley_terry, bt_ties or regression"
            )
        train_pairs = expand_rankings(train)
    else:
        train_pairs = expand_pairs(
            train,
            keep_ties=ties_in_loss or has_ratings,
            margin=has_margin,
            tie_weight=tie_weight,
            ratings=has_ratings,
            single_responses=single_responses,
        )
        train_pairs = train_pairs.remove_columns([c for c in ("subset",) if c in train_pairs.column_names])
    eval_pairs = expand_pairs(
        test,
        keep_ties=True,
        margin=has_margin,
        group_offset=len(train),
        tie_weight=tie_weight,
        ratings=has_ratings,
        single_responses=single_responses,
    )
    eval_pairs = encode_subsets(eval_pairs)
    report.update(
        train_rows=len(train),
        eval_rows=len(test),
        train_pairs=len(train_pairs),
        eval_pairs=len(eval_pairs),
        truncation=data_args.truncation,
        max_length=data_args.max_length,
    )
    report["single_responses_trained"] = single_responses
    accounted = sum(report[k] for k in BUCKETS)
    assert accounted == report["input_rows"], f"row accounting is off: {accounted} != {report['input_rows']}"
    logger.info("data: %s", {k: v for k, v in report.items() if k != "skipped_rows"})
    if report["single_responses"]:
        logger.info(
            "data: %d rows are the only response to their prompt: %s",
            report["single_responses"],
            "trained on (each response's own ratings)"
            if single_responses
            else "left out (a pairwise loss has no pair there; --loss regression trains on them)",
        )
    if len(train_pairs) == 0:
        raise DataError(f"{data_args.dataset_name}: no training pairs left (see the counts above)")
    return PreferenceData(train_pairs, eval_pairs if len(eval_pairs) else None, report, attributes)


def read_rows(
    name: str, data_args: DataArguments, tokenizer, seed: int, report: dict, subset: str = ""
) -> tuple[FormatSpec, dict[str, Dataset]]:
    """Steps 1-3 for one source: its rows normalized and checked, {"train": ...} and its own "eval" split if any.

    Adds the source's rows to `report["input_rows"]`, the skipped ones to `skipped` / `skipped_rows` and its
    empty responses to `empty_responses`.
    """
    raw_splits = read_source(name, data_args, seed)
    spec = resolve_format(raw_splits["train"], data_args, name)
    if spec.format == "implicit_prompt":
        chat = renders_implicit_prompt_with_template(data_args.implicit_prompt_rendering, tokenizer)
        spec = dataclasses.replace(spec, chat_implicit=chat)
    logger.info(
        "data: %s: format %s%s%s",
        name,
        spec.format,
        " with margins" if spec.has_margin else "",
        ", rendered with the chat template" if spec.chat_implicit else "",
    )
    chat_template = chat_template_of(tokenizer)
    splits = {
        key: normalize(
            raw,
            spec,
            file=display_name(name, key, raw_splits),
            tokenizer=tokenizer,
            chat_template=chat_template,
            seed=seed,
            num_proc=data_args.dataset_num_proc,
            subset=subset,
        )
        for key, raw in raw_splits.items()
    }
    report["input_rows"] += sum(len(rows) for rows in splits.values())
    splits = {key: drop_bad_rows(rows, data_args.on_bad_row, report) for key, rows in splits.items()}
    if spec.format == "ratings":  # one response per row: a prompt's responses become one row
        splits = {key: group_ratings(rows) for key, rows in splits.items()}
    report["empty_responses"] += sum(map(_empty_responses, splits.values()))
    return spec, splits


def write_data_report(report: dict, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "data_report.json"), "w") as f:
        json.dump(report, f, indent=2)


def _empty_responses(rows: Dataset) -> int:
    """Responses that are empty or only whitespace (kept: an annotator may prefer saying nothing)."""
    responses = pc.list_flatten(rows.with_format("arrow")["responses"])
    return pc.sum(pc.equal(pc.utf8_trim_whitespace(responses), "")).as_py() or 0


def _eval_mask(rows: Dataset, fraction: float):
    return pc.less(rows.with_format("arrow")["_bucket"], fraction)


def _concat(parts: list[Dataset]) -> Dataset:
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _cap(rows: Dataset, limit: int | None, report: dict) -> Dataset:
    if limit is None or len(rows) <= limit:
        return rows
    kept = rows.select(range(limit))
    report["unused"] += _input_rows(rows) - _input_rows(kept)
    return kept


def _input_rows(rows: Dataset) -> int:
    """The input rows that `rows` hold: a `ratings` row holds one per response (`_rows`)."""
    return sum(rows["_rows"]) if "_rows" in rows.column_names else len(rows)


def _count_statuses(rows: Dataset, report: dict) -> None:
    if len(rows) == 0:
        return
    table = rows.with_format("arrow")
    statuses = table["_status"].to_pylist()
    scores = table["scores"].to_pylist()
    counts = table["_rows"].to_pylist() if "_rows" in table.column_names else [1] * len(statuses)
    for status, row_scores, count in zip(statuses, scores, counts, strict=False):
        if status != "filtered" and len(row_scores) == 1:
            status = "single_responses"
        elif status != "filtered" and is_tie(row_scores):
            status = "ties"
        report[status] += count
