"""The model card pushed to the Hub with `--push_to_hub --hub_model_id user/name`.

The upload itself is the stock `Trainer.push_to_hub` (weights as safetensors, config, tokenizer, README.md);
`RewardTrainer.create_model_card` writes this card instead of the generic one.
"""

import os
import shlex
import sys

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .loss import DEFAULT_LOSS, OBJECTIVES, Objective

TAGS = ["reward-model", "reward-trainer", "rlhf"]  # and the objective's own (`loss.OBJECTIVES`)

CARD_BODY = """
# {model_name}

A reward model: it reads a prompt followed by a response and returns one scalar, higher for the response
people prefer. Trained by `reward_trainer`, starting from `{base_model}`, on `{dataset}`, with {objective}.
{attributes}
**Pairwise eval accuracy: {accuracy}** (share of held-out pairs where the chosen response outscores the
rejected one; ties count 0.5).

## Usage

```python
{imports}from transformers import AutoModelForSequenceClassification, AutoTokenizer

model = AutoModelForSequenceClassification.from_pretrained("{repo_id}")
tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
{text_lines}{reward_line}
```

## Training command

```bash
{command}
```
"""
TEXT = "text = prompt + response\n"
TEXT_WITH_EOS = (  # `--append_eos true`: training read the reward at an EOS it appended (`contract.with_eos`)
    "text = prompt + response\n"
    "if not text.endswith(tokenizer.eos_token):  # trained with the EOS appended: the reward is read there\n"
    "    text += tokenizer.eos_token\n"
)
ONE_REWARD = 'reward = model(**tokenizer(text, return_tensors="pt")).logits[0, 0].item()'
WEIGHTED_REWARD = (
    'outputs = model(**tokenizer(text, return_tensors="pt")).logits[0]  # one per attribute\n'
    "reward = (outputs @ torch.tensor(model.config.attribute_weights)).item()"
)


def training_command(argv: list[str] | None = None) -> str:
    """The command that reproduces this run, as `reward-trainer train ...` (the same flags work with
    `accelerate launch ... scripts/train_reward.py ...`)."""
    args = list(sys.argv if argv is None else argv)[1:]
    if args[:1] == ["train"]:
        args = args[1:]
    return shlex.join(["reward-trainer", "train", *args])


def is_hub_id(name: str | None) -> bool:
    """A Hub repository id (`name` or `org/name`, as `huggingface_hub` validates it), not a built-in name or an
    existing local path."""
    if not name or name.startswith("builtin:") or os.path.exists(os.path.expanduser(name)):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_card(
    repo_id: str,
    base_model: str,
    dataset: str,
    eval_accuracy: float | None,
    command: str,
    loss: str = DEFAULT_LOSS,
    attribute_weights: dict[str, float] | None = None,
    regression_weight: float = 0.0,
    append_eos: bool = False,
) -> ModelCard:
    """A card with YAML metadata (base model and datasets where they are Hub ids, tags, eval accuracy) that names
    the objective `loss` (`loss.OBJECTIVES`) and, for ratings, the attributes and their weights in the reward; its
    usage code reads the reward where training did (after an appended EOS where the contract says `append_eos`)."""
    objective = OBJECTIVES[loss]
    model_name = repo_id.split("/")[-1]
    eval_results = None
    if eval_accuracy is not None:
        eval_results = [
            EvalResult(
                task_type="text-classification",
                task_name="Reward modeling",
                dataset_type=dataset,
                dataset_name=dataset,
                metric_type="accuracy",
                metric_name="Pairwise accuracy",
                metric_value=round(eval_accuracy, 4),
            )
        ]
    data = ModelCardData(
        base_model=base_model if is_hub_id(base_model) else None,
        datasets=[dataset] if is_hub_id(dataset) else None,
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=[*TAGS, objective.tag],
        model_name=model_name,
        eval_results=eval_results,
    )
    body = CARD_BODY.format(
        model_name=model_name,
        objective=objective_phrase(objective, attribute_weights, regression_weight),
        attributes=attributes_paragraph(attribute_weights),
        imports="import torch\n" if attribute_weights else "",
        text_lines=TEXT_WITH_EOS if append_eos else TEXT,
        reward_line=WEIGHTED_REWARD if attribute_weights else ONE_REWARD,
        base_model=base_model,
        dataset=dataset,
        accuracy="not measured" if eval_accuracy is None else f"{eval_accuracy:.4f}",
        repo_id=repo_id,
        command=command,
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def objective_phrase(objective: Objective, attribute_weights: dict | None, regression_weight: float) -> str:
    """What the model was trained with, for "Trained with ...": the objective's description; with ratings and a
    pairwise objective, applied to each attribute, plus the squared error when `regression_weight` adds it."""
    if not attribute_weights or objective.data == "ratings":
        return objective.description
    phrase = f"{objective.description}, applied to each attribute (pairs ordered by that attribute's ratings)"
    return phrase + (
        f", plus {regression_weight:g} times the squared error on the ratings" if regression_weight else ""
    )


def attributes_paragraph(attribute_weights: dict[str, float] | None) -> str:
    """For a model of several rated attributes: its outputs and how the reward weighs them; else nothing."""
    if not attribute_weights:
        return ""
    names = ", ".join(f"`{name}`" for name in attribute_weights)
    total = " + ".join(f"{weight:g} x {name}" for name, weight in attribute_weights.items())
    return (
        f"\nIt has one output per rated attribute ({names}; `config.id2label`), and the reward is their weighted sum "
        f"(`config.attribute_weights`): {total}.\n"
    )
