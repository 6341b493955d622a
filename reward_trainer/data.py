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
`input_rows == kept + truncated + filtered + ties + skipped + unused` (`unused`: left out by mixture weights or
`max_train_samples`/`max_eval_samples`; a tie that is also truncated counts as a tie, a filtered one as filtered).
Whole-file problems (a missing or empty file, a JSON array that does not parse) stop the run in both modes.

    # HH-RLHF (implicit prompt), 4 rows with an empty final response skipped and listed
    reward-trainer train --dataset_name ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --on_bad_row skip
    # PandaLM with flags only: prompt = instruction + input, winner = strict majority of three annotators
    # ("0" tie, "1" response1, "2" response2); a tie majority or a three-way split makes the row a tie
    reward-trainer train --dataset_name ../shared/data/pandalm/testset-v1.json --on_bad_row skip \
        --prompt_columns instruction input --response_columns response1 response2 \
        --label_columns annotator1 annotator2 annotator3 --label_values '{"0": "tie", "1": 0, "2": 1}'
"""

import bisect
import codecs
import copy
import gzip
import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import (
    Dataset,
    Features,
    Sequence,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from datasets.exceptions import DatasetGenerationError
from transformers import PreTrainedTokenizerBase

from .config import BUILTIN_DATASET, DataArguments

logger = logging.getLogger("reward_trainer")

FORMATS = ("explicit_prompt", "implicit_prompt", "conversational", "ranking", "column_mapping")
ASSISTANT_MARKER = "\n\nAssistant:"  # HH-RLHF: the prompt ends with the last assistant turn's marker
# Used when the tokenizer has no chat template: "role: content" turns separated by blank lines.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv")
VERSION = "data-v2"  # part of every fingerprint: bump when the processing below changes
RAW_FEATURES = Features({"_row": Value("int64"), "_json": Value("string"), "_error": Value("string")})


class DataError(ValueError):
    """Bad input data; the message names the file, row and field."""


@dataclass
class PreferenceData:
    train: Dataset
    eval: Dataset | None
    report: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FormatSpec:
    """How to read one source's rows: the detected (or forced) format and the column options."""

    format: str
    rename: tuple = ()  # ((source column, canonical name), ...)
    prompt_columns: tuple = ()
    response_columns: tuple = ()
    label_columns: tuple = ()
    label_values: tuple = ()  # ((label as str, response index or "tie"), ...)
    has_margin: bool = False


class RowError(ValueError):
    def __init__(self, field_name: str, reason: str):
        super().__init__(f"field {field_name!r}: {reason}" if field_name else reason)


# ----------------------------------------------------------------------------------------------- public entry


def load_preference_data(
    data_args: DataArguments, tokenizer: PreTrainedTokenizerBase, seed: int = 42
) -> PreferenceData:
    """Loads, checks, splits and tokenizes the pairs named by `data_args`; see the module docstring."""
    sources = parse_sources(data_args)
    report = {k: 0 for k in ("input_rows", "kept", "truncated", "filtered", "ties", "skipped", "unused")}
    report["skipped_rows"], report["sources"] = [], []
    train_parts, eval_parts, has_margin = [], [], False
    subsets = subset_names([name for name, _ in sources])
    for name, weight in sources:
        rows_before = report["input_rows"]
        spec, splits = read_rows(name, data_args, tokenizer, seed, report, subset=subsets[name])
        has_margin |= spec.has_margin
        source_rows = report["input_rows"] - rows_before
        if "eval" in splits:
            train, test = splits["train"], splits["eval"]
        else:
            in_eval = _eval_mask(splits["train"], data_args.eval_fraction)
            train, test = splits["train"].select(_where(in_eval, False)), splits["train"].select(_where(in_eval, True))
        used = math.floor(len(train) * weight + 1e-9)
        if used < len(train):
            report["unused"] += len(train) - used
            train = train.shuffle(seed=seed).select(range(used)).flatten_indices()
        report["sources"].append({"name": name, "format": spec.format, "rows": source_rows, "weight": weight})
        train_parts.append(train)
        eval_parts.append(test)
    train, test = _concat(train_parts), _concat(eval_parts)
    train = _cap(train, data_args.max_train_samples, report)
    test = _cap(test, data_args.max_eval_samples, report)

    train, test = (tokenize(rows, tokenizer, data_args) for rows in (train, test))
    for rows in (train, test):
        _count_statuses(rows, report)
    train_pairs = expand_pairs(train, keep_ties=False, margin=has_margin)
    train_pairs = train_pairs.remove_columns([c for c in ("subset",) if c in train_pairs.column_names])
    eval_pairs = encode_subsets(expand_pairs(test, keep_ties=True, margin=has_margin, group_offset=len(train)))
    report.update(
        train_rows=len(train),
        eval_rows=len(test),
        train_pairs=len(train_pairs),
        eval_pairs=len(eval_pairs),
        truncation=data_args.truncation,
        max_length=data_args.max_length,
    )
    accounted = sum(report[k] for k in ("kept", "truncated", "filtered", "ties", "skipped", "unused"))
    assert accounted == report["input_rows"], f"row accounting is off: {accounted} != {report['input_rows']}"
    logger.info("data: %s", {k: v for k, v in report.items() if k != "skipped_rows"})
    if len(train_pairs) == 0:
        raise DataError(f"{data_args.dataset_name}: no training pairs left (see the counts above)")
    return PreferenceData(train_pairs, eval_pairs if len(eval_pairs) else None, report)


