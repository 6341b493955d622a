"""The evaluation-report benchmark: "longer wins" baselines on the real data, and the report of a MiniLM trained on HH harmless.

    python scripts/benchmark_eval_report.py --shared_data ../shared/data --output_dir outputs/bench_eval_report
    python scripts/benchmark_eval_report.py --model outputs/hh-rlhf-minilm   # a model the recipe already trained

1. HH-RLHF harmless-base: the prompts `recipes/hh_rlhf_minilm.yaml` holds out (the training split's own rule,
   `data.prompt_bucket` under the seed), written as prompt/chosen/rejected JSON Lines; PandaLM: the pairs with a
   non-tie majority of the three annotators.
2. Prints the "longer wins" baseline (response length in characters, equal lengths 0.5) of each dataset.
3. Trains `all-MiniLM-L6-v2` with that recipe (unless `--model` names a model it trained) and runs
   `reward-trainer evaluate` on the held-out prompts and the PandaLM pairs (one subset each, out of domain
   for PandaLM); the report lands in OUTPUT_DIR/report.
It prints the machine first (`hardware.machine_line`) and writes it, with the baselines, to OUTPUT_DIR/benchmark.json.
"""

import argparse
import gzip
import json
import os
import sys
import time


def write_jsonl(path: str, rows: list[dict]) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def hh_split(path: str, eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Training and held-out rows, split by prompt exactly as `reward-trainer train` splits them."""
    from reward_trainer.chat import split_implicit_prompt
    from reward_trainer.data.formats import prompt_bucket

    with gzip.open(path, "rt", encoding="utf-8") as f:  # every row, the 4 with an empty final response included
        split = [split_implicit_prompt(row["chosen"], row["rejected"]) for row in map(json.loads, f)]
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in split]
    held_out = [prompt_bucket(row["prompt"], seed) < eval_fraction for row in rows]
    return [r for r, h in zip(rows, held_out) if not h], [r for r, h in zip(rows, held_out) if h]


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
    from reward_trainer.metrics import longer_wins_accuracy

    return longer_wins_accuracy([len(r["chosen"]) for r in rows], [len(r["rejected"]) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared_data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--output_dir", default="outputs/bench_eval_report")
    parser.add_argument("--model", help="A model trained by recipes/hh_rlhf_minilm.yaml (default: train one now).")
    parser.add_argument("--eval_fraction", type=float, default=0.1, help="As in the recipe.")
    parser.add_argument("--max_length", type=int, default=256, help="As in the recipe.")
    parser.add_argument("--seed", type=int, default=42, help="As in the recipe (it fixes the held-out prompts).")
    parser.add_argument("--skip_training", action="store_true", help="Only the length baselines.")
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    from reward_trainer.hardware import machine_line

    machine = machine_line()
    print(machine, flush=True)

    hh_train, hh_test = hh_split(
        os.path.join(args.shared_data, "hh-rlhf", "harmless-base", "test.jsonl.gz"), args.eval_fraction, args.seed
    )
    pandalm = pandalm_majority_pairs(os.path.join(args.shared_data, "pandalm", "testset-v1.json"))
    test_path = write_jsonl(os.path.join(args.output_dir, "hh_harmless_heldout.jsonl"), hh_test)
    pandalm_path = write_jsonl(os.path.join(args.output_dir, "pandalm_majority.jsonl"), pandalm)
    print("| dataset | pairs | longer-wins accuracy |\n| --- | --- | --- |")
    baselines = {}
    for name, rows in [
        ("HH-RLHF harmless-base (all)", hh_train + hh_test),
        ("HH-RLHF harmless-base (held-out prompts)", hh_test),
        ("PandaLM test set v1 (majority-vote pairs)", pandalm),
    ]:
        baselines[name] = {"pairs": len(rows), "longer_wins_accuracy": longer_wins(rows)}
        print(f"| {name} | {len(rows)} | {baselines[name]['longer_wins_accuracy']:.4f} |")
    with open(os.path.join(args.output_dir, "benchmark.json"), "w", encoding="utf-8") as f:
        json.dump({"machine": machine, "longer_wins_baselines": baselines}, f, indent=2)
    if args.skip_training:
        return

    from reward_trainer.cli import main as cli

    model_dir = args.model
    if model_dir is None:
        model_dir = os.path.join(args.output_dir, "minilm-hh")
        recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "hh_rlhf_minilm.yaml")
        data = os.path.join(args.shared_data, "hh-rlhf", "harmless-base", "test.jsonl.gz")
        start = time.perf_counter()
        argv = [
            "train",
            "--config",
            recipe,
            "--output_dir",
            model_dir,
            "--dataset_name",
            data,
            "--seed",
            str(args.seed),
        ]
        if cli(argv):
            sys.exit("training failed")
        print(f"trained {model_dir} in {time.perf_counter() - start:.0f} s")

    report_dir = os.path.join(args.output_dir, "report")
    argv = ["evaluate", "--model_name_or_path", model_dir, "--dataset_name", test_path, pandalm_path]
    argv += ["--output_dir", report_dir, "--on_bad_row", "skip"]  # HH: 4 rows with an empty final response
    start = time.perf_counter()
    status = cli(argv + ["--max_length", str(args.max_length), "--seed", str(args.seed)])
    print(f"evaluated {len(hh_test) + len(pandalm)} pairs in {time.perf_counter() - start:.0f} s")
    print(open(os.path.join(report_dir, "eval_report.md"), encoding="utf-8").read())
    sys.exit(status)


if __name__ == "__main__":
    main()
