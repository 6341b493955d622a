"""A corpus of broken inputs (tests/data/broken/): each is one line naming file, row and field with
`on_bad_row=error`, and is skipped, counted and listed with `on_bad_row=skip`."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import subprocess_env

from reward_trainer.config import DataArguments
from reward_trainer.data import load_preference_data
from reward_trainer.errors import DataError

BROKEN = Path(__file__).resolve().parent / "data" / "broken"


PANDALM_FLAGS = dict(
    response_columns=["response1", "response2"],
    label_columns=["annotator1", "annotator2", "annotator3"],
    label_values='{"0": "tie", "1": 0, "2": 1}',
)

# file -> (bad row, text the error names: the field or the problem, input rows, extra options)
ROW_ERRORS = {
    "malformed_json.jsonl": (2, "malformed JSON", 4, {}),
    "invalid_utf8.jsonl": (3, "invalid UTF-8", 4, {}),
    "invalid_utf8.jsonl.gz": (3, "invalid UTF-8", 4, {}),
    "missing_column.jsonl": (3, "'rejected': missing", 4, {}),
    "non_string_field.jsonl": (2, "'chosen': expected a string, got int", 4, {}),
    "null_field.jsonl": (4, "'rejected': missing", 4, {}),
    "identical_responses.jsonl": (2, "'rejected': identical", 4, {}),
    "not_an_object.jsonl": (3, "expected a JSON object", 4, {}),
    "bad_margin.jsonl": (2, "'margin': expected a finite number", 4, {}),
    "bad_tie.jsonl": (3, "'tie': expected true/false", 4, {}),
    "ranking_too_few.jsonl": (2, "'responses': expected a list of at least 2", 3, {}),
    "ranking_bad_scores.jsonl": (3, "'scores': expected one number per response", 3, {}),
    "bad_messages.jsonl": (2, "'chosen': expected a list of", 3, {}),
    "unknown_label.json": (3, "'annotator1': unknown label '7'", 4, PANDALM_FLAGS),
    "empty_cell.csv": (2, "'rejected': missing", 3, {}),
}
# whole-file problems: an error in both modes
FILE_ERRORS = {
    "empty_file.jsonl": "row 1: the file is empty",
    "blank_lines_only.jsonl": "row 1: the file is empty",
    "truncated_array.json": "line 4: malformed JSON",
}


def test_the_corpus_has_at_least_15_broken_files():
    assert len(list(BROKEN.iterdir())) >= 15
    assert {p.name for p in BROKEN.iterdir()} == set(ROW_ERRORS) | set(FILE_ERRORS)


def args(name, tmp_path, **kw):
    return DataArguments(dataset_name=str(BROKEN / name), eval_fraction=0.0, dataset_cache_dir=str(tmp_path), **kw)


@pytest.mark.parametrize("name", sorted(ROW_ERRORS))
def test_error_names_file_row_and_field(name, tmp_path, tiny_tokenizer):
    row, expected, _, extra = ROW_ERRORS[name]
    with pytest.raises(DataError) as err:
        load_preference_data(args(name, tmp_path, **extra), tiny_tokenizer)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{BROKEN / name}: row {row}: ") and expected in message, message


@pytest.mark.parametrize("name", sorted(ROW_ERRORS))
def test_skip_counts_and_lists_the_bad_row(name, tmp_path, tiny_tokenizer):
    row, expected, input_rows, extra = ROW_ERRORS[name]
    report = load_preference_data(args(name, tmp_path, on_bad_row="skip", **extra), tiny_tokenizer).report
    assert report["input_rows"] == input_rows
    assert report["skipped"] == 1
    [skipped] = report["skipped_rows"]
    assert skipped["file"] == str(BROKEN / name) and skipped["row"] == row and expected in skipped["reason"]
    buckets = ("kept", "truncated", "filtered", "ties", "single_responses", "skipped", "unused")
    assert sum(report[k] for k in buckets) == input_rows


@pytest.mark.parametrize("name", sorted(FILE_ERRORS))
@pytest.mark.parametrize("on_bad_row", ["error", "skip"])
def test_whole_file_problems_stop_in_both_modes(name, on_bad_row, tmp_path, tiny_tokenizer):
    with pytest.raises(DataError, match=FILE_ERRORS[name]):
        load_preference_data(args(name, tmp_path, on_bad_row=on_bad_row), tiny_tokenizer)


def test_cli_prints_one_line_and_exits_2(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"dataset_name: {BROKEN / 'non_string_field.jsonl'}\noutput_dir: {tmp_path / 'out'}\nmax_steps: 1\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reward_trainer.cli",
            "train",
            "--config",
            str(recipe),
            "--dataset_cache_dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    progress = ("%|", "examples/s]", "examples [")  # `datasets` progress bars, one line each in a terminal
    lines = [line for line in result.stderr.splitlines() if line.strip() and not any(p in line for p in progress)]
    assert "Traceback" not in result.stderr
    assert len(lines) == 1 and "non_string_field.jsonl: row 2: field 'chosen'" in lines[0], result.stderr


# --- damaged files: every command that reads one says so in one line ------------------------------------------


def damaged_file(folder: Path, damage: str) -> tuple[Path, str]:
    """A file of 200 preference rows, damaged as an interrupted download or a mislabelled file leaves it, and the
    words the error must contain."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Q{i}?", "chosen": f" good answer {i}", "rejected": f" bad {i}"} for i in range(200)]
    lines = "".join(json.dumps(row) + "\n" for row in rows).encode()
    if damage == "parquet_truncated":
        path = folder / "pairs.parquet"
        pq.write_table(pa.Table.from_pylist(rows), path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path, "cannot read as parquet"
    path = folder / "pairs.jsonl.gz"
    whole = gzip.compress(lines)
    content = {
        "gzip_truncated": whole[: len(whole) // 2],  # rows are read up to the cut, then the stream stops
        "gzip_truncated_in_first_row": whole[:30],
        "gzip_corrupt": whole[:10] + bytes(range(256)) * 4,  # a gzip header, then data that is not deflate
        "not_gzip": lines,  # named .gz, written plain
    }[damage]
    path.write_bytes(content)
    expected = "not a valid gzip file" if damage in ("gzip_corrupt", "not_gzip") else "the file is truncated"
    return path, expected


DAMAGES = ["gzip_truncated", "gzip_truncated_in_first_row", "gzip_corrupt", "not_gzip", "parquet_truncated"]
COMMANDS = ["train", "evaluate", "evaluate --benchmark", "best-of-n"]


@pytest.mark.parametrize(
    "command, damage",
    # best-of-n reads its prompts from JSON files only
    [(c, d) for c in COMMANDS for d in DAMAGES if (c, d) != ("best-of-n", "parquet_truncated")],
)
def test_a_damaged_file_is_one_line_and_exit_code_2(command, damage, tmp_path, capsys, request):
    from reward_trainer import cli

    path, expected = damaged_file(tmp_path, damage)
    out = str(tmp_path / "out")
    if command == "train":
        argv = ["train", "--dataset_name", str(path), "--max_steps", "1", "--bf16", "false", "--output_dir", out]
        argv += ["--dataset_cache_dir", str(tmp_path / "cache")]
    elif command == "evaluate":
        model = request.getfixturevalue("trained_checkpoint")
        argv = ["evaluate", "--model_name_or_path", str(model), "--dataset_name", str(path), "--output_dir", out]
    elif command == "evaluate --benchmark":  # the file is read before the model is loaded
        argv = ["evaluate", "--model_name_or_path", str(tmp_path), "--benchmark", "rewardbench"]
        argv += ["--dataset_name", str(path), "--output_dir", out]
    else:  # the prompts are read before any model is loaded: the folders need only exist
        argv = ["best-of-n", "--proxy_model", str(tmp_path), "--gold_model", str(tmp_path)]
        argv += ["--dataset_name", str(path), "--output_dir", out]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    progress = ("%|", "examples/s]", "examples [", "it/s]")
    lines = [line for line in err.splitlines() if line.strip() and not any(p in line for p in progress)]
    assert "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith(f"reward-trainer: error: {path}: "), err
    assert expected in lines[0], lines[0]
