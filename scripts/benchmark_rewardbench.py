"""RewardBench scoring speed: `reward-trainer evaluate --benchmark rewardbench` against the official runner's pipeline.

    OMP_NUM_THREADS=2 python scripts/benchmark_rewardbench.py --rows 400 --output rb.json

The data: a RewardBench-layout file (`prompt`, `chosen`, `rejected`, `subset`, `id`) built from the real preference
data in ../shared/data: the HH-RLHF harmless-base test pairs (multi-turn prompts as lists of messages) and the
PandaLM pairs with a strict non-tie majority of the annotators, shuffled under a seed, with the 23 official subset
names dealt out in turn so that every section is filled (the names say where a row is weighed, not what it is; the
`id` says where it comes from). The file (3,196 rows: 2,308 HH-RLHF, 888 PandaLM) is written when missing or with `--build`; a run times
its first `--rows` rows.

The model: SmolLM2-135M-Instruct (`builtin:SmolLM2-135M-Instruct`) with a seeded scalar head, fp32, one copy
shared by both sides. The peer is what the official `scripts/run_rm.py` of the `rewardbench` package does with
`--batch_size 8`: each conversation rendered with the chat template (`prepare_dialogue_from_tokenizer`), then
`pipeline("text-classification")` over the rejected texts and then the chosen ones, batch 8, `truncation=True,
padding=True, max_length=2048, function_to_apply="none"`, left truncation; a pair is correct when chosen > rejected.
Ours is `reward_trainer.leaderboard` as the command runs it: read the file, render, `RewardScorer`, the arithmetic.
Both sides' rewards are compared (max |diff|) and both sides' section scores printed. Speedups are ratios of CPU
time of this process (robust to other jobs on a shared machine), with wall-clock ratios beside them. Each side's
tokens through the model's input embeddings (padding included) are counted; their ratio, the token bound, is what
removing padding and encoding each prompt once can gain on a CPU, where a forward costs about the same per token.
It prints the machine first (`hardware.machine_line`) and stores it in the JSON, with ours' MFU: 2 x non-embedding
parameters x the tokens ours runs (padding included) per second, over the fp32 matmul FLOP/s measured on the model's
device in the same run (`hardware.matmul_peak`).
"""

import argparse
import gzip
import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch
from benchmark_scoring import TokenCounter, timed  # this folder is on sys.path when a script runs
from benchmark_training import non_embedding_params
from transformers import pipeline

from reward_trainer import hardware
from reward_trainer.chat import hh_messages, split_implicit_prompt, writes_human_turn
from reward_trainer.config import EvaluateArguments, ModelArguments
from reward_trainer.leaderboard import load_benchmark_scorer, read_benchmark_rows, score_rows
from reward_trainer.loading import load_reward_model
from reward_trainer.rewardbench import EXAMPLE_COUNTS, SECTIONS, pair_results, rewardbench_summary

