"""Reading each source into raw rows that remember their file and 1-based row number.

Local files (JSON Lines, optionally gzipped; a JSON array; Parquet; CSV), `save_to_disk` folders, Hub datasets and
the built-in task. JSON Lines and JSON arrays are read here, not by `datasets`' JSON loader, so that a malformed line
or invalid UTF-8 is a bad row with its line number rather than a loader crash, and memory stays flat.
"""

import codecs
import gzip
import json
import os
import zlib

from datasets import Dataset, Features, Value, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from ..config import BUILTIN_DATASET, DataArguments
from ..errors import DataError
from ..hub import is_hub_id

LOCAL_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".json.gz", ".parquet", ".csv")
# What reading a damaged `.gz` file raises: EOFError where the stream stops short (a truncated file), BadGzipFile
# where it does not start as gzip, zlib.error where its compressed data is corrupt.
GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
RAW_FEATURES = Features({"_row": Value("int64"), "_json": Value("string"), "_error": Value("string")})


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
        from ..quickstart import make_pairs

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
            raise DataError(f"{name}: cannot read as {kind}: {read_error(err)}") from None
    if name.endswith(LOCAL_SUFFIXES) or not is_hub_id(name):
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


def display_name(name: str, key: str, splits: dict) -> str:
    return name if key == "train" and len(splits) == 1 else f"{name}[{key}]"


def json_lines_rows(path: str, stamp: tuple):
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


def json_array_rows(path: str, stamp: tuple, chunk_size: int = 1 << 20):
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


SINGLE_OBJECT = "holds one JSON object; expected one object per line or an array of objects"


def read_json_lines(path: str, cache_dir: str | None = None) -> Dataset:
    _refuse_one_object(path)
    return _from_generator(json_lines_rows, path, cache_dir)


def _refuse_one_object(path: str, max_bytes: int = 64 * 2**20) -> None:
    """A `DataError` for a file that is one JSON object written over several lines (`{` alone on line 1), which
    JSON Lines would read as a broken row per line. Files over `max_bytes` are left to the row checks."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            first = f.readline()
    except GZIP_ERRORS as err:
        raise DataError(f"{path}: cannot read: {read_error(err)}") from None
    try:
        json.loads(first)
        return
    except ValueError:
        if not first.lstrip().startswith(b"{") or os.path.getsize(path) > max_bytes:
            return
    with opener(path, "rb") as f:
        try:
            whole = json.load(f)
        except (ValueError, *GZIP_ERRORS):  # not one object either: its lines are reported as rows (or the error)
            return
    if isinstance(whole, dict):
        raise DataError(f"{path}: {SINGLE_OBJECT}")


def read_json(path: str, cache_dir: str | None = None) -> Dataset:
    """A `.json` file: a JSON array of objects (row = position in the array), or JSON Lines under that name."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4096).lstrip()
    except GZIP_ERRORS as err:
        raise DataError(f"{path}: cannot read: {read_error(err)}") from None
    if head.startswith(b"["):
        return _from_generator(json_array_rows, path, cache_dir)
    return read_json_lines(path, cache_dir)


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
        raise DataError(f"{path}: cannot read: {read_error(cause)}") from None
    if len(rows) == 0:
        raise DataError(f"{path}: row 1: the file is empty (no rows)")
    return rows


def read_error(err: BaseException) -> str:
    """What went wrong reading a file, in a few words: a damaged gzip stream (anywhere in `err`'s chain of causes)
    said plainly, else the first line of `err`."""
    seen = err
    while seen is not None:
        if isinstance(seen, EOFError):
            return "its compressed stream ends early: the file is truncated (an interrupted download?); fetch it again"
        if isinstance(seen, gzip.BadGzipFile | zlib.error):
            return f"not a valid gzip file ({_first_line(seen)})"
        seen = seen.__cause__ or seen.__context__
    return _first_line(err)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
