"""What a user meets on a first run: HH-RLHF with default flags, whole-file errors that name the file, recipes that
use the GPU when there is one, DDP without the unused-parameter search, one data report, training without eval data."""

import json
import logging
import re

import pytest

from reward_trainer import cli
from reward_trainer.config import RewardConfig

PROGRESS_BAR = re.compile(r"\d+(\.\d+)? (examples|it|batch)/s\]|\?(it|batch)/s\]|examples/s\]")
TINY_RUN = ["--max_steps", "2", "--per_device_train_batch_size", "8", "--max_length", "64", "--disable_tqdm", "true"]


def run(argv, capsys) -> tuple[int, list[str]]:
    """Runs the command line in this process; its exit code and the lines of stderr that are not progress bars."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip() and not PROGRESS_BAR.search(line)]


@pytest.mark.slow  # trains and scores the 2,312 HH rows: ~10 s
def test_hh_rlhf_trains_and_evaluates_with_default_flags(shared_data, tmp_path, capsys):
    """HH-RLHF's harmless test split has 4 rows whose final response is a single space: they are responses
    (the annotators preferred saying nothing), so both commands read all 2,312 rows with `on_bad_row` left at
    `error` and count the empty responses."""
    hh = str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz")
    out = tmp_path / "model"
    code, lines = run(["train", "--dataset_name", hh, "--output_dir", str(out), *TINY_RUN], capsys)
    assert code == 0, lines
    report = json.loads((out / "data_report.json").read_text())
    assert report["input_rows"] == 2312 and report["skipped"] == 0 and report["empty_responses"] == 4
    buckets = ("kept", "truncated", "filtered", "ties", "single_responses", "skipped", "unused")
    assert sum(report[k] for k in buckets) == 2312 and report["train_rows"] + report["eval_rows"] == 2312

    evaluation = tmp_path / "evaluation"
    argv = ["evaluate", "--model_name_or_path", str(out), "--dataset_name", hh, "--output_dir", str(evaluation)]
    code, lines = run([*argv, "--max_length", "64", "--disable_tqdm", "true"], capsys)
    assert code == 0, lines
    result = json.loads((evaluation / "eval_report.json").read_text())
    assert result["input_rows"] == result["pairs"] == 2312 and result["skipped"] == 0
    assert result["empty_responses"] == 4


def test_an_empty_response_is_a_response(tmp_path, tiny_tokenizer):
    """Whitespace-only and empty responses are kept and counted; missing, null, non-string and identical are not."""
    from reward_trainer.config import DataArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.errors import DataError

    rows = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(8)]
    rows[0]["chosen"], rows[1]["rejected"] = "   ", ""
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = DataArguments(dataset_name=str(path), eval_fraction=0.0, dataset_cache_dir=str(tmp_path / "cache"))
    data = load_preference_data(args, tiny_tokenizer)
    assert data.report["empty_responses"] == 2 and data.report["skipped"] == 0 and len(data.train) == 8
    for bad, reason in ((None, "'rejected': missing"), (3, "'rejected': expected a string"), ("", "identical")):
        rows[2]["chosen"], rows[2]["rejected"] = "", bad
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(DataError, match=f"pairs.jsonl: row 3: field .*{reason}"):
            load_preference_data(args, tiny_tokenizer)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("pairs.csv", "prompt,chosen\nQ?,A\n", "has no column 'rejected'"),
        ("pairs.jsonl", "prompt\tchosen\trejected\nQ?\tA\tB\n", "is not JSON (line 1, column 1"),
        ("pairs.json", "not json at all\n", "is not JSON (line 1, column 1"),
        ("pairs.json", '{\n  "rows": [\n    {"prompt": "Q?", "chosen": "A", "rejected": "B"}\n  ]\n}\n', "holds one JSON object; expected one object per line or an array of objects"),
        ("pairs.json", '{"rows": [{"prompt": "Q?", "chosen": "A", "rejected": "B"}]}\n', "holds one JSON object; expected one object per line or an array of objects"),
    ],
)  # fmt: skip
def test_whole_file_problems_name_the_file_and_say_what_is_wrong(tmp_path, capsys, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    code, lines = run(["train", "--dataset_name", str(path), "--output_dir", str(tmp_path / "out")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert f"{path}: {expected}" in lines[0]
    assert "cannot detect the data format" not in lines[0]


def test_recipes_use_the_gpu_when_there_is_one_in_the_machines_precision(monkeypatch):
    """No recipe sets `use_cpu`, `bf16` or `fp16`: a run takes the GPU when torch sees one (else the CPU), in the
    precision that device computes fastest (`reward_trainer.hardware`; the CPU of the tests has no native bf16)."""
    import yaml
    from conftest import REPO_ROOT, pretend_gpu

    recipes = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
    for recipe in recipes:
        assert not {"use_cpu", "bf16", "fp16"} & set(yaml.safe_load(recipe.read_text())), recipe.name
    for gpu in (False, True):
        if gpu:
            pretend_gpu(monkeypatch, bf16=True)
        for recipe in recipes:
            _, _, training_args = cli.parse_args(["--config", str(recipe), "--output_dir", "x"])
            assert training_args.use_cpu is not gpu, recipe.name
            assert training_args.precision.name == ("bf16" if gpu else "fp32"), recipe.name


def test_ddp_skips_the_search_for_unused_parameters_by_default(tmp_path):
    assert RewardConfig(output_dir=str(tmp_path)).ddp_find_unused_parameters is False
    _, _, args = cli.parse_args(["--output_dir", str(tmp_path), "--ddp_find_unused_parameters", "true"])
    assert args.ddp_find_unused_parameters is True  # still settable


@pytest.mark.slow  # a training run: ~4 s
def test_the_data_report_is_logged_once(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="reward_trainer"):
        code, _ = run(["train", "--output_dir", str(tmp_path), "--num_synthetic_pairs", "64", *TINY_RUN], capsys)
    assert code == 0
    reports = [r for r in caplog.records if r.getMessage().startswith("data: {")]
    assert len(reports) == 1, [r.getMessage() for r in reports]


@pytest.mark.slow  # two training runs: ~5 s
def test_training_without_eval_data_skips_evaluation(tmp_path, capsys, caplog):
    rows = [{"prompt": f"Q{i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(16)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["train", "--dataset_name", str(path), "--eval_fraction", "0", "--output_dir", str(tmp_path / "out")]
    with caplog.at_level(logging.INFO, logger="reward_trainer"):
        code, lines = run([*argv, *TINY_RUN], capsys)
    assert code == 0, lines
    assert (tmp_path / "out" / "model.safetensors").exists() and not (tmp_path / "out" / "eval_results.json").exists()
    assert sum("training without evaluation" in r.getMessage() for r in caplog.records) == 1

    code, lines = run([*argv, *TINY_RUN, "--load_best_model_at_end", "true", "--save_strategy", "epoch"], capsys)
    assert code == 2 and len(lines) == 1 and "--load_best_model_at_end" in lines[0], lines
