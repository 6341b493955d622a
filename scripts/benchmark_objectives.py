"""The objectives against plain Bradley-Terry, on the same data, steps and seed (MiniLM backbone by default).

    python scripts/benchmark_objectives.py ties --shared_data ../shared/data --max_steps 150
    python scripts/benchmark_objectives.py rankings --shared_data ../shared/data --max_steps 150
    python scripts/benchmark_objectives.py rankings --data_only --output_dir outputs/hh-ranked  # the ranked set only
    python scripts/benchmark_objectives.py length --shared_data ../shared/data --max_steps 150
    python scripts/benchmark_objectives.py confounded --shared_data ../shared/data --max_steps 150
    python scripts/benchmark_objectives.py synthetic --max_steps 40
    python scripts/benchmark_objectives.py confounded --model builtin:SmolLM2-135M-Instruct --max_length 512 \
        --learning_rate 3e-5 --bf16 --max_steps 115  # the SmolLM2 recipe's settings

- ties: PandaLM (three annotators, "0" = tie), 20% of prompts held out. `bradley_terry` (ties left out of the loss)
  against `bt_ties` (Rao-Kupper, theta learned): accuracy on the held-out non-tie pairs, and the held-out tie
  log-likelihood. Bradley-Terry has no tie probability: its theta is fitted afterwards, by maximum likelihood on
  its own rewards of the training pairs (ties included), which favours it if anything.
- rankings: a ranked set built from HH-RLHF harmless-base: per prompt, chosen > rejected > the chosen response of
  another conversation (off topic). `plackett_luce` against the pairwise expansion (`bradley_terry` on the 3 pairs,
  each weighing 1/3), the same rankings per step (8 rankings = 24 pairs): pair accuracy, accuracy on the original
  chosen/rejected pair, Kendall's tau.
- length: HH-RLHF harmless-base, 10% of prompts held out: `--length_debias` against plain Bradley-Terry:
  reward-length Spearman, accuracy, accuracy on pairs whose chosen response is the shorter.
- confounded: HH-RLHF rows where the chosen response is the longer for training, and held-out prompts balanced
  (as many chosen-shorter as chosen-longer pairs) for testing, so length predicts the training preference
  perfectly and nothing in the test. `--confound_fraction 0.8` adds training-side chosen-shorter rows until the
  chosen is the longer in 80% of training pairs: length still predicts most training preferences, but no longer
  all of them, so the data says something of quality apart from length.
- synthetic: a length-confounded task on the built-in tiny GPT-2 (seconds, no pretrained backbone): the chosen
  response starts with " yes", the rejected with " no", then 0-6 filler words; in training the chosen response
  is always the longer, in testing lengths are drawn independently. `--length_debias` against Bradley-Terry.
Each prints one JSON line per run and the load average (`os.getloadavg`) at the start and end; the first line holds
the machine (`hardware.machine_line`).
"""

import argparse
import gzip
import json
import os
import random
import sys
import tempfile
import time

HH = "hh-rlhf/harmless-base/test.jsonl.gz"
PANDALM = "pandalm/testset-v1.json"
# The backbone and its settings, for every run but the synthetic one (set from the command line).
BACKBONE = {
    "model": "builtin:all-MiniLM-L6-v2",
    "max_length": 128,
    "learning_rate": 5e-5,
    "bf16": False,
}


def hh_rows(shared: str) -> list[dict]:
    from reward_trainer.chat import split_implicit_prompt

    with gzip.open(os.path.join(shared, HH), "rt", encoding="utf-8") as f:
        split = [split_implicit_prompt(row["chosen"], row["rejected"]) for row in map(json.loads, f)]
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in split if c.strip() and r.strip()]


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def run(name: str, work: str, data: dict, config: dict, steps: int, batch: int):
    """Trains `BACKBONE` with `reward_trainer.train.train`; returns (metrics, output_dir)."""
    from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
    from reward_trainer.train import train

    out = os.path.join(work, name)
    args = RewardConfig(
        output_dir=out, max_steps=steps, per_device_train_batch_size=batch, per_device_eval_batch_size=64,
        learning_rate=BACKBONE["learning_rate"], bf16=BACKBONE["bf16"], lr_scheduler_type="linear", warmup_steps=10,
        weight_decay=0.0, logging_steps=50,
        eval_strategy="no", save_strategy="no", seed=42, disable_tqdm=True, use_cpu=True, **config,
    )  # fmt: skip
    start = time.perf_counter()
    data = {**data, "max_length": BACKBONE["max_length"]}
    metrics = train(ModelArguments(model_name_or_path=BACKBONE["model"]), DataArguments(**data), args)
    metrics["train_seconds"] = round(time.perf_counter() - start, 1)
    return metrics, out