SHARED_DATA = Path(
    os.environ.get("REWARD_TRAINER_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def build_rows(shared: Path, seed: int = 0) -> list[dict]:
    rows = []
    with gzip.open(shared / "hh-rlhf" / "harmless-base" / "test.jsonl.gz", "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            pair = json.loads(line)
            prompt, chosen, rejected = split_implicit_prompt(pair["chosen"], pair["rejected"])
            messages = hh_messages(prompt) or []
            alternating = all(m["role"] == ("user", "assistant")[k % 2] for k, m in enumerate(messages))
            if not alternating or len(messages) % 2 == 0 or writes_human_turn(chosen) or writes_human_turn(rejected):
                continue  # the few pairs that differ before their last turn, or whose turns do not alternate
            if chosen.strip() == rejected.strip():
                continue
            rows.append({"prompt": messages, "chosen": chosen.strip(), "rejected": rejected.strip(), "id": f"hh-{i}"})
    with open(shared / "pandalm" / "testset-v1.json", encoding="utf-8") as f:
        for i, item in enumerate(json.load(f)):
            votes = [str(item[f"annotator{k}"]) for k in (1, 2, 3)]
            best = max(set(votes), key=votes.count)
            responses = (item["response1"], item["response2"])
            if best == "0" or votes.count(best) < 2 or not all(isinstance(r, str) for r in responses):
                continue  # ties, no majority, and the few responses stored as JSON `true`
            if responses[0] == responses[1]:
                continue
            prompt = item["instruction"] + ("\n\n" + item["input"] if item["input"] else "")
            chosen, rejected = responses[:: 1 if best == "1" else -1]
            rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "id": f"pandalm-{i}"})
    random.Random(seed).shuffle(rows)
    names = list(EXAMPLE_COUNTS)
    return [{**row, "subset": names[i % len(names)]} for i, row in enumerate(rows)]


def official_sections(accuracy: dict[str, float]) -> dict[str, float]:
    """rewardbench/utils.py `calculate_scores_per_section`, as the official runner calls it (the peer's arithmetic)."""
    out = {}
    for section, tests in SECTIONS.items():
        total, count = 0.0, 0
        for test in tests:
            if test in accuracy:
                total += accuracy[test] * EXAMPLE_COUNTS[test]
                count += EXAMPLE_COUNTS[test]
        out[section] = total / count if count > 0 else 0
    return out


def official_pipeline(scorer, rows, batch_size: int, max_length: int) -> tuple[list[float], list[float], dict]:
    """scripts/run_rm.py with `--batch_size 8`: render, pipeline over rejected then chosen, strict comparison."""
    tokenizer = scorer.tokenizer
    tokenizer.truncation_side = "left"
    texts = {"chosen": [], "rejected": []}
    for prompt, (chosen, rejected) in zip(rows.prompts, rows.completions):
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        for key, response in (("chosen", chosen), ("rejected", rejected)):
            conversation = messages + [{"role": "assistant", "content": response}]
            texts[key].append(tokenizer.apply_chat_template(conversation, tokenize=False))
    pipe = pipeline("text-classification", model=scorer.model, tokenizer=tokenizer, device=scorer.model.device)
    kwargs = {
        "batch_size": batch_size,
        "truncation": True,
        "padding": True,
        "max_length": max_length,
        "function_to_apply": "none",
        "return_token_type_ids": False,
    }
    with torch.no_grad():
        rejected = [r["score"] for r in pipe(texts["rejected"], **kwargs)]
        chosen = [r["score"] for r in pipe(texts["chosen"], **kwargs)]
    results = [1 if c > r else 0 for c, r in zip(chosen, rejected)]
    accuracy = {}
    for subset in np.unique(rows.subsets):
        picked = [res for res, s in zip(results, rows.subsets) if s == subset]
        accuracy[str(subset)] = sum(picked) / len(picked)
    sections = official_sections(accuracy)
    tokens = [
        len(ids) for key in texts for ids in tokenizer(texts[key], truncation=True, max_length=max_length)["input_ids"]
    ]
    summary = {"subsets": accuracy, "sections": sections, "score": sum(sections.values()) / 4}
    return chosen, rejected, summary | {"mean_tokens": float(np.mean(tokens))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="outputs/rewardbench-layout.jsonl", help="The RewardBench-layout file.")
    parser.add_argument("--build", action="store_true", help="(Re)write --data from ../shared/data first.")
    parser.add_argument("--rows", type=int, default=400, help="Time the first N rows of the file.")
    parser.add_argument("--model", default="builtin:SmolLM2-135M-Instruct")
    parser.add_argument("--max_batch_tokens", type=int, default=EvaluateArguments.max_batch_tokens)
    parser.add_argument(
        "--also_max_batch_tokens", type=int, nargs="*", default=[], help="Time ours again with these budgets."
    )
    parser.add_argument("--pipeline_batch_size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = hardware.machine_line()
    print(machine, flush=True)

    data = Path(args.data)
    if args.build or not data.exists():
        rows = build_rows(SHARED_DATA)
        data.parent.mkdir(parents=True, exist_ok=True)
        data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {data}")
    with tempfile.TemporaryDirectory() as tmp:
        sample = Path(tmp) / "rows.jsonl"
        with open(data, encoding="utf-8") as f:
            sample.write_text("".join(line for _, line in zip(range(args.rows), f)), encoding="utf-8")

        torch.manual_seed(0)  # the scalar head
        model, tokenizer = load_reward_model(ModelArguments(model_name_or_path=args.model))
        model.save_pretrained(tmp + "/model")
        tokenizer.save_pretrained(tmp + "/model")
        del model
        eval_args = EvaluateArguments(
            model_name_or_path=tmp + "/model", benchmark="rewardbench", max_batch_tokens=args.max_batch_tokens
        )
        scorer = load_benchmark_scorer(eval_args)  # one model for both sides
        max_length = scorer.max_length
        peak = hardware.matmul_peak(torch.float32, scorer.model.device)[0]
        print(f"fp32 matmul on {scorer.model.device}: {peak / 1e9:.1f} GFLOP/s", flush=True)

        def ours():
            rows, _ = read_benchmark_rows("rewardbench", str(sample), "filtered")
            scores = score_rows(scorer, rows)
            return rows, scores, rewardbench_summary(pair_results(*zip(*scores)), rows.subsets)

        scorer.score_texts(["warm-up", "a warm-up text"], groups=[0, 0])  # first-call costs, shared by both sides
        counter = TokenCounter(scorer.model)  # the work each side does, padding included
        (rows, scores, summary), ours_wall, ours_cpu = timed(ours)
        ours_tokens = counter.tokens
        print(f"ours: {ours_wall:.1f}s wall, {ours_cpu:.1f}s CPU, {ours_tokens} tokens")
        other_budgets = {}
        for budget in args.also_max_batch_tokens:
            scorer.max_batch_tokens, default_budget = budget, scorer.max_batch_tokens
            counter.tokens = 0
            (_, other_scores, _), wall, cpu = timed(ours)
            scorer.max_batch_tokens = default_budget
            same = float(np.abs(np.asarray(other_scores) - np.asarray(scores)).max())
            other_budgets[budget] = {
                "wall_seconds": wall, "cpu_seconds": cpu, "tokens": counter.tokens, "max_abs_reward_diff": same
            }  # fmt: skip
            print(f"ours, max_batch_tokens {budget}: {wall:.1f}s wall, {cpu:.1f}s CPU, {counter.tokens} tokens, "
                  f"max |diff| {same:.1e}")  # fmt: skip
        counter.tokens = 0
        (chosen, rejected, peer), peer_wall, peer_cpu = timed(
            lambda: official_pipeline(scorer, rows, args.pipeline_batch_size, max_length)
        )
        peer_tokens = counter.tokens
        print(
            f"official pipeline (batch {args.pipeline_batch_size}): {peer_wall:.1f}s wall, {peer_cpu:.1f}s CPU, "
            f"{peer_tokens} tokens"
        )

    ours_flat = np.asarray(scores, dtype=np.float64)
    diff = float(np.abs(ours_flat - np.stack([chosen, rejected], axis=1)).max())
    result = {
        "machine": machine,
        "device": str(scorer.model.device),
        "rows": len(rows.prompts),
        "texts": 2 * len(rows.prompts),
        "speedup_cpu": peer_cpu / ours_cpu,
        "speedup_wall": peer_wall / ours_wall,
        "cpu_seconds": {"ours": ours_cpu, "official_pipeline": peer_cpu},
        "wall_seconds": {"ours": ours_wall, "official_pipeline": peer_wall},
        "tokens": {"ours": ours_tokens, "official_pipeline": peer_tokens},
        "token_bound": peer_tokens / ours_tokens,
        "fraction_of_token_bound": peer_cpu / ours_cpu / (peer_tokens / ours_tokens),
        "max_abs_reward_diff": diff,
        "ours_other_max_batch_tokens": other_budgets,
        "score": {"ours": summary["score"], "official_pipeline": peer["score"]},
        "sections": {s: {"ours": summary["sections"][s]["score"], "official": peer["sections"][s]} for s in SECTIONS},
        "pipeline_batch_size": args.pipeline_batch_size,
        "max_batch_tokens": scorer.max_batch_tokens,
        "max_length": max_length,
        "model": args.model + " + seeded scalar head (fp32)",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "matmul_flops_fp32": peak,
        "mfu_ours": 2 * non_embedding_params(scorer.model) * ours_tokens / ours_wall / peak,
        "mean_tokens_per_text": peer["mean_tokens"],
    }
    print(json.dumps(result, indent=2))
    print(
        f"speedup vs the official pipeline: {result['speedup_cpu']:.2f}x CPU time, {result['speedup_wall']:.2f}x wall; "
        f"token bound {result['token_bound']:.2f}x ({result['fraction_of_token_bound']:.2f} of it); ours' MFU "
        f"{result['mfu_ours']:.1%}"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
