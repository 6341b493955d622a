"""RewardBench and RewardBench 2 runs: their files, the scoring, the leaderboard tables, on local files or Hub names.

    reward-trainer evaluate --benchmark rewardbench --model_name_or_path outputs/rm --output_dir outputs/rb
    reward-trainer evaluate --benchmark rewardbench2 --model_name_or_path outputs/rm --dataset_name rb2.parquet

The numbers are the official arithmetic of `reward_trainer.rewardbench`.

Rendering: as the official `prepare_dialogue_from_tokenizer`, the prompt (a string, or a list of messages whose
roles alternate user / assistant by position) and each response become one conversation rendered with the
tokenizer's chat template (`tokenize=False`, no generation prompt) and then tokenized with its special tokens, as
the official text-classification pipeline does. A tokenizer without a chat template is rendered with this
project's default template (`reward_trainer.chat.DEFAULT_CHAT_TEMPLATE`, "role: content" turns, the one training
uses), where the official runner falls back to a FastChat template (`tulu` by default) and appends EOS: scores of
such models are comparable with this project's training, not with leaderboard entries made that way.

Settings that differ from the official runners on purpose: texts over 2,048 tokens (or the `max_length` the model
was trained with, from its scoring contract) lose their beginning here for both benchmarks (the official RewardBench
2 runner leaves the tokenizer's right-side truncation, which would cut the end of the response, where the reward is
read); the model runs in float32 (the runners default to float16); and a model trained here is read by its
scoring contract (`reward_trainer.contract`: a BOS written by the template is not repeated, the EOS string is
appended when training appended it).
"""

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from .chat import chat_template_of, split_rendered_prompt
from .config import DataArguments, EvaluateArguments
from .data.sources import read_source
from .errors import DataError
from .report import nan_to_none
from .rewardbench import SECTIONS, SUBSETS_V2, pair_results, rewardbench2_summary, rewardbench_summary
from .scorer import RewardScorer

logger = logging.getLogger("reward_trainer")

# Hub dataset and split of each benchmark, and the official runner's token limit (`--max_length 2048`).
BENCHMARK_DATA = {
    "rewardbench": ("allenai/reward-bench", "filtered"),
    "rewardbench2": ("allenai/reward-bench-2", "test"),
}
OFFICIAL_MAX_LENGTH = 2048
BENCHMARK_JSON, BENCHMARK_MD = "benchmark_report.json", "benchmark_report.md"
BENCHMARK_SCORES = "benchmark_scores.jsonl"  # one line per row: id, subset, the score of each completion


@dataclass
class BenchmarkRows:
    """The rows of a benchmark file: each prompt, its completions (chosen ones first) and what the score needs.

    For RewardBench every row has two completions (chosen, rejected) and `num_correct` 1."""

    prompts: list = field(default_factory=list)  # a string, or a list of {"role", "content"} messages
    completions: list[list[str]] = field(default_factory=list)
    num_correct: list[int] = field(default_factory=list)
    subsets: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------- the data


def read_benchmark_rows(
    benchmark: str, name: str, split: str, on_bad_row: str = "error", cache_dir: str | None = None
) -> tuple[BenchmarkRows, list[dict]]:
    """The rows of a local file (.json/.jsonl/.jsonl.gz/.parquet/.csv, `save_to_disk`) or Hub dataset in the
    benchmark's column layout, checked field by field; returns them and the skipped rows (`on_bad_row="skip"`)."""
    splits = read_source(
        name, DataArguments(dataset_name=name, train_split=split, eval_split="", dataset_cache_dir=cache_dir), 0
    )
    raw = splits["train"]
    rows, skipped = BenchmarkRows(), []
    check = _check_v1_row if benchmark == "rewardbench" else _check_v2_row
    for index, row in enumerate(raw):
        number = row.get("_row", index + 1)
        try:
            if "_json" in row:  # a JSON file, read line by line by `read_source`
                if row["_error"]:
                    raise DataError(f"{name}: row {number}: {row['_error']}")
                try:
                    row = json.loads(row["_json"])
                except json.JSONDecodeError as err:
                    raise DataError(f"{name}: row {number}: malformed JSON ({err.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{name}: row {number}: expected a JSON object, got {type(row).__name__}")
            prompt, completions, num_correct, subset, row_id = check(row, f"{name}: row {number}")
        except DataError as err:
            if on_bad_row == "error":
                raise
            skipped.append({"file": name, "row": number, "reason": str(err).removeprefix(f"{name}: row {number}: ")})
            continue
        rows.prompts.append(prompt)
        rows.completions.append(completions)
        rows.num_correct.append(num_correct)
        rows.subsets.append(subset)
        rows.ids.append(row_id)
    if not rows.prompts:
        raise DataError(f"{name}: no rows to evaluate")
    return rows, skipped