def report(name: str, metrics: dict, keys: list[str]) -> None:
    print(json.dumps({"run": name} | {k: round(metrics[k], 4) for k in keys if k in metrics}), flush=True)


def ties(shared: str, work: str, steps: int) -> None:
    import numpy as np
    from scipy.optimize import minimize_scalar

    from reward_trainer import RewardConfig, RewardTrainer
    from reward_trainer.config import DataArguments, ModelArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.loading import load_reward_model
    from reward_trainer.metrics import pair_correctness, rao_kupper_log_likelihood

    data = dict(
        dataset_name=os.path.join(shared, PANDALM), on_bad_row="skip", prompt_columns=["instruction", "input"],
        response_columns=["response1", "response2"], label_columns=["annotator1", "annotator2", "annotator3"],
        label_values='{"0": "tie", "1": 0, "2": 1}', eval_fraction=0.2,
    )  # fmt: skip
    keys = ["eval_accuracy_non_tie", "eval_tie_log_likelihood", "eval_win_log_likelihood", "eval_tie_theta",
            "eval_num_pairs", "eval_human_tie_rate", "train_seconds"]  # fmt: skip
    metrics, out = run("bt_ties", work, data, {"loss": "bt_ties"}, steps, 8)
    report("bt_ties", metrics, keys)
    metrics, out = run("bradley_terry", work, data, {}, steps, 8)
    # Bradley-Terry's rewards of the training pairs, ties included, fit its theta; then the held-out likelihoods.
    model, tokenizer = load_reward_model(ModelArguments(model_name_or_path=out))
    pairs = load_preference_data(DataArguments(**data), tokenizer, seed=42, ties_in_loss=True)
    trainer = RewardTrainer(model=model, args=RewardConfig(output_dir=out, per_device_eval_batch_size=64,
                            use_cpu=True, disable_tqdm=True, eval_strategy="no"))  # fmt: skip
    train_pred, eval_pred = (trainer.predict(split) for split in (pairs.train, pairs.eval))

    def nll(alpha):
        columns, labels = train_pred.predictions, train_pred.label_ids
        return -sum(rao_kupper_log_likelihood(columns["chosen"], columns["rejected"], labels["tie"], alpha).values())

    alpha = minimize_scalar(nll, bounds=(1e-4, 10), method="bounded").x
    chosen, rejected = eval_pred.predictions["chosen"], eval_pred.predictions["rejected"]
    tie = eval_pred.label_ids["tie"]
    metrics |= {f"eval_{k}": v for k, v in rao_kupper_log_likelihood(chosen, rejected, tie, alpha).items()}
    metrics["eval_tie_theta"] = float(np.exp(alpha))
    metrics["eval_accuracy_non_tie"] = float(pair_correctness(chosen, rejected)[tie <= 0].mean())
    report("bradley_terry (theta fitted on its training rewards)", metrics, keys)


def rankings(shared: str, work: str, steps: int, data_only: bool = False) -> None:
    rows = hh_rows(shared)
    rng = random.Random(0)
    ranked = []
    for i, row in enumerate(rows):
        other = rows[(i + rng.randrange(1, len(rows))) % len(rows)]["chosen"]
        if other in (row["chosen"], row["rejected"]):
            continue
        ranked.append({"prompt": row["prompt"], "responses": [row["chosen"], row["rejected"], other],
                       "scores": [2.0, 1.0, 0.0]})  # fmt: skip
    data = dict(dataset_name=write_jsonl(os.path.join(work, "ranked.jsonl"), ranked), eval_fraction=0.1)
    keys = ["eval_accuracy", "eval_accuracy_chosen_vs_rejected", "eval_kendall_tau", "eval_spearman_rho",
            "eval_ranked_prompts", "train_seconds"]  # fmt: skip
    for name, config, batch in (("plackett_luce", {"loss": "plackett_luce"}, 8), ("pairwise_expansion", {}, 24)):
        metrics, out = run(name, work, data, config, steps, batch)
        metrics["eval_accuracy_chosen_vs_rejected"] = original_pair_accuracy(out, data)
        report(f"{name} (batch {batch} {'rankings' if batch == 8 else 'pairs'})", metrics, keys)


