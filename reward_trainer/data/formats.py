"""Normalizing rows of any detected format to `prompt`, `responses` (best first), `scores`, `margin`, `subset`.

A row that cannot be read gets its reason in `_error` (`RowError`: the field and what is wrong with it);
`drop_bad_rows` then stops the run on the first one or skips and lists them, as `on_bad_row` says.
"""

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset, Features, Sequence, Value

from ..chat import parse_implicit_conversation, split_implicit_prompt, split_rendered_prompt
from ..config import DataArguments
from ..errors import DataError
from .mapping import fingerprint, num_proc_for
from .sources import SINGLE_OBJECT


@dataclass(frozen=True)
class FormatSpec:
    """How to read one source's rows: the detected (or forced) format and the column options."""

    format: str
    rename: tuple = ()  # ((source column, canonical name), ...)
    prompt_columns: tuple = ()
    response_columns: tuple = ()
    label_columns: tuple = ()
    label_values: tuple = ()  # ((label as str, response index or "tie"), ...)
    rating_columns: tuple = ()  # the `ratings` format: one rating column per attribute
    has_margin: bool = False
    chat_implicit: bool = False  # implicit-prompt text parsed into messages and rendered with the chat template


class RowError(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"field {field_name!r}: {reason}" if field_name else reason)