def _field(row: dict, key: str, where: str):
    if key not in row or row[key] is None:
        raise DataError(f"{where}: field {key!r} is missing")
    return row[key]


def _text(row: dict, key: str, where: str) -> str:
    value = _field(row, key, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _prompt(row: dict, where: str):
    prompt = _field(row, "prompt", where)
    if isinstance(prompt, str):
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in prompt)
    ):
        if len(prompt) % 2 == 0:  # roles alternate by position and the last one must be the user's
            raise DataError(f"{where}: field 'prompt' must end with a user turn (an odd number of messages)")
        return [{"role": "user" if i % 2 == 0 else "assistant", "content": m["content"]} for i, m in enumerate(prompt)]
    raise DataError(f"{where}: field 'prompt' must be a string or a list of {{'role', 'content'}} messages")


def _id(row: dict) -> str:
    return str(row.get("id", ""))


def _check_v1_row(row: dict, where: str):
    return (
        _prompt(row, where),
        [_text(row, "chosen", where), _text(row, "rejected", where)],
        1,
        _text(row, "subset", where),
        _id(row),
    )


def _check_v2_row(row: dict, where: str):
    prompt, subset = _prompt(row, where), _text(row, "subset", where)
    lists = []
    for key in ("chosen", "rejected"):
        value = _field(row, key, where)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise DataError(f"{where}: field {key!r} must be a list of strings")
        lists.append(value)
    completions = lists[0] + lists[1]
    num_correct = _field(row, "num_correct", where)
    if isinstance(num_correct, bool) or not isinstance(num_correct, int | float) or num_correct != int(num_correct):
        raise DataError(f"{where}: field 'num_correct' must be an integer, got {num_correct!r}")
    num_correct = int(num_correct)
    if not lists[0] or not 1 <= num_correct <= len(completions):
        raise DataError(
            f"{where}: field 'num_correct' is {num_correct} with {len(lists[0])} chosen and {len(lists[1])} rejected"
        )
    total = row.get("total_completions")
    if total is not None and total != len(completions):
        raise DataError(
            f"{where}: field 'total_completions' is {total} but the row has {len(completions)} completions"
        )
    row_id = _id(row)
    if subset.lower() == "ties":
        kind, _, number = row_id.partition(":")
        if kind not in ("ref", "tied") or not number.isdigit():
            raise DataError(f"{where}: field 'id' of a Ties row must be 'ref:N' or 'tied:N', got {row_id!r}")
    return prompt, completions, num_correct, subset, row_id


# ------------------------------------------------------------------------------------------------- the scoring


def render_conversations(tokenizer, prompt, responses: Sequence[str]) -> tuple[str, list[str]]:
    """(prompt text, text of each response after it): prompt text + response text is the whole conversation
    rendered with the chat template. The prompt text is the conversation up to the assistant's turn
    (`add_generation_prompt=True`) where every rendering starts with it, else empty (the whole text is the
    response), so the split never changes what is scored."""
    template = chat_template_of(tokenizer)
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    texts = [
        tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": r}], chat_template=template, tokenize=False
        )
        for r in responses
    ]
    return split_rendered_prompt(tokenizer, template, messages, texts, generation_prompts=(True,)) or ("", texts)


def score_rows(scorer: RewardScorer, rows: BenchmarkRows, progress: bool = False) -> list[list[float]]:
    """The reward of every completion of every row, in the rows' order. The completions of a prompt are scored as
    one group (`RewardScorer.score_texts(groups=...)`): a causal model encodes their shared token prefix once and
    each completion after it, with the same rewards as scoring each text alone."""
    texts, groups, sizes = [], [], []
    for i, (prompt, completions) in enumerate(zip(rows.prompts, rows.completions, strict=True)):
        head, tails = render_conversations(scorer.tokenizer, prompt, completions)
        texts += [head + tail for tail in tails]
        groups += [head or ("row", i)] * len(tails)  # rows with the same rendered prompt share one group
        sizes.append(len(tails))
    flat = scorer.score_texts(texts, groups=groups, progress=progress)
    out, start = [], 0
    for size in sizes:
        out.append(flat[start : start + size])
        start += size
    return out


def load_benchmark_scorer(args: EvaluateArguments) -> RewardScorer:
    """The model as `RewardScorer.from_pretrained` loads it: the checkpoint's own tokenizer (EOS as the pad token
    when it has none, as the official runner loads it), read by its scoring contract, on `args.device` (default:
    the device rule). Texts are cut (from the left) at `args.max_length` tokens, else the contract's (training's)
    `max_length`, else the official 2,048; never more than the model's positions."""
    return RewardScorer.from_pretrained(
        args.model_name_or_path,
        device=args.device,
        max_batch_tokens=args.max_batch_tokens,
        max_length=args.max_length,
        default_max_length=OFFICIAL_MAX_LENGTH,
    )


