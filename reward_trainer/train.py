"""The training run: parse arguments, load model and data, train, evaluate, save.

reward-trainer train --config recipes/quickstart.yaml
accelerate launch --config_file accelerate_configs/cpu.yaml scripts/train_reward.py --config recipes/quickstart.yaml
"""

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
from .data import load_preference_data, write_data_report
from .errors import UsageError
from .hardware import machine_line
from .heads import add_lora, export_reward_model, prepare_objective, save_lora_model
from .loading import load_reward_model
from .metrics import compute_metrics
from .scorer import store_reward_normalization
from .trainer import RewardTrainer

logger = logging.getLogger("reward_trainer")

RELOAD_SNIPPET = """from transformers import AutoModelForSequenceClassification, AutoTokenizer
model, tok = AutoModelForSequenceClassification.from_pretrained("{path}"), AutoTokenizer.from_pretrained("{path}")
reward = model(**tok("<prompt><response>", return_tensors="pt")).logits[0, 0].item()"""


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


def train(model_args: ModelArguments, data_args: DataArguments, training_args: RewardConfig) -> dict[str, float]:
    setup_logging(training_args)
    set_seed(training_args.seed)
    precision = training_args.precision
    logger.info("precision: %s (%s); %s", precision.name, precision.reason, machine_line())
    model, tokenizer = load_reward_model(model_args)
    # Saved in config.json: what the model was trained in, and why.
    model.config.training_precision = {"precision": precision.name, "reason": precision.reason}
    with training_args.main_process_first(desc="preprocessing"):
        data = load_preference_data(
            data_args,
            tokenizer,
            seed=training_args.seed,
            ties_in_loss=training_args.loss == "bt_ties",
            rankings=training_args.loss == "plackett_luce",
        )
    # A length head, a tie parameter, one output per rated attribute: before LoRA wraps the head.
    prepare_objective(model, training_args, attributes=data.attributes)
    if model_args.use_peft:
        model = add_lora(model, model_args)
    if training_args.should_save:
        write_data_report(data.report, training_args.output_dir)
    # Saved in config.json, so that `reward-trainer evaluate` renders HH text as training did.
    chat = renders_implicit_prompt_with_template(data_args.implicit_prompt_rendering, tokenizer)
    model.config.implicit_prompt_rendering = "chat_template" if chat else "raw"

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
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_metrics("train", train_result.metrics)
    metrics = {}
    if data.eval is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        # The scorer's `normalize=True` reads these from config.json; plain transformers ignores them.
        store_reward_normalization(trainer.model.config, metrics)
    if trainer.is_fsdp_enabled:  # checkpoints may be sharded; the final model is one plain safetensors state dict
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    if model_args.use_peft:
        if trainer.is_world_process_zero():
            save_lora_model(trainer.accelerator.unwrap_model(trainer.model), tokenizer, training_args.output_dir)
        return _finish(trainer, training_args, metrics)
    # The checkpoints keep a length head and a tie parameter for resuming; the final model is a plain reward model.
    export_reward_model(trainer.model)
    if training_args.push_to_hub:  # saves to output_dir, writes the model card, uploads the folder
        trainer.push_to_hub(finetuned_from=model_args.model_name_or_path, dataset=data_args.dataset_name)
    else:
        trainer.save_model(training_args.output_dir)
    return _finish(trainer, training_args, metrics)


def end_process_group() -> None:
    """Destroys this process's group of a multi-process launch, if it has one, while the interpreter is whole.

    Left to the interpreter's exit, the group's gloo worker threads may still be releasing the last collective's
    tensors; releasing a tensor that Python has seen takes the GIL, and a thread that asks for it while the
    interpreter finalizes is ended by Python inside a C++ destructor: `std::terminate`, SIGABRT ("terminate called
    without an active exception"). Destroying the group joins those threads first."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _finish(trainer: RewardTrainer, training_args: RewardConfig, metrics: dict[str, float]) -> dict[str, float]:
    if trainer.is_world_process_zero():
        path = os.path.abspath(training_args.output_dir)
        if "eval_accuracy" in metrics:
            print(f"eval_accuracy: {metrics['eval_accuracy']:.4f}")
        print(f"Saved reward model to {path}\nReload it with plain transformers:\n{RELOAD_SNIPPET.format(path=path)}")
    return metrics
