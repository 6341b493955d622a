"""Configuration dataclasses: what model, what data, how to train.

Configuration flows one way: YAML recipe -> `HfArgumentParser` over these dataclasses -> trainer.
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

BUILTIN_MODEL = "builtin:tiny-gpt2"
BUILTIN_DATASET = "builtin:code-book"


@dataclass
class ModelArguments:
    """Which backbone to train and how to load it."""

    model_name_or_path: str = field(
        default=BUILTIN_MODEL,
        metadata={
            "help": "A Hub model id (e.g. `openai-community/gpt2`), a local directory, or `builtin:tiny-gpt2`: "
            "a small GPT-2 built from a config with a tokenizer trained on the built-in task (works offline)."
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
        default=None, metadata={"help": "Attention kernel: `eager`, `sdpa`, `flash_attention_2`; default: the model's."}
    )


@dataclass
class DataArguments:
    """Where the preference pairs come from and how they are tokenized."""

    dataset_name: str = field(
        default=BUILTIN_DATASET,
        metadata={
            "help": "A Hub dataset (e.g. `Anthropic/hh-rlhf`), a local file (.json/.jsonl/.jsonl.gz/.parquet/.csv) or "
            "directory, or `builtin:code-book`, the offline synthetic task (see `reward_trainer.quickstart`)."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (subset) name."})
    train_split: str = field(default="train", metadata={"help": "Split used for training."})
    eval_split: str = field(
        default="test", metadata={"help": "Split used for evaluation, when the dataset has it."}
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Held-out fraction, split by prompt, used when the dataset has no `eval_split`."},
    )
    max_length: int | None = field(
        default=512, metadata={"help": "Longest tokenized prompt + response, in tokens. None: no limit."}
    )
    truncation: str = field(
        default="keep_end",
        metadata={
            "help": "Over-long pairs: `keep_end` cuts the prompt from the left, keeping the response whole, and cuts "
            "the response only if it alone is too long; `filter` drops the pair (what TRL does).",
            "choices": ["keep_end", "filter"],
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
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep only the first N training pairs."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Keep only the first N evaluation pairs."})
    num_synthetic_pairs: int = field(
        default=6000, metadata={"help": "Training pairs generated for `builtin:code-book` (plus 10% held out)."}
    )
    dataset_num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


@dataclass
class RewardConfig(TrainingArguments):
    """Training arguments for reward models: the stock `TrainingArguments` plus the pairwise objective.

    Parameters that control the objective:
        center_rewards_coefficient: adds `coef * mean((r_c + r_r)^2)` so that rewards centre on zero
            (Eisenstein et al. 2023). None or 0 disables it.

    Defaults that differ from `TrainingArguments`:
        output_dir="outputs/reward-model", learning_rate=1e-4, logging_steps=10, eval_strategy="epoch",
        save_strategy="no", report_to="none", remove_unused_columns=False (the collator needs the
        `chosen_ids`/`rejected_ids` columns, which the model's forward does not name).
    """

    output_dir: str | None = field(
        default="outputs/reward-model", metadata={"help": "Where checkpoints, the final model and metrics go."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    logging_steps: float = field(default=10, metadata={"help": "Log every N optimizer steps."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "When to evaluate: `no`, `steps` or `epoch`."})
    save_strategy: SaveStrategy | str = field(default="no", metadata={"help": "When to checkpoint: `no`, `steps` or `epoch`."})
    report_to: None | str | list[str] = field(
        default="none", metadata={"help": "Trackers to log to (`tensorboard`, `wandb`, ...), or `none`."}
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep dataset columns the model's forward does not name (the collator needs them)."}
    )
    center_rewards_coefficient: float | None = field(
        default=None,
        metadata={"help": "Weight of the reward-centring term `mean((r_c + r_r)^2)`; None disables it."},
    )


@dataclass
class EvaluateArguments:
    """`reward-trainer evaluate`: score a trained reward model on preference data and write a report."""

    model_name_or_path: str = field(metadata={"help": "A trained reward model: a local directory or a Hub id."})
    dataset_name: list[str] = field(
        metadata={
            "help": "One or more local files (.json/.jsonl/.jsonl.gz/.parquet/.csv), `save_to_disk` directories or "
            "Hub datasets. Rows: `chosen`, `rejected` and optionally `prompt`, `tie`, `source`/`subset`; or ranked "
            "rows: `prompt`, `responses` and `scores` (higher is better). With several, each is its own subset."
        }
    )
    output_dir: str = field(
        default="outputs/evaluation",
        metadata={"help": "Where eval_report.json, eval_report.md and the PNG plots are written."},
    )
    split: str = field(default="test", metadata={"help": "Split of a Hub dataset or `save_to_disk` directory."})
    max_samples: int | None = field(default=None, metadata={"help": "Evaluate only the first N rows of each dataset."})
    max_length: int | None = field(
        default=512, metadata={"help": "Longest prompt + response in tokens; longer ones lose the start of the prompt."}
    )
    batch_size: int = field(default=16, metadata={"help": "Texts scored per forward pass."})
    seed: int = field(default=0, metadata={"help": "Seed of the bootstrap confidence intervals."})
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