def evaluate_benchmark(args: EvaluateArguments) -> dict:
    """`reward-trainer evaluate --benchmark ...`: reads the benchmark, scores every completion, writes the report."""
    benchmark = args.benchmark
    hub_name, default_split = BENCHMARK_DATA[benchmark]
    names = args.dataset_name or [hub_name]
    if len(names) != 1:
        raise DataError(f"--benchmark {benchmark} reads one dataset, got {len(names)}: {', '.join(names)}")
    name, split = names[0], args.split or default_split
    rows, skipped = read_benchmark_rows(benchmark, name, split, args.on_bad_row)
    if args.max_samples:
        rows = BenchmarkRows(*(column[: args.max_samples] for column in vars(rows).values()))
    scorer = load_benchmark_scorer(args)
    scores = score_rows(scorer, rows, progress=not args.disable_tqdm)
    truncated = scorer.truncated_texts
    if benchmark == "rewardbench":
        summary = rewardbench_summary(pair_results(*zip(*scores)), rows.subsets)
    else:
        summary = rewardbench2_summary(scores, rows.num_correct, rows.subsets, rows.ids)
    report = {
        "benchmark": benchmark,
        "model": args.model_name_or_path,
        "dataset": name,
        "split": split,
        "rows": len(rows.prompts),
        "skipped_rows": skipped,
        "chat_template": "tokenizer"
        if getattr(scorer.tokenizer, "chat_template", None)
        else "default (role: content)",
        "max_length": scorer.max_length,
        "truncated_completions": truncated,
        **summary,
    }
    write_benchmark_report(report, args.output_dir)
    with open(os.path.join(args.output_dir, BENCHMARK_SCORES), "w", encoding="utf-8") as f:
        for row_id, subset, row_scores in zip(rows.ids, rows.subsets, scores, strict=True):
            f.write(json.dumps({"id": row_id, "subset": subset, "scores": row_scores}) + "\n")
    return report


# ------------------------------------------------------------------------------------------------- the report


def _pct(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def benchmark_markdown(report: dict) -> str:
    """The leaderboard row (percent, one decimal; `*` marks a partial value) and the per-subset table."""
    partial = "*" if report["partial"] else ""
    if report["benchmark"] == "rewardbench":
        title, columns = "RewardBench", list(SECTIONS)
        values = [
            _pct(report["sections"][c]["score"]) + ("*" if report["sections"][c]["partial"] else "") for c in columns
        ]
    else:
        title, columns = "RewardBench 2", SUBSETS_V2
        by_name = {name.lower(): entry for name, entry in report["subsets"].items()}
        values = [_pct(by_name[c.lower()]["accuracy"]) if c.lower() in by_name else "n/a" for c in columns]
    lines = [
        f"# {title}: {report['model']}",
        "",
        f"Data: {report['dataset']} (split {report['split']}), {report['rows']} rows; chat template: "
        f"{report['chat_template']}; max length {report['max_length']} tokens "
        f"({report.get('truncated_completions', 0)} completions cut to it).",
        "",
        "| Model | Score | " + " | ".join(columns) + " |",
        "| --- | --- | " + " | ".join("---" for _ in columns) + " |",
        f"| {report['model']} | {_pct(report['score'])}{partial} | " + " | ".join(values) + " |",
        "",
    ]
    if report["partial"]:
        lines += [f"\\* partial: subsets missing from the data: {', '.join(report['missing_subsets'])}.", ""]
    lines += ["| subset | section | rows | accuracy |", "| --- | --- | --- | --- |"]
    section_of = {s: section for section, names in SECTIONS.items() for s in names}
    for name, entry in report["subsets"].items():
        section = section_of.get(name, "") if report["benchmark"] == "rewardbench" else ""
        if name in report["unknown_subsets"]:
            section = "(not in the benchmark)"
        lines.append(f"| {name} | {section} | {entry['total']} | {_pct(entry['accuracy'])} |")
    if report["skipped_rows"]:
        lines += ["", f"{len(report['skipped_rows'])} malformed rows skipped (listed in {BENCHMARK_JSON})."]
    return "\n".join(lines) + "\n"


def write_benchmark_report(report: dict, output_dir: str) -> None:
    """`benchmark_report.json` (fractions, unrounded; NaN as null) and `benchmark_report.md` in `output_dir`."""
    os.makedirs(output_dir, exist_ok=True)

    with open(os.path.join(output_dir, BENCHMARK_JSON), "w", encoding="utf-8") as f:
        json.dump(nan_to_none(report), f, indent=2)
    with open(os.path.join(output_dir, BENCHMARK_MD), "w", encoding="utf-8") as f:
        f.write(benchmark_markdown(report))