def encode_subsets(pairs: Dataset) -> Dataset:
    """The `subset` names as a `ClassLabel` (sorted names, integer ids), or no `subset` column if no row has one."""
    if "subset" not in pairs.column_names or len(pairs) == 0 or set(pairs.unique("subset")) == {""}:
        return pairs.remove_columns([c for c in ("subset",) if c in pairs.column_names])
    return pairs.class_encode_column("subset")


def read_rows(
    name: str, data_args: DataArguments, tokenizer, seed: int, report: dict, subset: str = ""
) -> tuple[FormatSpec, dict[str, Dataset]]:
    """Steps 1-3 for one source: its rows normalized and checked, {"train": ...} and its own "eval" split if any.

    Adds the source's rows to `report["input_rows"]` and the skipped ones to `skipped` / `skipped_rows`.
    """
    raw_splits = read_source(name, data_args, seed)
    spec = resolve_format(raw_splits["train"], data_args)
    logger.info("data: %s: format %s%s", name, spec.format, " with margins" if spec.has_margin else "")
    chat_template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
    splits = {
        key: normalize(
            raw,
            spec,
            file=_display_name(name, key, raw_splits),
            tokenizer=tokenizer,
            chat_template=chat_template,
            seed=seed,
            num_proc=data_args.dataset_num_proc,
            subset=subset,
        )
        for key, raw in raw_splits.items()
    }
    report["input_rows"] += sum(len(rows) for rows in splits.values())
    return spec, {key: drop_bad_rows(rows, data_args.on_bad_row, report) for key, rows in splits.items()}


def write_report(report: dict, output_dir: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "data_report.json"), "w") as f:
        json.dump(report, f, indent=2)


# ------------------------------------------------------------------------------------------------- sources


def parse_sources(data_args: DataArguments) -> list[tuple[str, float]]:
    """`dataset_mixture` ({source: weight}, as JSON or a dict) or the single `dataset_name` with weight 1.

    A weight in (0, 1] is the fraction of that source's training rows used (sampled under the seed), as in
    alignment-handbook's `dataset_mixer`; eval rows are always kept whole.
    """
    mixture = data_args.dataset_mixture
    if not mixture:
        return [(data_args.dataset_name, 1.0)]
    if isinstance(mixture, str):
        try:
            mixture = json.loads(mixture)
        except json.JSONDecodeError as err:
            raise DataError(f"dataset_mixture is not a JSON object {{source: weight}}: {err}") from None
    if not isinstance(mixture, dict) or not mixture:
        raise DataError("dataset_mixture must be a non-empty mapping {source: weight}")
    sources = []
    for name, weight in mixture.items():
        if not isinstance(weight, int | float) or not 0 < weight <= 1:
            raise DataError(f"dataset_mixture: weight of {name!r} must be a number in (0, 1], got {weight!r}")
        sources.append((name, float(weight)))
    return sources


def subset_names(names: list[str]) -> dict[str, str]:
    """The subset of each source's rows in a mixture: its name less the folder all names share
    (`harmless-base/test.jsonl.gz`, `helpful-base/test.jsonl.gz`); "" for a single source."""
    if len(names) < 2:
        return dict.fromkeys(names, "")
    try:
        common = os.path.commonpath([os.path.dirname(name) for name in names])
    except ValueError:  # absolute and relative paths mixed
        common = ""
    return {name: os.path.relpath(name, common) if common else name for name in names}


