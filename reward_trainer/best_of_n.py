"""Best-of-n with a real policy: does the reward model pick better answers, and where is it over-optimised?

    reward-trainer best-of-n --proxy_model outputs/proxy --gold_model outputs/gold \
        --dataset_name ../shared/data/hh-rlhf/harmless-base/test.jsonl.gz --num_prompts 32 --max_n 16

The policy samples `max_n` completions of each held-out prompt (batched `generate`, seeded, on `--device`: default
the device rule), both reward models score every sample once (`RewardScorer.score`, each prompt encoded once for
causal reward models; HH text rendered with a reward model's chat template when it was trained on that rendering),
and for n = 1, 2, 4, ..., max_n the expected proxy and gold reward of the proxy's pick among n samples is computed
over all n-subsets of the samples (`metrics.best_of_n_rewards`). Written to `output_dir`: `best_of_n.json` (the
curve, per n: KL, mean and standard error of both rewards, raw and in standard deviations of each model's
rewards over all samples, and gold's own best-of-n as the ceiling), `best_of_n.png`, and `samples.jsonl`.
"""

import json
import logging
import math
import os

import numpy as np
import torch
from tqdm.auto import tqdm

from .chat import (
    hh_messages,
    split_implicit_prompt,
)
from .config import BestOfNArguments
from .errors import DataError, UsageError
from .metrics import best_of_n_kl, best_of_n_rewards, spearman

logger = logging.getLogger(__name__)
RESULT_JSON, PLOT_PNG, SAMPLES_JSONL = "best_of_n.json", "best_of_n.png", "samples.jsonl"


def heldout_prompts(args: BestOfNArguments) -> list[str]:
    """The first `num_prompts` distinct prompts of the file that training held out (same hash, same seed)."""
    from datasets import load_dataset

    from .data.formats import prompt_bucket
    from .data.sources import read_error

    if not os.path.isfile(args.dataset_name):
        raise UsageError(f"prompt file {args.dataset_name!r} does not exist")
    try:
        rows = load_dataset("json", data_files=args.dataset_name, split="train")
    except Exception as err:  # datasets raises many types for unreadable files
        raise DataError(f"{args.dataset_name}: cannot read it as JSON rows ({read_error(err)})") from None
    if "prompt" not in rows.column_names and not {"chosen", "rejected"} <= set(rows.column_names):
        raise DataError(f"{args.dataset_name}: needs a `prompt` column or `chosen` and `rejected` columns")
    prompts: dict[str, None] = {}
    for i, row in enumerate(rows):
        if "prompt" in row:
            prompt = row["prompt"]
        elif isinstance(row["chosen"], str) and isinstance(row["rejected"], str):
            prompt = split_implicit_prompt(row["chosen"], row["rejected"])[0]
        else:
            prompt = None
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{args.dataset_name}: row {i}: field 'prompt' is missing or empty")
        if prompt_bucket(prompt, args.split_seed) < args.heldout_fraction:
            prompts.setdefault(prompt, None)
    if not prompts:
        raise DataError(f"{args.dataset_name}: no held-out prompt (heldout_fraction {args.heldout_fraction})")
    return list(prompts)


def load_policy(args: BestOfNArguments):
    """The policy (`AutoModelForCausalLM`, eval mode, on `args.device`: default the device rule) and its tokenizer,
    set to pad on the left for generation (`loading.load_policy`)."""
    from .loading import load_policy as load

    return load(args.policy_name_or_path, args.policy_gguf_file, device=args.device)


def policy_inputs(prompts: list[str], tokenizer, args: BestOfNArguments) -> list[list[int]]:
    """Token ids the policy sees for each prompt: the chat template over HH turns where it applies, else the text."""
    ids = []
    for prompt in prompts:
        messages = hh_messages(prompt) if args.chat_template and getattr(tokenizer, "chat_template", None) else None
        if messages is not None:
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        else:
            text = prompt
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


@torch.inference_mode()
def sample_completions(model, tokenizer, prompt_ids: list[list[int]], args: BestOfNArguments) -> list[list[str]]:
    """`max_n` sampled completions of each prompt (text, special tokens removed), in batches of prompts."""
    from transformers import set_seed

    from .collator import pad_sequences

    set_seed(args.seed)
    completions = []
    starts = range(0, len(prompt_ids), args.generation_batch_size)
    for start in tqdm(starts, desc="Generating", unit="batch", disable=args.disable_tqdm):
        batch = pad_sequences(
            prompt_ids[start : start + args.generation_batch_size], tokenizer.pad_token_id, padding_side="left"
        )
        batch = {key: value.to(model.device) for key, value in batch.items()}
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=0,
            max_new_tokens=args.max_new_tokens,
            num_return_sequences=args.max_n,
            pad_token_id=tokenizer.pad_token_id,
        )  # (B * max_n, T + new)
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        completions += [texts[i : i + args.max_n] for i in range(0, len(texts), args.max_n)]
    return completions


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, max_n: int) -> dict:
    """The curve over n = 1, 2, 4, ..., max_n from (P, max_n) rewards: means, standard errors, KL."""
    ns = [2**k for k in range(int(math.log2(max_n)) + 1)]
    z = {name: (r - r.mean()) / (r.std() or 1.0) for name, r in (("proxy", proxy), ("gold", gold))}
    curve = {"n": ns, "kl": best_of_n_kl(np.array(ns)).tolist()}
    for key in ("proxy", "gold", "proxy_std_units", "gold_std_units", "gold_ceiling", "gold_ceiling_std_units"):
        curve[key], curve[f"{key}_sem"] = [], []
    sem = lambda x: float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")  # noqa: E731
    for n in ns:
        for suffix, p, g in (("", proxy, gold), ("_std_units", z["proxy"], z["gold"])):
            picked_proxy, picked_gold = best_of_n_rewards(p, g, n)
            ceiling = best_of_n_rewards(g, g, n)[1]  # gold picking for itself
            for key, values in (("proxy", picked_proxy), ("gold", picked_gold), ("gold_ceiling", ceiling)):
                curve[key + suffix].append(float(values.mean()))
                curve[f"{key}{suffix}_sem"].append(sem(values))
    return curve


