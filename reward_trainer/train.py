"""The training run: parse arguments, load model and data, train, evaluate, save.

reward-trainer train --config recipes/quickstart.yaml
accelerate launch --config_file accelerate_configs/cpu.yaml scripts/train_reward.py --config recipes/quickstart.yaml
"""

import dataclasses
import functools
import logging
import os
import sys

import datasets
import transformers
from transformers import set_seed
from transformers.trainer_utils import IntervalStrategy

from .chat import renders_implicit_prompt_with_template
from .checkpoints import resolve_resume_checkpoint
from .config import DataArguments, ModelArguments, RewardConfig
from .contract import ScoringContract, write_contract
from .data import load_preference_data, write_data_report
from .errors import UsageError
from .hardware import machine_line
from .heads import add_lora, base_model_of, export_reward_model, head_attribute, prepare_objective, save_lora_model
from .loading import load_reward_model
from .loss import OBJECTIVES
from .metrics import compute_metrics
from .scorer import reward_stats_from_metrics
from .trainer import RewardTrainer

logger = logging.getLogger("reward_trainer")

RELOAD_SNIPPET = """from transformers import AutoModelForSequenceClassification, AutoTokenizer
model, tok = AutoModelForSequenceClassification.from_pretrained("{path}"), AutoTokenizer.from_pretrained("{path}")
reward = model(**tok({text}, return_tensors="pt")).logits[0, 0].item()"""


def setup_logging(training_args: RewardConfig) -> None:
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )
    level = training_args.get_process_log_level()  # the libraries: `--log_level` (default: WARNING)
    logger.setLevel(logging.INFO if training_args.should_log else logging.WARNING)  # ours: INFO on the main process
    datasets.utils.logging.set_verbosity(level)
    transformers.utils.logging.set_verbosity(level)


def skip_evaluation(training_args: RewardConfig) -> None:
    """No evaluation pairs (`--eval_fraction 0` and no eval split): train without evaluating, or say which flag
    needs them."""
    if training_args.load_best_model_at_end or training_args.metric_for_best_model:
        raise UsageError(
            "--load_best_model_at_end / --metric_for_best_model need evaluation pairs, but there are none: "
            "raise --eval_fraction or give the dataset an eval split"
        )
    logger.info("no evaluation pairs (eval_fraction 0 and no eval split): training without evaluation")
    training_args.eval_strategy = IntervalStrategy.NO
    training_args.do_eval = False


def scoring_contract(data_args: DataArguments, training_args: RewardConfig, tokenizer, config) -> ScoringContract:
    """What reading the trained model needs, from the settings it is trained with (normalization comes after)."""
    chat = renders_implicit_prompt_with_template(data_args.implicit_prompt_rendering, tokenizer)
    weights = getattr(config, "attribute_weights", None)
    return ScoringContract(
        max_length=data_args.max_length,
        truncation=data_args.truncation,
        implicit_prompt_rendering="chat_template" if chat else "raw",
        append_eos=data_args.append_eos,
        attribute_weights=list(weights) if weights is not None else None,
        loss=str(training_args.loss),
    )