def _json_option(value, name: str) -> dict:
    if value is None or isinstance(value, dict):
        return value or {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise DataError(f"{name} is not a JSON object: {err}") from None
    if not isinstance(parsed, dict):
        raise DataError(f"{name} must be a JSON object, got {value!r}")
    return parsed


def _sample_rows(raw: Dataset, name: str, n: int = 100) -> list[dict]:
    """The first `n` rows that are JSON objects. When none of them parses, the file is not JSON at all: a
    `DataError` says so, whatever `on_bad_row` says."""
    head = raw.select(range(min(n, len(raw))))
    if "_json" not in raw.column_names:
        return head.to_list()
    rows, first_problem = [], None
    for line, text in zip(head["_row"], head["_json"], strict=True):
        try:
            row = json.loads(text) if text else None
        except json.JSONDecodeError as err:
            first_problem = first_problem or (line, err)
            continue
        if isinstance(row, dict):
            rows.append(row)
    if rows or first_problem is None:
        return rows
    line, err = first_problem
    raise DataError(f"{name}: is not JSON (line {line}, column {err.colno}: {err.msg})")


def detect_format(columns: set[str], example: dict, name: str = "the data") -> str:
    """The format of rows with these (canonical) columns; `example` holds a value of each column.

    - `ranking`: `responses`, a list of K >= 2 strings, best first (or ordered by an optional `scores` list);
    - `ratings`: `prompt`, `response` and rating columns, one response per row (HelpSteer);
    - `conversational`: `chosen`/`rejected` (and optional `prompt`) are lists of {"role", "content"} messages;
    - `explicit_prompt`: `prompt`, `chosen`, `rejected` strings;
    - `implicit_prompt`: `chosen`, `rejected` whole conversations (HH-RLHF); the prompt is their shared prefix
      up to the last "\\n\\nAssistant:".
    Margins (`margin`, or `score_chosen`/`score_rejected`) and ties (`tie`) may come with any pair format.
    """
    if "responses" in columns:
        return "ranking"
    if "response" in columns and not {"chosen", "rejected"} & columns:
        return "ratings"
    if {"chosen", "rejected"} <= columns:
        if isinstance(example.get("chosen"), list) or isinstance(example.get("prompt"), list):
            return "conversational"
        return "explicit_prompt" if "prompt" in columns else "implicit_prompt"
    for present, missing in (("chosen", "rejected"), ("rejected", "chosen")):
        if present in columns and missing not in columns:
            raise DataError(f"{name}: has no column {missing!r} (columns: {', '.join(sorted(columns))})")
    raise DataError(
        f"{name}: cannot detect the data format from columns {sorted(columns)}: expected `chosen`/`rejected` (with "
        "or without `prompt`), `responses` (a ranking), or name the columns with --column_mapping / --response_columns"
    )


def resolve_format(raw: Dataset, data_args: DataArguments, name: str = "the data") -> FormatSpec:
    """The format of `raw` (a source named `name` in errors) and the column options that go with it."""
    rename = _json_option(data_args.column_mapping, "column_mapping")
    label_values = {str(k): v for k, v in _json_option(data_args.label_values, "label_values").items()}
    for label, value in label_values.items():
        if value != "tie" and not isinstance(value, int):
            raise DataError(
                f'label_values: {label!r} must map to a response index (0, 1, ...) or "tie", got {value!r}'
            )
    samples = _sample_rows(raw, name)
    columns = set(raw.column_names) - {"_row", "_json", "_error"}
    for row in samples:
        columns |= set(row)
    columns = {rename.get(c, c) for c in columns}
    example = {}
    for row in samples:
        for key, value in row.items():
            if value is not None:
                example.setdefault(rename.get(key, key), value)
    if data_args.response_columns:
        fmt = "column_mapping"
        if data_args.data_format not in ("auto", fmt):
            raise DataError(
                f"--response_columns needs data_format auto or column_mapping, not {data_args.data_format!r}"
            )
        if not data_args.label_columns or not label_values:
            raise DataError("--response_columns needs --label_columns and --label_values to say which response won")
    elif data_args.data_format != "auto":
        fmt = data_args.data_format
    else:
        try:
            fmt = detect_format(columns, example, name)
        except DataError:
            if "_json" in raw.column_names and len(raw) == 1:  # one object on one line, not a row of any format
                raise DataError(f"{name}: {SINGLE_OBJECT}") from None
            raise
    rating_columns = ()
    if fmt == "ratings":
        rating_columns = tuple(data_args.attributes or ("rating",))
    elif data_args.attributes:
        raise DataError(f"{name}: --attributes needs the ratings format (prompt, response, rating columns), not {fmt}")
    for column in (*(data_args.response_columns or ()), *(data_args.label_columns or ()), *rating_columns):
        if column not in columns:
            what = "attribute " if column in rating_columns else ""
            raise DataError(f"{name}: has no {what}column {column!r} (columns: {', '.join(sorted(columns))})")
    return FormatSpec(
        format=fmt,
        rename=tuple(rename.items()),
        prompt_columns=tuple(data_args.prompt_columns or ()),
        response_columns=tuple(data_args.response_columns or ()),
        label_columns=tuple(data_args.label_columns or ()),
        label_values=tuple(label_values.items()),
        rating_columns=rating_columns,
        has_margin=bool({"margin", "score_chosen", "score_rejected"} & columns)
        or (fmt == "ranking" and "scores" in columns),
    )


def _string(row: dict, name: str) -> str:
    """A string field; empty is fine (an empty response is a response: the annotator preferred silence)."""
    if name not in row or row[name] is None:
        raise RowError(name, "missing")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    return value


def _rating(row: dict, name: str) -> float:
    """A rating: a finite number, or NaN where it is missing (null), which the losses mask."""
    if row.get(name) is None:
        return math.nan
    return _number(row, name)


def _number(row: dict, name: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(name, f"expected a finite number, got {value!r}")
    return float(value)


def _messages(row: dict, name: str) -> list[dict]:
    value = row.get(name)
    if value is None:
        raise RowError(name, "missing")
    if isinstance(value, str):
        return [{"role": "assistant" if name != "prompt" else "user", "content": value}]
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise RowError(name, 'expected a list of {"role", "content"} string messages')
    return value


def _render_conversation(
    tokenizer, template: str, prompt: list[dict], responses: list[list[dict]]
) -> tuple[str, list[str]]:
    """Renders prompt and each prompt + response with the chat template; responses are the added text."""
    try:
        full = [tokenizer.apply_chat_template(prompt + r, tokenize=False, chat_template=template) for r in responses]
    except Exception as err:  # jinja's TemplateError, or whatever the template raises (e.g. roles must alternate)
        raise RowError("chosen", f"the chat template cannot render the conversation: {err}") from None
    split = split_rendered_prompt(tokenizer, template, prompt, full)
    if split is None:
        raise RowError("prompt", "the chat template does not render the prompt as a prefix of the conversation")
    return split


def normalize_row(row: dict, spec: FormatSpec, tokenizer=None, chat_template: str | None = None) -> dict:
    """One input row -> {"prompt", "responses" (best first), "scores", "margin"}; raises `RowError` if bad."""
    if spec.rename:
        row = {dict(spec.rename).get(k, k): v for k, v in row.items()}
    margin = math.nan  # stays NaN only for rankings with scores: each pair's margin is then its score difference
    split_key = None  # the text the eval split hashes; None: the prompt
    ratings = []
    if spec.format == "ratings":
        prompt, responses = _string(row, "prompt"), [_string(row, "response")]
        ratings = [[_rating(row, column) for column in spec.rating_columns]]
        known = [r for r in ratings[0] if not math.isnan(r)]
        if not known:
            raise RowError(spec.rating_columns[0], "no rating: every attribute is missing")
        scores, margin = [sum(known) / len(known)], 0.0  # the mean rating orders a prompt's responses
    elif spec.format == "column_mapping":
        margin = 0.0
        prompt = "\n\n".join(_string(row, c) for c in spec.prompt_columns if row.get(c))
        prompt = prompt + "\n\n" if prompt else prompt
        responses = [_string(row, c) for c in spec.response_columns]
        votes = []
        values = dict(spec.label_values)
        for column in spec.label_columns:
            label = row.get(column)
            if str(label) not in values:
                raise RowError(column, f"unknown label {label!r} (known: {', '.join(values)})")
            votes.append(values[str(label)])
        winner = max(set(votes), key=votes.count)
        if votes.count(winner) * 2 <= len(votes) or winner == "tie":  # no strict majority, or a majority for tie
            scores = [0.0] * len(responses)
        else:
            if not 0 <= winner < len(responses):
                raise RowError(
                    spec.label_columns[0], f"label points to response {winner}, but there are {len(responses)}"
                )
            scores = [1.0 if i == winner else 0.0 for i in range(len(responses))]
    elif spec.format == "ranking":
        prompt = _string(row, "prompt")
        responses = row.get("responses")
        if not isinstance(responses, list) or len(responses) < 2:
            raise RowError("responses", "expected a list of at least 2 responses")
        responses = [_string({"responses": r}, "responses") for r in responses]
        if row.get("scores") is not None:
            scores = row["scores"]
            if not isinstance(scores, list) or len(scores) != len(responses):
                raise RowError("scores", "expected one number per response")
            scores = [_number({"scores": s}, "scores") for s in scores]
        else:
            scores = [float(len(responses) - i) for i in range(len(responses))]
            margin = 0.0  # ranks, not scores: no margin
    else:
        if spec.format == "conversational" or (spec.format == "implicit_prompt" and chat_template):
            if spec.format == "implicit_prompt":
                # The held-out split hashes the text's own prompt, so both renderings hold out the same rows.
                split_key = split_implicit_prompt(_string(row, "chosen"), _string(row, "rejected"))[0]
                chosen = parse_implicit_conversation(_string(row, "chosen"))
                rejected = parse_implicit_conversation(_string(row, "rejected"))
            else:
                chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
            if spec.format == "conversational" and "prompt" in row and row["prompt"] is not None:
                prompt_msgs = _messages(row, "prompt")
            else:  # implicit: the shared messages before the last differing one
                n = 0
                while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                    n += 1
                prompt_msgs, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            prompt, (c, r) = _render_conversation(tokenizer, chat_template, prompt_msgs, [chosen, rejected])
        elif spec.format == "implicit_prompt":
            prompt, c, r = split_implicit_prompt(_string(row, "chosen"), _string(row, "rejected"))
        else:
            prompt, c, r = _string(row, "prompt"), _string(row, "chosen"), _string(row, "rejected")
        responses = [c, r]
        scores, margin = [1.0, 0.0], 0.0
        if row.get("margin") is not None:
            margin = _number(row, "margin")
        elif "score_chosen" in row or "score_rejected" in row:
            scores = [_number(row, "score_chosen"), _number(row, "score_rejected")]
            margin = scores[0] - scores[1]
        if row.get("tie") is not None:
            if not isinstance(row["tie"], bool | int):
                raise RowError("tie", f"expected true/false, got {row['tie']!r}")
            if row["tie"]:
                scores, margin = [0.0, 0.0], 0.0
    if len(set(responses)) < len(responses):
        raise RowError("rejected" if len(responses) == 2 else "responses", "identical to another response of the row")
    subset = row.get("source") or row.get("subset")  # the per-subset key of the evaluation metrics
    out = {"prompt": prompt, "responses": responses, "scores": scores, "margin": margin, "subset": str(subset or ""),
           "ratings": ratings}  # fmt: skip
    return out | ({"_split_key": split_key} if split_key is not None else {})


def _normalize_batch(
    batch: dict, indices: list[int], spec: FormatSpec, file: str, tokenizer, chat_template, seed, subset
):
    keys = ("prompt", "responses", "scores", "margin", "subset", "ratings", "_file", "_row", "_error", "_bucket")
    out = {k: [] for k in keys}
    raw_json = "_json" in batch
    columns = [c for c in batch if c not in ("_row", "_json", "_error")]
    for i, index in enumerate(indices):
        error = batch["_error"][i] if "_error" in batch else ""
        row_number = batch["_row"][i] if "_row" in batch else index + 1
        result = {"prompt": "", "responses": [], "scores": [], "margin": math.nan, "subset": "", "ratings": []}
        if not error:
            try:
                if raw_json:
                    try:
                        row = json.loads(batch["_json"][i])
                    except json.JSONDecodeError as err:
                        raise RowError("", f"malformed JSON ({err.msg} at column {err.colno})") from None
                    if not isinstance(row, dict):
                        raise RowError("", f"expected a JSON object, got {type(row).__name__}")
                else:
                    row = {c: batch[c][i] for c in columns}
                result = normalize_row(row, spec, tokenizer, chat_template)
            except RowError as err:
                error = str(err)
        result["subset"] = result["subset"] or subset
        split_key = result.pop("_split_key", result["prompt"])
        for key, value in result.items():
            out[key].append(value)
        out["_file"].append(file)
        out["_row"].append(row_number)
        out["_error"].append(error)
        out["_bucket"].append(prompt_bucket(split_key, seed))
    return out


def prompt_bucket(prompt: str, seed: int) -> float:
    """A number in [0, 1) fixed by the prompt text and seed: rows go to eval when it is < eval_fraction. For
    implicit-prompt rows rendered with the chat template, the prompt text is the raw one (`split_implicit_prompt`)."""
    digest = hashlib.sha1(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def normalize(
    raw: Dataset, spec: FormatSpec, file: str, tokenizer, chat_template: str, seed: int, num_proc=None, subset=""
) -> Dataset:
    """Rows -> `prompt`, `responses`, `scores`, `margin`, `subset` (the row's, else `subset`) and bookkeeping."""
    features = Features({
        "prompt": Value("string"), "responses": Sequence(Value("string")), "scores": Sequence(Value("float64")),
        "margin": Value("float64"), "subset": Value("string"), "ratings": Sequence(Sequence(Value("float64"))),
        "_file": Value("string"), "_row": Value("int64"), "_error": Value("string"),
        "_bucket": Value("float64"),
    })  # fmt: skip
    template = chat_template if spec.format == "conversational" or spec.chat_implicit else ""
    return raw.map(
        _normalize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={
            "spec": spec,
            "file": file,
            "tokenizer": tokenizer,
            "chat_template": template,
            "seed": seed,
            "subset": subset,
        },  # fmt: skip
        remove_columns=raw.column_names,
        features=features,
        num_proc=num_proc_for(num_proc, raw),
        new_fingerprint=fingerprint(raw._fingerprint, spec, file, template, seed, subset),
        desc=f"Reading {file}",
    )


def drop_bad_rows(rows: Dataset, on_bad_row: str, report: dict) -> Dataset:
    errors = rows.with_format("arrow")["_error"]
    bad = pc.not_equal(errors, "")
    n_bad = pc.sum(bad).as_py() or 0
    if n_bad == 0:
        return rows
    first = pc.index(bad, True).as_py()
    if on_bad_row == "error":
        row = rows[first]
        raise DataError(
            f"{row['_file']}: row {row['_row']}: {row['_error']} (use --on_bad_row skip to skip such rows)"
        )
    bad_rows = rows.select(indices_where(bad, True)).select_columns(["_file", "_row", "_error"])
    report["skipped"] += n_bad
    report["skipped_rows"] += [{"file": r["_file"], "row": r["_row"], "reason": r["_error"]} for r in bad_rows]
    return rows.select(indices_where(bad, False))


def group_ratings(rows: Dataset) -> Dataset:
    """`ratings` rows (one response each) -> one row per prompt with all its responses, in order of first
    appearance; `_rows` counts the input rows each holds (the data report counts input rows)."""
    table = rows.select_columns(["prompt", "responses", "scores", "ratings", "subset", "_file", "_row", "_bucket"])
    merged: dict[str, dict] = {}
    for row in table:
        into = merged.get(row["prompt"])
        if into is None:
            merged[row["prompt"]] = row | {"margin": 0.0, "_error": "", "_rows": 1}
        else:
            for key in ("responses", "scores", "ratings"):
                into[key] = into[key] + row[key]
            into["_rows"] += 1
    features = Features({**rows.features, "_rows": Value("int64")})
    return Dataset.from_list(list(merged.values()), features=features) if merged else rows.add_column("_rows", [])


def indices_where(mask, value: bool) -> list[int]:
    """Indices where the Arrow boolean `mask` equals `value`."""
    array = mask.to_numpy(zero_copy_only=False)
    return np.flatnonzero(array if value else ~array)
