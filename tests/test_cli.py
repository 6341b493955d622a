"""Bad input on the command line ends with one line naming the problem and exit code 2, no traceback."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, subprocess_env

from reward_trainer.cli import UsageError, parse_args


def run_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "reward_trainer.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=subprocess_env(),
        timeout=120,
    )


def write(path, text):
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "recipe, extra, expected",
    [
        (
            "learning_rate: 0.001\n",
            ["--model_name_or_path", "/nonexistent/model"],
            "model path '/nonexistent/model' does not exist",
        ),
        ("dataset_name: /nonexistent/pairs.jsonl\n", [], "/nonexistent/pairs.jsonl"),
        ("learning_rate: [0.1\n", [], "is not valid YAML"),
        ("learning_rat: 0.001\n", [], "unknown key 'learning_rat'"),
        ("learning_rate: fast\n", [], "learning_rate"),
        ("learning_rate: 0.001\n", ["--no_such_flag", "1"], "--no_such_flag"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, recipe, extra, expected):
    config = write(tmp_path / "recipe.yaml", recipe + f"output_dir: {tmp_path / 'out'}\n")
    result = run_cli("train", "--config", config, *extra)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_missing_config_file(tmp_path):
    result = run_cli("train", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


def test_flags_override_the_recipe(tmp_path):
    config = write(tmp_path / "r.yaml", "learning_rate: 0.5\nmax_length: 32\nnum_train_epochs: 3\n")
    model_args, data_args, training_args = parse_args(
        ["--config", config, "--learning_rate", "0.25", "--output_dir", str(tmp_path)]
    )
    assert training_args.learning_rate == 0.25  # flag wins
    assert data_args.max_length == 32 and training_args.num_train_epochs == 3  # recipe gives the rest
    assert model_args.model_name_or_path == "builtin:tiny-gpt2"  # defaults for what neither names


def test_every_recipe_parses():
    recipes = sorted((REPO_ROOT / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        parse_args(["--config", str(recipe)])


def test_unknown_key_in_parse_args(tmp_path):
    with pytest.raises(UsageError, match="unknown key 'bogus'"):
        parse_args(["--config", write(tmp_path / "r.yaml", "bogus: 1\n")])


@pytest.mark.parametrize("command", ["train", "evaluate", "serve", "best-of-n"])
def test_every_command_prints_its_help(command, capsys):
    """argparse formats each help string with `%`: a bare percent sign in one ends `--help` in a traceback."""
    from reward_trainer import cli

    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert "--model_name_or_path" in capsys.readouterr().out or command == "best-of-n"
