"""The `evaluate` command: read the data as training does, score it, write the report.

reward-trainer evaluate --model_name_or_path outputs/quickstart --dataset_name pairs.jsonl --output_dir OUT
"""

from collections.abc import Sequence

import numpy as np

from .config import DataArguments, EvaluateArguments
from .data import read_rows, subset_names
from .errors import DataError, UsageError
from .leaderboard import evaluate_benchmark
from .metrics import pair_correctness, per_subset_accuracy, preference_metrics, ranking_correlation
from .report import pyplot, write_eval_report
from .scorer import RewardScorer

DEFAULT_MAX_LENGTH = 512  # tokens of prompt + response, unless `--max_length` or the model's contract says otherwise


def read_texts(
    names: Sequence[str], args: EvaluateArguments, tokenizer=None, implicit_prompt_rendering: str = "auto"
) -> tuple[dict[str, list], list[dict], dict]:
    """The pairs and rankings of each source, read, normalized and checked by `data.read_rows` as for training.

    Returns pair columns `prompt`, `chosen`, `rejected`, `tie` and `subset`; rankings (rows of more than two
    responses) as `{"prompt", "responses", "scores"}`; and the row accounting (`input_rows`, `skipped`,
    `skipped_rows`, `empty_responses`, and `single_responses`: rows of prompts with one response, the `ratings`
    format, which have nothing to be compared with and are not scored). The whole `args.split` of each source is
    read (its first `args.max_samples` rows, if set); the subset of a row is its `source`/`subset` field, else, with
    several sources, its source. Implicit-prompt (HH) text is rendered as `implicit_prompt_rendering` says (see
    `DataArguments`); a `ratings` file's responses are ordered by their mean rating over `args.attributes`, as
    training orders them.
    """
    pairs = {"prompt": [], "chosen": [], "rejected": [], "tie": [], "subset": []}
    rankings = []
    accounting = {"input_rows": 0, "skipped": 0, "skipped_rows": [], "empty_responses": 0, "single_responses": 0}
    subsets = subset_names(list(names))
    for name in names:
        data_args = DataArguments(
            dataset_name=name,
            train_split=args.split or "test",
            eval_split="",
            on_bad_row=args.on_bad_row,
            implicit_prompt_rendering=implicit_prompt_rendering,
            attributes=args.attributes,
        )
        _, splits = read_rows(name, data_args, tokenizer, args.seed, accounting, subset=subsets[name])
        rows = splits["train"]
        if args.max_samples:
            rows = rows.select(range(min(len(rows), args.max_samples)))
        for row in rows.select_columns(["prompt", "responses", "scores", "subset"]):
            responses, scores = row["responses"], row["scores"]
            if len(responses) < 2:  # a prompt with one rated response (the ratings format): nothing to compare
                accounting["single_responses"] += 1
                continue
            if len(responses) > 2:
                rankings.append({"prompt": row["prompt"], "responses": responses, "scores": scores})
                continue
            better = 0 if scores[0] >= scores[1] else 1
            pairs["prompt"].append(row["prompt"])
            pairs["chosen"].append(responses[better])
            pairs["rejected"].append(responses[1 - better])
            pairs["tie"].append(float(scores[0] == scores[1]))
            pairs["subset"].append(row["subset"])
    return pairs, rankings, accounting


def evaluate_model(args: EvaluateArguments) -> dict:
    """The `evaluate` command: scores every pair (and ranking) of `args.dataset_name` and writes the report, or,
    with `args.benchmark`, scores that benchmark (`reward_trainer.leaderboard`)."""
    if args.benchmark:
        return evaluate_benchmark(args)
    names = args.dataset_name
    if not names:
        raise UsageError("evaluate needs --dataset_name (or --benchmark rewardbench|rewardbench2)")
    pyplot()  # fail before scoring, not after, when matplotlib is missing
    scorer = RewardScorer.from_pretrained(
        args.model_name_or_path,
        device=args.device,
        max_batch_tokens=args.max_batch_tokens,
        max_length=args.max_length,
        default_max_length=DEFAULT_MAX_LENGTH,
    )
    # HH text rendered as the model was trained (its contract says how; older config.json files say it at the top
    # level), else by the tokenizer (`auto`).
    config = scorer.model.config
    rendering = (
        scorer.contract.implicit_prompt_rendering
        if scorer.contract
        else getattr(config, "implicit_prompt_rendering", "auto")
    )
    pairs, rankings, accounting = read_texts(names, args, scorer.tokenizer, rendering)
    if not pairs["chosen"] and not rankings:
        single = f" (single responses: {accounting['single_responses']})" if accounting["single_responses"] else ""
        raise DataError(f"{', '.join(names)}: no pairs or rankings to evaluate{single}")

    n = len(pairs["chosen"])
    texts = [p + c for p, c in zip(pairs["prompt"], pairs["chosen"])] + [
        p + r for p, r in zip(pairs["prompt"], pairs["rejected"])
    ]
    prompts = pairs["prompt"] * 2
    for ranking in rankings:
        texts += [ranking["prompt"] + response for response in ranking["responses"]]
        prompts += [ranking["prompt"]] * len(ranking["responses"])
    ids, cut = scorer.tokenize(texts, prompts)  # cut as training cut them
    rewards = np.asarray(scorer.score_ids(ids, progress=not args.disable_tqdm))
    chosen, rejected = rewards[:n], rewards[n : 2 * n]
    human_tie = np.asarray(pairs["tie"])

    report = {"model": args.model_name_or_path, "dataset": ", ".join(names), **accounting}
    report |= {
        "max_length": scorer.max_length,
        "truncated_pairs": sum(a or b for a, b in zip(cut[:n], cut[n : 2 * n])),
        "truncated_texts": sum(cut),
    }
    if n:
        report |= preference_metrics(
            chosen,
            rejected,
            chosen_length=[len(c) for c in pairs["chosen"]],
            rejected_length=[len(r) for r in pairs["rejected"]],
            human_tie=human_tie,
            seed=args.seed,
        )
        correct = pair_correctness(chosen, rejected, human_tie)
        if any(pairs["subset"]):
            report["per_subset"] = per_subset_accuracy(correct, [s or "(none)" for s in pairs["subset"]], args.seed)
    if rankings:
        offsets = np.cumsum([2 * n] + [len(r["responses"]) for r in rankings])
        model_scores = [rewards[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        report |= ranking_correlation(model_scores, [np.asarray(r["scores"], dtype=float) for r in rankings])
        if not n:  # a ranked-only file: its pair metrics are those of every pair within each ranking
            chosen, rejected = _ranked_pairs(model_scores, [r["scores"] for r in rankings])
            report |= preference_metrics(chosen, rejected, seed=args.seed)
            human_tie = None
    write_eval_report(report, chosen, rejected, args.output_dir, human_tie)
    return report


def _ranked_pairs(model_scores, human_scores) -> tuple[np.ndarray, np.ndarray]:
    """(reward of the better, reward of the worse) for every pair of differently scored responses of a prompt."""
    better, worse = [], []
    for rewards, scores in zip(model_scores, human_scores):
        for a in range(len(scores)):
            for b in range(len(scores)):
                if scores[a] > scores[b]:
                    better.append(rewards[a])
                    worse.append(rewards[b])
    return np.asarray(better), np.asarray(worse)