def read_source(name: str, data_args: DataArguments, seed: int) -> dict[str, Dataset]:
    """Raw rows of one source: {"train": ...} and, when the source has its own eval split, "eval"."""
    cache_dir = data_args.dataset_cache_dir
    if name == BUILTIN_DATASET:
        from .quickstart import make_pairs

        n = data_args.num_synthetic_pairs
        return {
            "train": Dataset.from_list(make_pairs(n, seed=seed)),
            "eval": Dataset.from_list(make_pairs(n // 10, seed=seed + 1)),
        }
    if name.startswith("builtin:"):
        raise DataError(f"unknown built-in dataset {name!r}; the built-in dataset is {BUILTIN_DATASET!r}")
    path = os.path.expanduser(name)
    if os.path.isdir(path):
        try:
            loaded = load_from_disk(path)
        except (FileNotFoundError, ValueError) as err:
            raise DataError(
                f"{name}: not a directory written by `save_to_disk` ({str(err).splitlines()[0]})"
            ) from None
        return _pick_splits(loaded, name, data_args)
    if os.path.isfile(path):
        if os.path.getsize(path) == 0:
            raise DataError(f"{name}: row 1: the file is empty (no rows)")
        if path.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
            return {"train": read_json_lines(path, cache_dir)}
        if path.endswith(".json"):
            return {"train": read_json(path, cache_dir)}
        kind = {".parquet": "parquet", ".csv": "csv"}.get(os.path.splitext(path)[1])
        if kind is None:
            raise DataError(
                f"{name}: unknown file type; use one of {', '.join(LOCAL_SUFFIXES)} or a `save_to_disk` directory"
            )
        try:
            return {"train": load_dataset(kind, data_files=path, split="train", cache_dir=cache_dir)}
        except Exception as err:  # pyarrow raises many types for unreadable files
            raise DataError(f"{name}: cannot read as {kind}: {_first_line(err)}") from None
    looks_local = name.startswith((".", "/", "~")) or name.endswith(LOCAL_SUFFIXES) or name.count("/") > 1
    if looks_local:
        raise DataError(f"dataset file {name!r} does not exist")
    try:  # a Hub dataset, e.g. Anthropic/hh-rlhf
        loaded = load_dataset(name, data_args.dataset_config, cache_dir=cache_dir)
    except Exception as err:
        raise DataError(f"cannot load dataset {name!r} from the Hub: {_first_line(err)}") from None
    return _pick_splits(loaded, name, data_args)


def _pick_splits(loaded, name: str, data_args: DataArguments) -> dict[str, Dataset]:
    if isinstance(loaded, Dataset):
        return {"train": loaded}
    if data_args.train_split not in loaded:
        raise DataError(f"{name}: no split {data_args.train_split!r} (splits: {', '.join(loaded)})")
    splits = {"train": loaded[data_args.train_split]}
    if data_args.eval_split and data_args.eval_split in loaded:
        splits["eval"] = loaded[data_args.eval_split]
    return splits


def _display_name(name: str, key: str, splits: dict) -> str:
    return name if key == "train" and len(splits) == 1 else f"{name}[{key}]"


def _json_lines(path: str, stamp: tuple):
    """Yields one raw row per non-blank line; `stamp` (size, mtime) only keys the cache."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield {"_row": number, "_json": line.decode("utf-8"), "_error": ""}
            except UnicodeDecodeError as err:
                yield {
                    "_row": number,
                    "_json": None,
                    "_error": f"invalid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})",
                }


def _json_array(path: str, stamp: tuple, chunk_size: int = 1 << 20):
    """Yields one raw row per element of a JSON array, reading the file a chunk at a time: memory stays flat.

    Elements are decoded one by one (`json.JSONDecoder.raw_decode`); a malformed array stops the run with the
    line of the error, as there is no telling where its next row would start.
    """
    decoder, utf8 = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    buffer, start, first_line, eof = "", 0, 1, False  # first_line: the line number of buffer[0]

    def line() -> int:
        return first_line + buffer.count("\n", 0, start)

    def fill(f) -> None:
        nonlocal buffer, start, first_line, eof
        chunk = f.read(chunk_size)
        eof = not chunk
        try:
            text = utf8.decode(chunk, final=eof)
        except UnicodeDecodeError:
            raise DataError(f"{path}: line {first_line + buffer.count(chr(10))}: invalid UTF-8") from None
        first_line = line()
        buffer, start = buffer[start:] + text, 0

    def next_char(f) -> str:  # skips whitespace; "" at the end of the file
        nonlocal start
        while True:
            while start < len(buffer) and buffer[start] in " \t\r\n":
                start += 1
            if start < len(buffer) or eof:
                return buffer[start : start + 1]
            fill(f)

    with open(path, "rb") as f:
        if next_char(f) != "[":
            raise DataError(f"{path}: line {line()}: malformed JSON (expected an array)")
        start += 1
        number = 0
        while (char := next_char(f)) != "]":
            if number:
                if char != ",":
                    raise DataError(f"{path}: line {line()}: malformed JSON (expected ',' or ']' after row {number})")
                start += 1
                next_char(f)
            while True:  # decode one element, reading on while it may be cut by the chunk's end
                try:
                    record, end = decoder.raw_decode(buffer, start)
                    if end < len(buffer) or eof:  # a value at the very end may go on (a number)
                        break
                except json.JSONDecodeError as err:
                    if eof:
                        raise DataError(
                            f"{path}: line {first_line + err.lineno - 1}: malformed JSON ({err.msg})"
                        ) from None
                fill(f)
            number, start = number + 1, end
            yield {"_row": number, "_json": json.dumps(record), "_error": ""}
        start += 1
        if next_char(f):
            raise DataError(f"{path}: line {line()}: malformed JSON (extra data after the array)")


def read_json_lines(path: str, cache_dir: str | None = None) -> Dataset:
    return _from_generator(_json_lines, path, cache_dir)


def read_json(path: str, cache_dir: str | None = None) -> Dataset:
    """A `.json` file: a JSON array of objects (row = position in the array), or JSON Lines under that name."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(4096).lstrip()
    return _from_generator(_json_array if head.startswith(b"[") else _json_lines, path, cache_dir)


def _from_generator(generator, path: str, cache_dir: str | None) -> Dataset:
    stat = os.stat(path)
    try:
        rows = Dataset.from_generator(
            generator,
            features=RAW_FEATURES,
            gen_kwargs={"path": os.path.abspath(path), "stamp": (stat.st_size, stat.st_mtime_ns)},
            cache_dir=cache_dir,
        )
    except (ValueError, DatasetGenerationError) as err:  # `datasets` says "no data" when nothing was yielded
        if isinstance(err, DataError):
            raise
        if not isinstance(err, DatasetGenerationError):
            raise DataError(f"{path}: row 1: the file is empty (no rows)") from None
        cause = err.__cause__ or err.__context__ or err
        if isinstance(cause, DataError):
            raise cause from None
        raise DataError(f"{path}: cannot read: {_first_line(cause)}") from None
    if len(rows) == 0:
        raise DataError(f"{path}: row 1: the file is empty (no rows)")
    return rows


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------- formats


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


def _sample_rows(raw: Dataset, n: int = 100) -> list[dict]:
    head = raw.select(range(min(n, len(raw))))
    if "_json" not in raw.column_names:
        return head.to_list()
    rows = []
    for text in head["_json"]:
        try:
            row = json.loads(text) if text else None
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def detect_format(columns: set[str], example: dict) -> str:
    """The format of rows with these (canonical) columns; `example` holds a value of each column.

    - `ranking`: `responses`, a list of K >= 2 strings, best first (or ordered by an optional `scores` list);
    - `conversational`: `chosen`/`rejected` (and optional `prompt`) are lists of {"role", "content"} messages;
    - `explicit_prompt`: `prompt`, `chosen`, `rejected` strings;
    - `implicit_prompt`: `chosen`, `rejected` whole conversations (HH-RLHF); the prompt is their shared prefix
      up to the last "\\n\\nAssistant:".
    Margins (`margin`, or `score_chosen`/`score_rejected`) and ties (`tie`) may come with any pair format.
    """
    if "responses" in columns:
        return "ranking"
    if {"chosen", "rejected"} <= columns:
        if isinstance(example.get("chosen"), list) or isinstance(example.get("prompt"), list):
            return "conversational"
        return "explicit_prompt" if "prompt" in columns else "implicit_prompt"
    raise DataError(
        f"cannot detect the data format from columns {sorted(columns)}: expected `chosen`/`rejected` (with or "
        "without `prompt`), `responses` (a ranking), or name the columns with --column_mapping / --response_columns"
    )


def resolve_format(raw: Dataset, data_args: DataArguments) -> FormatSpec:
    rename = _json_option(data_args.column_mapping, "column_mapping")
    label_values = {str(k): v for k, v in _json_option(data_args.label_values, "label_values").items()}
    for label, value in label_values.items():
        if value != "tie" and not isinstance(value, int):
            raise DataError(
                f'label_values: {label!r} must map to a response index (0, 1, ...) or "tie", got {value!r}'
            )
    samples = _sample_rows(raw)
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
        fmt = detect_format(columns, example)
    return FormatSpec(
        format=fmt,
        rename=tuple(rename.items()),
        prompt_columns=tuple(data_args.prompt_columns or ()),
        response_columns=tuple(data_args.response_columns or ()),
        label_columns=tuple(data_args.label_columns or ()),
        label_values=tuple(label_values.items()),
        has_margin=bool({"margin", "score_chosen", "score_rejected"} & columns)
        or (fmt == "ranking" and "scores" in columns),
    )


def _string(row: dict, name: str, allow_empty: bool = False) -> str:
    if name not in row or row[name] is None:
        raise RowError(name, "missing")
    value = row[name]
    if not isinstance(value, str):
        raise RowError(name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise RowError(name, "empty")
    return value


def _number(row: dict, name: str) -> float:
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise RowError(name, f"expected a finite number, got {value!r}")
    return float(value)


def common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix: a binary search over slices compared in C (`os.path.commonprefix`
    compares character by character in Python, the slowest step of reading HH-RLHF)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


def split_implicit_prompt(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two whole conversations.

    The prompt is the shared text up to and including the last "\\n\\nAssistant:" that both share; when the
    conversations differ before their final turn, the responses are the differing remainders (several
    turns), so `prompt + response` is still exactly each original conversation.
    """
    cut = chosen.rfind(ASSISTANT_MARKER, 0, common_prefix_length(chosen, rejected))
    cut = 0 if cut < 0 else cut + len(ASSISTANT_MARKER)
    return chosen[:cut], chosen[cut:], rejected[cut:]


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
    full = [tokenizer.apply_chat_template(prompt + r, tokenize=False, chat_template=template) for r in responses]
    for generation_prompt in (True, False):
        text = (
            tokenizer.apply_chat_template(
                prompt, tokenize=False, chat_template=template, add_generation_prompt=generation_prompt
            )
            if prompt
            else ""
        )
        if all(f.startswith(text) for f in full):
            return text, [f[len(text) :] for f in full]
    raise RowError("prompt", "the chat template does not render the prompt as a prefix of the conversation")


def normalize_row(row: dict, spec: FormatSpec, tokenizer=None, chat_template: str | None = None) -> dict:
    """One input row -> {"prompt", "responses" (best first), "scores", "margin"}; raises `RowError` if bad."""
    if spec.rename:
        row = {dict(spec.rename).get(k, k): v for k, v in row.items()}
    margin = math.nan  # stays NaN only for rankings with scores: each pair's margin is then its score difference
    if spec.format == "column_mapping":
        margin = 0.0
        prompt = "\n\n".join(_string(row, c, allow_empty=True) for c in spec.prompt_columns if row.get(c))
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
        prompt = _string(row, "prompt", allow_empty=True)
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
        if spec.format == "conversational":
            chosen, rejected = _messages(row, "chosen"), _messages(row, "rejected")
            if "prompt" in row and row["prompt"] is not None:
                prompt_msgs = _messages(row, "prompt")
            else:  # implicit: the shared messages before the last differing one
                n = 0
                while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
                    n += 1
                prompt_msgs, chosen, rejected = chosen[:n], chosen[n:], rejected[n:]
            prompt, (c, r) = _render_conversation(tokenizer, chat_template, prompt_msgs, [chosen, rejected])
            if not c.strip() or not r.strip():
                raise RowError("chosen" if not c.strip() else "rejected", "empty response")
        elif spec.format == "implicit_prompt":
            prompt, c, r = split_implicit_prompt(_string(row, "chosen"), _string(row, "rejected"))
        else:
            prompt, c, r = _string(row, "prompt", allow_empty=True), _string(row, "chosen"), _string(row, "rejected")
        if not c.strip():
            raise RowError("chosen", "empty response")
        if not r.strip():
            raise RowError("rejected", "empty response")
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
    return {"prompt": prompt, "responses": responses, "scores": scores, "margin": margin, "subset": str(subset or "")}


def _normalize_batch(
    batch: dict, indices: list[int], spec: FormatSpec, file: str, tokenizer, chat_template, seed, subset
):
    keys = ("prompt", "responses", "scores", "margin", "subset", "_file", "_row", "_error", "_bucket")
    out = {k: [] for k in keys}
    raw_json = "_json" in batch
    columns = [c for c in batch if c not in ("_row", "_json", "_error")]
    for i, index in enumerate(indices):
        error = batch["_error"][i] if "_error" in batch else ""
        row_number = batch["_row"][i] if "_row" in batch else index + 1
        result = {"prompt": "", "responses": [], "scores": [], "margin": math.nan, "subset": ""}
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
        for key, value in result.items():
            out[key].append(value)
        out["_file"].append(file)
        out["_row"].append(row_number)
        out["_error"].append(error)
        out["_bucket"].append(prompt_bucket(result["prompt"], seed))
    return out


def prompt_bucket(prompt: str, seed: int) -> float:
    """A number in [0, 1) fixed by the prompt text and seed: rows go to eval when it is < eval_fraction."""
    digest = hashlib.sha1(f"{seed}\x00{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([VERSION, *map(str, parts)]).encode()).hexdigest()[:32]


def normalize(
    raw: Dataset, spec: FormatSpec, file: str, tokenizer, chat_template: str, seed: int, num_proc=None, subset=""
) -> Dataset:
    """Rows -> `prompt`, `responses`, `scores`, `margin`, `subset` (the row's, else `subset`) and bookkeeping."""
    features = Features({
        "prompt": Value("string"), "responses": Sequence(Value("string")), "scores": Sequence(Value("float64")),
        "margin": Value("float64"), "subset": Value("string"), "_file": Value("string"), "_row": Value("int64"), "_error": Value("string"),
        "_bucket": Value("float64"),
    })  # fmt: skip
    template = chat_template if spec.format == "conversational" else ""
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
        num_proc=_num_proc(num_proc, raw),
        new_fingerprint=_fingerprint(raw._fingerprint, spec, file, template, seed, subset),
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
    bad_rows = rows.select(_where(bad, True)).select_columns(["_file", "_row", "_error"])
    report["skipped"] += n_bad
    report["skipped_rows"] += [{"file": r["_file"], "row": r["_row"], "reason": r["_error"]} for r in bad_rows]
    return rows.select(_where(bad, False))


def _where(mask, value: bool) -> list[int]:
    """Indices where the Arrow boolean `mask` equals `value`."""
    array = mask.to_numpy(zero_copy_only=False)
    return np.flatnonzero(array if value else ~array)


def _eval_mask(rows: Dataset, fraction: float):
    return pc.less(rows.with_format("arrow")["_bucket"], fraction)


def _concat(parts: list[Dataset]) -> Dataset:
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def _cap(rows: Dataset, limit: int | None, report: dict) -> Dataset:
    if limit is None or len(rows) <= limit:
        return rows
    report["unused"] += len(rows) - limit
    return rows.select(range(limit))


def _num_proc(num_proc: int | None, rows: Dataset) -> int | None:
    if not num_proc or num_proc <= 1 or len(rows) < 2 * num_proc:
        return None
    return num_proc


# ----------------------------------------------------------------------------------------------- tokenizing


def split_special(special_mask: list[int]) -> tuple[int, int]:
    """Numbers of leading and trailing special tokens (BOS/CLS, EOS/SEP)."""
    lead = 0
    while lead < len(special_mask) and special_mask[lead]:
        lead += 1
    trail = 0
    while trail < len(special_mask) - lead and special_mask[-1 - trail]:
        trail += 1
    return lead, trail


def truncate_keep_end(tokenizer, prompt: str, responses: list[str], max_length: int) -> list[list[int]]:
    """`tokenizer(prompt + response)` cut to `max_length` tokens, for each response of a row.

    The prompt is cut from the left (keeping leading special tokens), by the same number of tokens for every
    response of the row so that they keep one shared prompt, and only when a response alone is too long is it
    cut from the right (keeping trailing special tokens). A token that straddles the prompt/response boundary
    belongs to the response. Boundaries come from the offset mapping, so the result is exactly a contiguous
    part of the untruncated token ids.
    """
    return _truncate_rows(tokenizer, [prompt], [responses], max_length)[0]


def _truncate_rows(
    tokenizer, prompts: list[str], responses: list[list[str]], max_length: int
) -> list[list[list[int]]]:
    """`truncate_keep_end` for several rows, splitting each text's ids where the offsets put the prompt's end."""
    texts = [p + r for p, rs in zip(prompts, responses, strict=False) for r in rs]
    encoded = tokenizer(
        texts,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    out, k = [], 0
    for prompt, rs in zip(prompts, responses, strict=False):
        parts = []
        for ids, offsets, special in zip(
            *(encoded[key][k : k + len(rs)] for key in ("input_ids", "offset_mapping", "special_tokens_mask")),
            strict=False,
        ):
            lead, trail = split_special(special)
            middle_ends = [end for _, end in offsets[lead : len(ids) - trail]]
            parts.append(_split_ids(ids, lead, bisect.bisect_right(middle_ends, len(prompt)), trail))
        k += len(rs)
        out.append(_cut_keep_end(parts, max_length))
    return out


def _split_ids(ids: list[int], lead: int, n_prompt: int, trail: int) -> tuple[list[int], ...]:
    """(leading special tokens, prompt, response, trailing special tokens) of one text's ids."""
    return ids[:lead], ids[lead : lead + n_prompt], ids[lead + n_prompt : len(ids) - trail], ids[len(ids) - trail :]


def _cut_keep_end(parts: list[tuple[list[int], ...]], max_length: int) -> list[list[int]]:
    """One row's responses, each as `_split_ids` parts, cut to `max_length` (see `truncate_keep_end`)."""
    room = [max_length - len(lead) - len(trail) for lead, _, _, trail in parts]
    if min(room) < 1:
        raise DataError(f"max_length {max_length} leaves no room for text after the special tokens")
    prompt_room = max(0, min(r - len(response) for r, (_, _, response, _) in zip(room, parts, strict=False)))
    row = []
    for r, (lead, prompt_ids, response_ids, trail) in zip(room, parts, strict=False):
        kept_prompt = prompt_ids[len(prompt_ids) - min(prompt_room, len(prompt_ids)) :]
        row.append(lead + kept_prompt + response_ids[: r - len(kept_prompt)] + trail)
    return row


def special_affixes(tokenizer) -> tuple[list[int], list[int]] | None:
    """The special tokens the tokenizer puts before and after one sequence (e.g. [CLS] / [SEP], or - / EOS)."""
    full, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return None


def _pieces(pre_tokenizer, text: str, shift: int = 0) -> list[tuple[int, int]]:
    return [(start + shift, end + shift) for _, (start, end) in pre_tokenizer.pre_tokenize_str(text)]


def _splits_cleanly(pre_tokenizer, prompt_tail: list, tail: str, response: str, window: int = 16) -> bool:
    """Whether pre-tokenizing prompt and response apart gives the pieces of their concatenation near the seam."""
    head = response[:window]
    return _pieces(pre_tokenizer, tail + head) == prompt_tail + _pieces(pre_tokenizer, head, shift=len(tail))


class Encoder:
    """Texts -> token ids, exactly `tokenizer(text)["input_ids"]` (special tokens included unless told).

    With `fast=True` it calls the Rust tokenizer's `encode_batch_fast` on a copy with truncation and padding
    off, which skips the offsets and the per-text Python objects of `tokenizer(...)` (a third of the time);
    `tokenize` turns it on only after checking that it gives `tokenizer(...)`'s ids on a sample.
    """

    def __init__(self, tokenizer, fast: bool = False):
        self.tokenizer, self.backend = tokenizer, None
        if fast:
            self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self.backend.no_truncation()
            self.backend.no_padding()

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        if self.backend is not None:
            return [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
        # ids only: building attention masks and token type ids would cost a quarter of the time again
        return self.tokenizer(
            texts, add_special_tokens=add_special_tokens, return_attention_mask=False, return_token_type_ids=False
        )["input_ids"]


def _encode_rows(
    encode: Encoder, prompts: list[str], responses: list[list[str]], affixes
) -> tuple[list[list[list[int]]], list[int | None]]:
    """`tokenizer(prompt + response)["input_ids"]` for every response of every row, and per row the number of
    prompt tokens in them when it is known (the prompt was encoded apart for all the row's responses).

    With `affixes` (the tokenizer was checked to allow it, see `tokenize`), the prompt is tokenized once per row
    and each response apart, then joined, wherever the pre-tokenizer splits the text at the seam exactly as it
    splits the parts; elsewhere the whole text is tokenized. Both give the same ids; the first skips the prompt
    for every response after the first, which is most of the text in multi-turn data.
    """
    if affixes is None:
        flat = encode([p + r for p, rs in zip(prompts, responses, strict=False) for r in rs])
        out, start = [], 0
        for rs in responses:
            out.append(flat[start : start + len(rs)])
            start += len(rs)
        return out, [None] * len(out)
    lead, trail = affixes
    pre = encode.tokenizer.backend_tokenizer.pre_tokenizer
    prompt_ids = encode(prompts, add_special_tokens=False)
    response_ids = encode([r for rs in responses for r in rs], add_special_tokens=False)
    out, prompt_lengths, whole, k = [], [], [], 0
    for i, (prompt, rs) in enumerate(zip(prompts, responses, strict=False)):
        tail = prompt[-16:]
        tail_pieces = _pieces(pre, tail) if prompt else []
        row = []
        for j, response in enumerate(rs):
            if not prompt or _splits_cleanly(pre, tail_pieces, tail, response):
                row.append(lead + prompt_ids[i] + response_ids[k] + trail)
            else:
                row.append(None)
                whole.append((i, j, prompt + response))
            k += 1
        out.append(row)
        prompt_lengths.append(None if None in row else len(prompt_ids[i]))
    if whole:
        for (i, j, _), ids in zip(whole, encode([text for _, _, text in whole]), strict=False):
            out[i][j] = ids
    return out, prompt_lengths


def _nested_ids(rows: list[list[list[int]]]) -> pa.Array:
    """Arrow `list<list<int32>>` of the rows' id lists, built level by level (5x faster than `datasets` does)."""
    sequences = pa.array([ids for row in rows for ids in row], type=pa.list_(pa.int32()))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), sequences)


def _tokenize_batch(batch: pa.Table, encode: Encoder, max_length: int | None, truncation: str, affixes) -> pa.Table:
    prompts, responses = batch["prompt"].to_pylist(), batch["responses"].to_pylist()
    ids, prompt_lengths = _encode_rows(encode, prompts, responses, affixes)
    status = ["kept"] * len(ids)
    too_long = [i for i, row in enumerate(ids) if max_length is not None and any(len(x) > max_length for x in row)]
    if truncation == "filter":
        for i in too_long:
            ids[i], status[i] = [], "filtered"
    elif too_long:
        # Where the prompt was encoded apart, its end is known; elsewhere the offsets say where it is.
        unknown = [i for i in too_long if prompt_lengths[i] is None]
        cut = {}
        if unknown:
            rows = _truncate_rows(
                encode.tokenizer, [prompts[i] for i in unknown], [responses[i] for i in unknown], max_length
            )
            cut = dict(zip(unknown, rows, strict=True))
        for i in too_long:
            if i not in cut:
                lead, trail = (len(a) for a in affixes)
                cut[i] = _cut_keep_end([_split_ids(x, lead, prompt_lengths[i], trail) for x in ids[i]], max_length)
            ids[i], status[i] = cut[i], "truncated"
    return batch.append_column("ids", _nested_ids(ids)).append_column("_status", pa.array(status, pa.string()))


def plan_encoding(tokenizer, rows: Dataset, sample: int = 64) -> tuple[Encoder, tuple | None]:
    """The fastest `Encoder` and prompt/response split (`special_affixes`, or None: whole texts) that reproduce
    `tokenizer(prompt + response)["input_ids"]` on a sample of the rows."""
    slow = Encoder(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or len(rows) == 0:
        return slow, None
    head = rows.select(range(min(sample, len(rows))))
    prompts, responses = list(head["prompt"]), list(head["responses"])
    reference = _encode_rows(slow, prompts, responses, None)[0]
    fast = Encoder(tokenizer, fast=True)
    encode = fast if _encode_rows(fast, prompts, responses, None)[0] == reference else slow
    affixes = special_affixes(tokenizer) if backend.pre_tokenizer is not None else None
    if affixes is not None and _encode_rows(encode, prompts, responses, affixes)[0] != reference:
        affixes = None
    return encode, affixes


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(tokenizer)
    return hashlib.sha256(f"{type(tokenizer).__name__}{state}{tokenizer.all_special_tokens}".encode()).hexdigest()


def tokenize(rows: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> Dataset:
    """Adds `ids` (token ids of prompt + response, per response) and `_status` (kept/truncated/filtered)."""
    if data_args.truncation not in ("keep_end", "filter"):
        raise DataError(f"truncation must be `keep_end` or `filter`, got {data_args.truncation!r}")
    settings = (data_args.max_length, data_args.truncation)
    encode, affixes = plan_encoding(tokenizer, rows)
    tokenized = rows.with_format("arrow").map(
        _tokenize_batch,
        batched=True,
        fn_kwargs={
            "encode": encode,
            "max_length": data_args.max_length,
            "truncation": data_args.truncation,
            "affixes": affixes,
        },
        num_proc=_num_proc(data_args.dataset_num_proc, rows),
        features=Features({**rows.features, "ids": Sequence(Sequence(Value("int32"))), "_status": Value("string")}),
        new_fingerprint=_fingerprint(rows._fingerprint, tokenizer_fingerprint(tokenizer), *settings),
        desc="Tokenizing",
    )
    return tokenized.with_format(None)


def _is_tie(scores: list[float]) -> bool:
    return len(scores) == 2 and scores[0] == scores[1]


def _count_statuses(rows: Dataset, report: dict) -> None:
    if len(rows) == 0:
        return
    table = rows.with_format("arrow")
    statuses = table["_status"].to_pylist()
    scores = table["scores"].to_pylist()
    for status, row_scores in zip(statuses, scores, strict=False):
        key = "ties" if status != "filtered" and _is_tie(row_scores) else status
        report[key] += 1


# ----------------------------------------------------------------------------------------------- pairs


def _expand_batch(batch: pa.Table, indices: list[int], keep_ties: bool, margin: bool, group_offset: int) -> pa.Table:
    # The pairs are decided in Python from the scores; the token ids stay in Arrow (`take` on the flat list
    # of responses), so no id is converted to a Python int and back.
    ids = batch["ids"].combine_chunks()
    responses = ids.flatten()  # every response of the batch, row after row
    starts = pc.subtract(ids.offsets, ids.offsets[0]).to_pylist()
    keys = ("chosen_at", "rejected_at", "weight", "tie", "group", "chosen_response", "rejected_response", "subset")
    out = {k: [] for k in (*keys, "margin")}
    rows = zip(
        indices,
        starts,
        starts[1:],
        batch["scores"].to_pylist(),
        batch["margin"].to_pylist(),
        batch["subset"].to_pylist(),
        strict=False,
    )
    for index, start, stop, scores, row_margin, subset in rows:
        if start == stop:  # filtered
            continue
        if _is_tie(scores):
            pairs, weight = ([(0, 1)] if keep_ties else []), 0.0
        else:
            pairs = [
                (i, j) if scores[i] > scores[j] else (j, i)
                for i in range(stop - start)
                for j in range(i + 1, stop - start)
                if scores[i] != scores[j]
            ]
            weight = 1.0 / len(pairs)
        for better, worse in pairs:
            out["chosen_at"].append(start + better)
            out["rejected_at"].append(start + worse)
            out["weight"].append(weight)
            out["tie"].append(1.0 if _is_tie(scores) else 0.0)
            out["margin"].append(scores[better] - scores[worse] if math.isnan(row_margin) else row_margin)
            out["group"].append(group_offset + index)
            out["chosen_response"].append(better)
            out["rejected_response"].append(worse)
            out["subset"].append(subset)
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
    return pa.table(columns)


def expand_pairs(rows: Dataset, keep_ties: bool, margin: bool, group_offset: int = 0) -> Dataset:
    """Rows -> one pair per (better, worse) response: `chosen_ids`, `rejected_ids`, `weight`, `tie`, `group`.

    A pair row has weight 1; a tie weight 0 and `tie` 1.0 (kept only when `keep_ties`: evaluation counts it
    0.5); a ranking of K responses gives its K(K-1)/2 pairs (equal scores excepted) weight 1/num_pairs each,
    so each prompt weighs 1, and `group` (the row index) ties them to their prompt; `chosen_response` and
    `rejected_response` are the two responses' places in the row, so that evaluation can rebuild the ranking.
    `margin` is the row's margin, or the score difference; `subset` the row's subset name.
    """
    features = {"chosen_ids": Sequence(Value("int32")), "rejected_ids": Sequence(Value("int32")),
                "weight": Value("float32"), "tie": Value("float32"), "group": Value("int64"),
                "chosen_response": Value("int32"), "rejected_response": Value("int32"),
                "subset": Value("string")}  # fmt: skip
    if margin:
        features["margin"] = Value("float32")
    pairs = rows.with_format("arrow").map(
        _expand_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"keep_ties": keep_ties, "margin": margin, "group_offset": group_offset},
        remove_columns=rows.column_names,
        features=Features(features),
        new_fingerprint=_fingerprint(rows._fingerprint, keep_ties, margin, group_offset),
        desc="Pairing",
    )
    return pairs.with_format(None)