def original_pair_accuracy(out: str, data: dict) -> float:
    """Accuracy of a saved model on the held-out (chosen, rejected) pairs of the rankings: places 0 and 1."""
    from reward_trainer import RewardConfig, RewardTrainer
    from reward_trainer.config import DataArguments, ModelArguments
    from reward_trainer.data import load_preference_data
    from reward_trainer.loading import load_reward_model
    from reward_trainer.metrics import pair_correctness

    model, tokenizer = load_reward_model(ModelArguments(model_name_or_path=out))
    pairs = load_preference_data(DataArguments(**data), tokenizer, seed=42)
    trainer = RewardTrainer(model=model, args=RewardConfig(output_dir=out, per_device_eval_batch_size=64,
                            use_cpu=True, disable_tqdm=True, eval_strategy="no"))  # fmt: skip
    pred = trainer.predict(pairs.eval)
    first = (pred.label_ids["chosen_response"] == 0) & (pred.label_ids["rejected_response"] == 1)
    return float(pair_correctness(pred.predictions["chosen"][first], pred.predictions["rejected"][first]).mean())


LENGTH_KEYS = ["eval_accuracy", "eval_reward_length_spearman", "eval_accuracy_chosen_shorter",
               "eval_chosen_shorter_pairs", "eval_longer_wins_accuracy", "eval_num_pairs", "train_seconds"]  # fmt: skip


def debias_runs(weights: list[float], baseline: bool = True, projection: bool = False) -> list[tuple[str, dict]]:
    """One `--length_debias` run per correlation weight, Bradley-Terry with `--length_projection` if
    `projection`, then plain Bradley-Terry if `baseline`."""
    runs = [(f"length_debias (correlation weight {w})", {"length_debias": True, "length_correlation_weight": w})
            for w in weights]  # fmt: skip
    if projection:
        runs.append(("bradley_terry + length_projection", {"length_projection": True}))
    return [*runs, ("bradley_terry", {})] if baseline else runs


def length(shared: str, work: str, steps: int, runs: list[tuple[str, dict]]) -> None:
    data = dict(dataset_name=os.path.join(shared, HH), eval_fraction=0.1, on_bad_row="skip")
    for i, (name, config) in enumerate(runs):
        metrics, _ = run(f"length-{i}", work, data, config, steps, 8)
        report(name, metrics, LENGTH_KEYS)


def confounded(shared: str, work: str, steps: int, runs: list[tuple[str, dict]], fraction: float) -> None:
    from datasets import Dataset, DatasetDict

    from reward_trainer.data.formats import prompt_bucket

    rows = hh_rows(shared)
    held = [prompt_bucket(r["prompt"], 42) < 0.1 for r in rows]
    train = [r for r, h in zip(rows, held) if not h and len(r["chosen"]) > len(r["rejected"])]
    if fraction < 1:  # add chosen-shorter pairs until the chosen is the longer in `fraction` of them
        other = [r for r, h in zip(rows, held) if not h and len(r["chosen"]) < len(r["rejected"])]
        train += other[: round(len(train) * (1 - fraction) / fraction)]
    test = [r for r, h in zip(rows, held) if h and len(r["chosen"]) != len(r["rejected"])]
    shorter = [r for r in test if len(r["chosen"]) < len(r["rejected"])]
    longer = [r for r in test if len(r["chosen"]) > len(r["rejected"])]
    n = min(len(shorter), len(longer))
    test = shorter[:n] + longer[:n]
    path = os.path.join(work, "confounded")
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(path)
    longer_share = sum(len(r["chosen"]) > len(r["rejected"]) for r in train) / len(train)
    print(json.dumps({"train_pairs": len(train), "chosen_longer": longer_share, "test_pairs_balanced": len(test)}))
    data = dict(dataset_name=path)
    for i, (name, config) in enumerate(runs):
        metrics, _ = run(f"confounded-{i}", work, data, config, steps, 8)
        report(name, metrics, LENGTH_KEYS)


