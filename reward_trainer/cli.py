"""The `reward-trainer` command line.

    reward-trainer train --config recipes/quickstart.yaml [--any_field value ...]
    reward-trainer serve --model_name_or_path outputs/quickstart [--host 127.0.0.1] [--port 8000]
    reward-trainer evaluate --model_name_or_path DIR --dataset_name PATH_OR_NAME [--output_dir OUT]
    reward-trainer evaluate --model_name_or_path DIR --benchmark rewardbench|rewardbench2 [--dataset_name FILE]
    reward-trainer best-of-n --proxy_model DIR --gold_model DIR --dataset_name PROMPTS [--max_n 16]

A `--config` YAML file gives defaults, flags on the command line override them, and an unknown key in
either is an error that names it. Bad input ends with one line on stderr and exit code 2.
"""

import json
import os
import sys
from collections.abc import Callable

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .config import (
    BestOfNArguments,
    DataArguments,
    EvaluateArguments,
    ModelArguments,
    RewardConfig,
    ServeArguments,
)
from .errors import DataError, ModelLoadError, NonFiniteLossError, UsageError

EXIT_BAD_INPUT = 2


class _Parser(HfArgumentParser):
    def __init__(self, dataclass_types, **kwargs):
        super().__init__(dataclass_types, **kwargs)
        # A `bool | None` field (None: not given, e.g. `--bf16`) takes a bare flag as `true`, as a `bool` one does.
        for action in self._actions:
            if action.type is string_to_bool and action.nargs is None and action.default is None:
                action.nargs, action.const = "?", True

    def error(self, message):  # argparse prints the whole usage and exits; we want one line
        raise UsageError(message)


def yaml_to_argv(path: str, known: set[str]) -> list[str]:
    """Turns a YAML recipe into command-line flags, so that argparse type-checks its values too."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise UsageError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path!r} is not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path!r} must be a mapping of `key: value`, got {type(values).__name__}")
    argv = []
    for key, value in values.items():
        if key not in known:
            raise UsageError(f"config file {path!r}: unknown key {key!r}")
        if value is None:
            continue
        if isinstance(value, list):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def parse_args(argv: list[str], dataclass_types=(ModelArguments, DataArguments, RewardConfig)):
    """`--config FILE` (optional) then flags; returns one instance of each dataclass."""
    parser = _Parser(dataclass_types)
    known = {action.dest for action in parser._actions}
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a file path")
        argv = yaml_to_argv(argv[i + 1], known) + argv[:i] + argv[i + 2 :]
    try:
        return parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:  # unknown flags, or a TrainingArguments consistency check
        raise UsageError(str(err).splitlines()[0]) from None


def run_and_report_errors(fn: Callable[[], object]) -> int:
    """Runs `fn`; bad input becomes one line on stderr and exit code 2 instead of a traceback, and a
    diverged run (non-finite loss) one line and exit code 1."""
    try:
        fn()
    except (UsageError, DataError, ModelLoadError) as err:
        print(f"reward-trainer: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except NonFiniteLossError as err:
        print(f"reward-trainer: error: {err}", file=sys.stderr)
        return 1
    return 0


def train_main(argv: list[str]) -> int:
    def run():
        from .train import train

        train(*parse_args(argv))

    code = run_and_report_errors(run)
    from .train import end_process_group

    end_process_group()  # after a finished run or a reported error; a crash leaves the launcher to end the group
    return code


def serve_main(argv: list[str]) -> int:
    def run():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as err:
            raise UsageError(f"`serve` needs the serve extra: pip install 'reward-trainer[serve]' ({err})") from None
        from .server import serve

        (args,) = parse_args(argv, (ServeArguments,))
        try:
            serve(args)
        except OSError as err:
            raise ModelLoadError(f"cannot load model {args.model_name_or_path!r}: {str(err).splitlines()[0]}") from err

    return run_and_report_errors(run)


def evaluate_main(argv: list[str]) -> int:
    def run():
        from .evaluation import evaluate_model
        from .report import REPORT_JSON

        (args,) = parse_args(argv, dataclass_types=(EvaluateArguments,))
        report = evaluate_model(args)
        if args.benchmark:
            from .leaderboard import BENCHMARK_JSON, benchmark_markdown

            print(benchmark_markdown(report), end="")
            print(f"Wrote {os.path.join(args.output_dir, BENCHMARK_JSON)} and the Markdown report beside it")
            return
        if "accuracy" in report:
            low, high = report["accuracy_ci95"]
            print(f"accuracy: {report['accuracy']:.4f} (95% CI {low:.4f} - {high:.4f}) on {report['pairs']} pairs")
        print(f"Wrote {os.path.join(args.output_dir, REPORT_JSON)} and the Markdown report and plots beside it")

    return run_and_report_errors(run)


def best_of_n_main(argv: list[str]) -> int:
    def run():
        from .best_of_n import PLOT_PNG, RESULT_JSON, run_best_of_n

        (args,) = parse_args(argv, dataclass_types=(BestOfNArguments,))
        curve = run_best_of_n(args)["curve"]
        for n, kl, proxy, gold in zip(curve["n"], curve["kl"], curve["proxy"], curve["gold"]):
            print(f"n={n:<4d} KL={kl:.3f}  proxy {proxy:+.4f}  gold {gold:+.4f}")
        print(f"Wrote {os.path.join(args.output_dir, RESULT_JSON)} and {PLOT_PNG} beside it")

    return run_and_report_errors(run)


COMMANDS = {"train": train_main, "evaluate": evaluate_main, "serve": serve_main, "best-of-n": best_of_n_main}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: reward-trainer {{{','.join(COMMANDS)}}} [--config FILE] [--field value ...]", file=sys.stderr)
        return EXIT_BAD_INPUT
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