def train(model_args: ModelArguments, data_args: DataArguments, training_args: RewardConfig) -> dict[str, float]:
    setup_logging(training_args)
    set_seed(training_args.seed)
    precision = training_args.precision
    logger.info("precision: %s (%s); %s", precision.name, precision.reason, machine_line())
    model, tokenizer = load_reward_model(model_args)
    # Saved in config.json: what the model was trained in, and why.
    model.config.training_precision = {"precision": precision.name, "reason": precision.reason}
    objective = OBJECTIVES[training_args.loss]
    with training_args.main_process_first(desc="preprocessing"):
        data = load_preference_data(
            data_args,
            tokenizer,
            seed=training_args.seed,
            ties_in_loss=objective.ties_in_loss,
            rankings=objective.data == "rankings",
            single_responses=objective.data == "ratings",
        )
    # A length head, a tie parameter, one output per rated attribute: before LoRA wraps the head.
    prepare_objective(model, training_args, attributes=data.attributes)
    if model_args.use_peft:
        model = add_lora(model, model_args)
    if training_args.should_save:
        write_data_report(data.report, training_args.output_dir)
    # How to read the model as it is trained, in config.json from the first checkpoint on (`reward_trainer.contract`).
    inner = base_model_of(model)
    contract = scoring_contract(data_args, training_args, tokenizer, inner.config)
    write_contract(inner.config, contract)
    if head_attribute(inner) == "score":  # OpenRLHF reads the reward head named by this key (its trainer writes it)
        inner.config.value_head_prefix = "score"

    if data.eval is None and training_args.eval_strategy != IntervalStrategy.NO:
        skip_evaluation(training_args)
    # The eval pairs carry subset ids; their names (the `ClassLabel`) make the keys `eval_accuracy/<name>`.
    subsets = data.eval.features["subset"].names if data.eval is not None and "subset" in data.eval.features else None
    trainer = RewardTrainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        compute_metrics=functools.partial(compute_metrics, subsets=subsets, attributes=data.attributes),
    )
    checkpoint = resolve_resume_checkpoint(training_args.resume_from_checkpoint, training_args.output_dir)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    if training_args.length_projection:  # before evaluation: the metrics are those of the saved head
        train_result.metrics.update(trainer.project_out_length())
    train_result.metrics["precision"] = precision.name
    if trainer.memory_plan is not None:
        train_result.metrics["micro_batch_tokens"] = trainer.memory_plan.micro_batch_tokens or 0
        train_result.metrics["gradient_checkpointing"] = trainer.memory_plan.gradient_checkpointing
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = {}
    if data.eval is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        # The scorer's `normalize=True` reads these from the contract; plain transformers ignores them.
        mean, std = reward_stats_from_metrics(metrics)
        contract = dataclasses.replace(contract, reward_mean=mean, reward_std=std)
        write_contract(base_model_of(trainer.model).config, contract)
    if trainer.is_fsdp_enabled:  # checkpoints may be sharded; the final model is one plain safetensors state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if model_args.use_peft:
        if trainer.is_world_process_zero():
            save_lora_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, training_args.output_dir)
        return _finish(trainer, training_args, metrics, contract)
    # The checkpoints keep a length head and a tie parameter for resuming; the final model is a plain reward model.
    export_reward_model(trainer.model)
    if training_args.push_to_hub:  # saves to output_dir, writes the model card, uploads the folder
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, dataset=data_args.dataset_name)
    else:
        trainer.save_model(training_args.output_dir)
    return _finish(trainer, training_args, metrics, contract)


def end_process_group() -> None:
    """Destroys this process's group of a multi-process launch, if it has one, while the interpreter is whole.

    Left to the interpreter's exit, the group's gloo worker threads may still be releasing the last collective's
    tensors; releasing a tensor that Python has seen takes the GIL, and a thread that asks for it while the
    interpreter finalizes is ended by Python inside a C++ destructor: `std::terminate`, SIGABRT ("terminate called
    without an active exception"). Destroying the group joins those threads first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _finish(
    trainer: RewardTrainer, training_args: RewardConfig, metrics: dict[str, float], contract: ScoringContract
) -> dict[str, float]:
    if trainer.is_world_process_zero():
        path = os.path.abspath(training_args.output_dir)
        if "eval_accuracy" in metrics:
            print(f"eval_accuracy: {metrics['eval_accuracy']:.4f}")
        text = '"<prompt><response>" + tok.eos_token' if contract.append_eos else '"<prompt><response>"'
        snippet = RELOAD_SNIPPET.format(path=path, text=text)
        print(f"Saved reward model to {path}\nReload it with plain transformers:\n{snippet}")
        # Who reads the same reward without this library (README, "Where the reward is read").
        if contract.append_eos:
            readers = (
                "Texts end with EOS, where TRL's RewardTrainer reads; TRL's GRPO given this path reads one before."
            )
        else:
            readers = (
                "TRL's GRPO given this path, vLLM, verl and OpenRLHF read this reward; TRL's RewardTrainer appends EOS "
                "to plain text and reads another token (--append_eos true matches it)."
            )
        print(readers)
    return metrics