def length_confounded_rows(n: int, confounded: bool, rng: random.Random) -> list[dict]:
    """Pairs whose preference is the first word (" yes" beats " no"); with `confounded`, the chosen is also longer."""
    words = "red blue green gold grey pink cat dog owl fox bee ant".split()
    rows = []
    for i in range(n):
        prompt = " ".join(rng.choices(words, k=3)) + f" | q{i}?\nanswer:"
        good, bad = rng.randint(0, 6), rng.randint(0, 6)
        if confounded:
            good, bad = max(good, bad) + 1, min(good, bad)
        rows.append({"prompt": prompt, "chosen": " yes " + " ".join(rng.choices(words, k=good)),
                     "rejected": " no " + " ".join(rng.choices(words, k=bad))})  # fmt: skip
    return rows


def synthetic(work: str, steps: int, weights: list[float]) -> None:
    from datasets import Dataset, DatasetDict

    from reward_trainer.config import DataArguments, ModelArguments, RewardConfig
    from reward_trainer.train import train

    rng = random.Random(0)
    path = os.path.join(work, "synthetic")
    train_rows, test_rows = length_confounded_rows(400, True, rng), length_confounded_rows(100, False, rng)
    DatasetDict({"train": Dataset.from_list(train_rows), "test": Dataset.from_list(test_rows)}).save_to_disk(path)
    for i, (name, config) in enumerate(debias_runs(weights)):
        args = RewardConfig(output_dir=os.path.join(work, f"synthetic-{i}"), max_steps=steps, per_device_train_batch_size=16,
                            learning_rate=1e-3, use_cpu=True, disable_tqdm=True, seed=0, eval_strategy="no",
                            logging_steps=100, **config)  # fmt: skip
        metrics = train(ModelArguments(), DataArguments(dataset_name=path, max_length=64), args)
        report(name, metrics, LENGTH_KEYS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["ties", "rankings", "length", "confounded", "synthetic"])
    parser.add_argument("--shared_data", default="../shared/data")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument(
        "--length_correlation_weight",
        type=float,
        nargs="*",
        default=[0.1],
        help="One --length_debias run each (none if given no value).",
    )
    parser.add_argument(
        "--length_projection",
        action="store_true",
        help="length, confounded: also Bradley-Terry with --length_projection.",
    )
    parser.add_argument(
        "--confound_fraction",
        type=float,
        default=1.0,
        help="confounded: the share of training pairs whose chosen response is the longer (1: all of them).",
    )
    parser.add_argument("--data_only", action="store_true", help="rankings: write the ranked set and stop.")
    parser.add_argument("--output_dir", default=None, help="Where the runs go (default: a temporary folder).")
    parser.add_argument("--model", default=BACKBONE["model"], help="The backbone (not for `synthetic`).")
    parser.add_argument("--max_length", type=int, default=BACKBONE["max_length"])
    parser.add_argument("--learning_rate", type=float, default=BACKBONE["learning_rate"])
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (fp32 weights), as the SmolLM2 recipe.")
    parser.add_argument(
        "--no_baseline",
        action="store_true",
        help="length, confounded: the debiased runs only (a baseline run before).",
    )
    args = parser.parse_args()
    if not 0 < args.confound_fraction <= 1:
        parser.error(f"--confound_fraction must be in (0, 1], got {args.confound_fraction}")
    BACKBONE.update(model=args.model, max_length=args.max_length, learning_rate=args.learning_rate, bf16=args.bf16)
    if not os.path.isdir(args.shared_data):
        sys.exit(f"no shared data at {args.shared_data}")
    from reward_trainer.hardware import machine_line

    print(
        json.dumps(
            {
                "machine": machine_line(),
                "task": args.task,
                "max_steps": args.max_steps,
                **BACKBONE,
                "no_baseline": args.no_baseline,
                "loadavg_start": os.getloadavg(),
            }
        )
    )
    work = args.output_dir or tempfile.mkdtemp(prefix=f"bench-{args.task}-")
    os.makedirs(work, exist_ok=True)
    if args.task == "ties":
        ties(args.shared_data, work, args.max_steps)
    elif args.task == "rankings":
        rankings(args.shared_data, work, args.max_steps, args.data_only)
    elif args.task in ("length", "confounded"):
        runs = debias_runs(args.length_correlation_weight, not args.no_baseline, args.length_projection)
        if args.task == "length":
            length(args.shared_data, work, args.max_steps, runs)
        else:
            confounded(args.shared_data, work, args.max_steps, runs, args.confound_fraction)
    else:
        synthetic(work, args.max_steps, args.length_correlation_weight)
    print(json.dumps({"loadavg_end": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
