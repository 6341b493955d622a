"""How every data step runs: a batched `datasets.map` cached under a fingerprint of its input and settings."""

import hashlib
import json

from datasets import Dataset

VERSION = "data-v6"  # part of every fingerprint: bump when the processing changes


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps([VERSION, *map(str, parts)]).encode()).hexdigest()[:32]


def num_proc_for(num_proc: int | None, rows: Dataset) -> int | None:
    """`num_proc` for `map`, or None (one process) when it is 1 or the rows are too few to split."""
    if not num_proc or num_proc <= 1 or len(rows) < 2 * num_proc:
        return None
    return num_proc