def plot_curve(curve: dict, path: str, title: str) -> None:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("the best-of-n plot needs matplotlib: pip install 'reward-trainer[report]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for key, label in (("proxy", "proxy reward of the pick"), ("gold", "gold reward of the pick")):
        mean, sem = np.array(curve[f"{key}_std_units"]), np.array(curve[f"{key}_std_units_sem"])
        ax.errorbar(curve["n"], mean, yerr=sem, marker="o", capsize=3, label=label)
    ax.plot(curve["n"], curve["gold_ceiling_std_units"], ls="--", c="grey", label="gold picking for itself")
    ax.set_xscale("log", base=2)
    ax.set_xticks(curve["n"], [str(n) for n in curve["n"]])
    ax.set_xlabel("n (samples per prompt)")
    ax.set_ylabel("reward (std units of all samples, 0 = mean)")
    top = ax.secondary_xaxis("top")
    top.set_xticks(curve["n"], [f"{kl:.2f}" for kl in curve["kl"]])
    top.set_xlabel("KL(best-of-n || policy), nats")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_samples(scorer, prompts: list[str], responses: list[str], args: BestOfNArguments) -> list[float]:
    """Each prompt + response as the reward model was trained to read it (`RewardScorer.score`: HH text rendered
    with its chat template when its scoring contract says training did), each prompt's samples as one group."""
    return scorer.score(prompts, responses, progress=not args.disable_tqdm)


def run_best_of_n(args: BestOfNArguments) -> dict:
    """Generates, scores and writes the curve; returns the JSON written to `best_of_n.json`."""
    from .scorer import RewardScorer

    if args.max_n < 1 or args.max_n & (args.max_n - 1):
        raise UsageError(f"--max_n must be a power of 2, got {args.max_n}")
    for path in (args.proxy_model, args.gold_model):
        if not os.path.isdir(path):
            raise UsageError(f"reward model {path!r} does not exist (a folder saved by `reward-trainer train`)")
    prompts = heldout_prompts(args)
    model, tokenizer = load_policy(args)
    ids = policy_inputs(prompts, tokenizer, args)
    kept = [i for i, x in enumerate(ids) if len(x) <= args.max_prompt_tokens][: args.num_prompts]
    if not kept:
        raise DataError(f"{args.dataset_name}: no held-out prompt of at most {args.max_prompt_tokens} tokens")
    prompts, ids = [prompts[i] for i in kept], [ids[i] for i in kept]
    completions = sample_completions(model, tokenizer, ids, args)
    del model

    flat_prompts = [p for p in prompts for _ in range(args.max_n)]
    responses = [" " + c.strip() for group in completions for c in group]  # HH: one space after "Assistant:"
    rewards = {}
    for name, path in (("proxy", args.proxy_model), ("gold", args.gold_model)):
        scorer = RewardScorer.from_pretrained(path, device=args.device)
        if not args.disable_tqdm:
            logger.info("scoring %d samples with the %s model %s", len(responses), name, path)
        rewards[name] = np.array(score_samples(scorer, flat_prompts, responses, args)).reshape(len(prompts), -1)
    curve = best_of_n_curve(rewards["proxy"], rewards["gold"], args.max_n)
    result = {
        "curve": curve,
        "prompts": len(prompts),
        "samples_per_prompt": args.max_n,
        "mean_completion_chars": float(np.mean([len(r) for r in responses])),
        "proxy_gold_spearman": spearman(rewards["proxy"].ravel(), rewards["gold"].ravel()),
        "args": vars(args),
    }
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, RESULT_JSON), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.output_dir, SAMPLES_JSONL), "w", encoding="utf-8") as f:
        for i, prompt in enumerate(prompts):
            for k in range(args.max_n):
                row = {"prompt": prompt, "response": responses[i * args.max_n + k]}
                row |= {"proxy": float(rewards["proxy"][i, k]), "gold": float(rewards["gold"][i, k])}
                f.write(json.dumps(row) + "\n")
    title = f"best-of-n: {os.path.basename(args.policy_name_or_path.rstrip('/'))}, {len(prompts)} prompts"
    plot_curve(curve, os.path.join(args.output_dir, PLOT_PNG), title)
    return result
