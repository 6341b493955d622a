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
