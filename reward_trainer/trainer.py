"""`RewardTrainer`: the stock `Trainer` with the reward objectives of `reward_trainer.loss` (`--loss`)."""

import contextlib
import logging
import os

import datasets
import pyarrow.compute as pc
import torch
from torch.utils.data import Sampler, SequentialSampler
from transformers import Trainer

from .collator import (
    INDEX_COLUMNS,
    PAIR_COLUMNS,
    RATING_COLUMNS,
    RESPONSE_LENGTH_COLUMNS,
    PrefixSharingCollator,
    collator_for,
)
from .contract import read_contract
from .errors import NonFiniteLossError, UsageError
from .heads import TIE_PARAMETER, base_model_of, prepare_objective, reward_head, tie_alpha
from .length_projection import length_projection
from .loss import (
    OBJECTIVES,
    attribute_pairwise_loss,
    length_decorrelation_loss,
    orthogonality_loss,
    plackett_luce_loss,
    rating_regression_loss,
)
from .memory import MemoryPlan, plan_memory
from .metrics import LABEL_COLUMNS
from .packing import at_least_float32, prefix_shared_rewards, shared_prefix_length, shared_row_length

logger = logging.getLogger("reward_trainer")


def pair_length(row: dict) -> dict[str, int]:
    """The length a pair (or ranking item) is batched by with plain padding: its longest sequence."""
    if "ranking_ids" in row:
        return {"length": max(len(ids) for ids in row["ranking_ids"])}
    return {"length": max(len(row["chosen_ids"]), len(row["rejected_ids"]))}


def shared_pair_length(row: dict) -> dict[str, int]:
    """The length a pair is batched by with prefix sharing: its row `[prompt | chosen | rejected]` (a ranking
    item: its first response whole, and what each other one adds to it)."""
    if "ranking_ids" in row:
        first, *rest = row["ranking_ids"]
        return {"length": len(first) + sum(shared_row_length(first, ids) - len(first) for ids in rest)}
    return {"length": shared_row_length(row["chosen_ids"], row["rejected_ids"])}


class PairLengthSampler(Sampler[int]):
    """Batches of pairs of near-equal length, in a random order of batches, new each epoch.

    Sorts all pairs by length (ties broken at random), cuts the order into batches of `batch_size`
    and shuffles the batches. The stock `LengthGroupedSampler` sorts only within random "megabatches"
    of 4 to 50 batches, which leaves several times more padding on small data sets.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = torch.randperm(len(self.lengths), generator=generator).tolist()
        order = sorted(shuffled, key=self.lengths.__getitem__)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[b]


class RewardTrainer(Trainer):
    """Trains a scalar-head model on preference pairs batched by `PreferenceCollator`.

    Overrides only the loss, the evaluation step (which returns named columns for `compute_metrics`: the
    (chosen, rejected) rewards of each pair and what the objective adds, `metrics.PREDICTION_COLUMNS`, and as
    labels the data's `metrics.LABEL_COLUMNS`: human tie, response lengths, prompt, subset, response places,
    ratings) and the count of pairs used to scale the loss under gradient accumulation.
    Everything else (optimizer, schedule, clipping, logging, checkpoints, accelerate) is the stock `Trainer`.

    With no `data_collator`, picks the fastest exact one for the model (`collator.collator_for`: prefix
    sharing for causal models). Under `train_sampling_strategy="group_by_length"` it adds a `length`
    column and batches pairs by it with `PairLengthSampler`: the longer side of each pair, or with
    prefix sharing the length of its shared row (prompt once, both responses).
    """

    # compute_loss normalizes by the pairs of the whole accumulated batch (see `_get_num_items_in_batch`).
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, args=None, data_collator=None, train_dataset=None, **kwargs):
        if model is not None and args is not None:
            prepare_objective(model, args)
        if data_collator is None and model is not None and args is not None:
            data_collator = collator_for(model, args, model.config.pad_token_id)
        grouped = args is not None and args.train_sampling_strategy in ("group_by_length", "batch_rebalance")
        if (
            grouped
            and isinstance(train_dataset, datasets.Dataset)
            and args.length_column_name not in train_dataset.column_names
        ):
            # Batch by the length the collator will lay out: rows of similar length carry little padding.
            measure = shared_pair_length if isinstance(data_collator, PrefixSharingCollator) else pair_length
            train_dataset = train_dataset.map(measure, desc="Measuring pair lengths")
            if args.length_column_name != "length":
                train_dataset = train_dataset.rename_column("length", args.length_column_name)
        eval_dataset = kwargs.pop("eval_dataset", None)
        if isinstance(eval_dataset, datasets.Dataset) and "chosen_length" not in eval_dataset.column_names:
            eval_dataset = eval_dataset.map(response_lengths, desc="Measuring response lengths")
        if (
            (getattr(args, "length_debias", False) or getattr(args, "length_projection", False))
            and isinstance(train_dataset, datasets.Dataset)
            and "chosen_length" not in train_dataset.column_names
        ):
            train_dataset = train_dataset.map(response_lengths, desc="Measuring response lengths")
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            **kwargs,
        )
        if getattr(args, "length_projection", False) and (self.is_fsdp_enabled or self.is_deepspeed_enabled):
            # Refused before training, not after it: the edit writes one row of a head these engines shard.
            raise UsageError("--length_projection runs on one process or under DDP, not under FSDP or DeepSpeed")
        self.memory_plan = self.plan_micro_batches()

    def plan_micro_batches(self) -> MemoryPlan | None:
        """Sets the collator's token bound per micro-batch: `--micro_batch_tokens` (0: none), else the one
        `memory.plan_memory` picks from the memory budget (gradient checkpointing included); logs it."""
        collator, given = self.data_collator, getattr(self.args, "micro_batch_tokens", 0)
        if not hasattr(collator, "max_tokens") or not isinstance(self.train_dataset, datasets.Dataset):
            return None
        if self.is_deepspeed_enabled:  # its engine steps the optimizer inside a backward at the batch's end
            if given:
                raise UsageError("--micro_batch_tokens does not run under DeepSpeed; use its own micro-batch settings")
            return None
        if given is not None:
            collator.max_tokens = given or None
            return MemoryPlan(collator.max_tokens, self.args.gradient_checkpointing, reason="--micro_batch_tokens")
        if self.is_fsdp_enabled:
            logger.info("memory: under FSDP the micro-batch bound is not measured; set --micro_batch_tokens")
            return None
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        plan = plan_memory(
            self.model,
            self.args.device,
            self.probe_forward,
            longest_sequence(self.train_dataset),
            lambda n: collator.positions([{"chosen_ids": [0] * n, "rejected_ids": [1] * n}]),
            trainable,
            half_precision=self.args.bf16 or self.args.fp16,
            budget_gb=self.args.memory_budget_gb,
            gradient_checkpointing=self.args.gradient_checkpointing,
            checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        )
        collator.max_tokens = plan.micro_batch_tokens
        for name in ("activation_checkpointing", "gradient_checkpointing"):  # the second: an alias in newer versions
            if hasattr(self.args, name):
                setattr(self.args, name, plan.gradient_checkpointing)
        logger.info("memory: micro-batches of at most %s token positions: %s", plan.micro_batch_tokens, plan.reason)
        return plan

    def probe_forward(self, n: int) -> int:
        """The training forward on one synthetic pair of two n-token sequences sharing half their tokens, as
        `memory.plan_memory` measures it; returns the positions it laid out."""
        vocab = self.model.get_input_embeddings().num_embeddings
        ids = [(7 * i + 3) % vocab for i in range(n + n // 2)]
        rows = [{"chosen_ids": ids[:n], "rejected_ids": ids[: n // 2] + ids[n:]}]
        inputs = self._prepare_inputs(self.data_collator.collate(rows))
        with self.accelerator.autocast():  # the model is not prepared (its forward not wrapped in autocast) yet
            self.compute_rewards(self.model, inputs)
        return self.data_collator.positions(rows)

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The stock step, once per micro-batch of a batch cut by `collator.split_by_positions`: each backward adds
        its part of the gradient (the loss is a sum over pairs divided by the whole batch's weight), and under DDP
        only the last one synchronizes."""
        parts = inputs.get("micro_batches")
        if parts is None:
            return super().training_step(model, inputs, num_items_in_batch)
        loss = 0
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                loss = loss + super().training_step(model, part, num_items_in_batch)
        return loss

    def floating_point_ops(self, inputs) -> int:
        return sum(super(RewardTrainer, self).floating_point_ops(part) for part in micro_batches(inputs))

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [
                "chosen_ids", "rejected_ids", "ranking_ids", "ranking_scores", *PAIR_COLUMNS, *INDEX_COLUMNS,
                *RATING_COLUMNS,
            ]  # fmt: skip

    def _get_train_sampler(self, train_dataset=None):
        train_dataset = self.train_dataset if train_dataset is None else train_dataset
        column = self.args.length_column_name
        if self.args.train_sampling_strategy == "group_by_length" and column in getattr(
            train_dataset, "column_names", []
        ):
            # Sorted chunks of the global batch: under DDP each process takes its slice of the same chunk,
            # so the pairs of a step are those of a single-process run with the same global batch.
            global_batch = self.args.train_batch_size * self.args.world_size
            return PairLengthSampler(train_dataset[column], global_batch, seed=self.args.seed)
        return super()._get_train_sampler(train_dataset)

    def _get_eval_sampler(self, eval_dataset):
        # Evaluate in dataset order, whatever the training order (the stock sampler follows the training
        # strategy), so that predictions line up with the rows they score. Under DDP, accelerate shards the
        # data in order and `gather_for_metrics` drops the samples it repeated to fill the last batch.
        if eval_dataset is None or self.args.world_size > 1:
            return None
        return SequentialSampler(eval_dataset)

    def compute_rewards(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rewards of each pair's chosen and rejected sequence, (B,) each; see `pair_rewards`."""
        return pair_rewards(model, inputs)

    @torch.no_grad()
    def project_out_length(self) -> dict[str, float]:
        """Erases the linear direction of response length from the reward head, in place (`length_projection`).

        One pass over the training pairs in evaluation mode reads each response's input to the head (a hook makes
        the head return its input, so the rewards' own layouts, prefix sharing included, gather it) and its length;
        under DDP every process gathers all of them and makes the same edit. Returns the summary, prefixed
        `length_projection_`."""
        head = reward_head(self.model)
        features, lengths = [], []
        handle = head.register_forward_hook(lambda module, args, output: args[0])
        self.model.eval()
        try:
            for batch in self.get_test_dataloader(self.train_dataset):
                parts = [self._prepare_inputs(part) for part in micro_batches(batch)]
                with self.autocast_smart_context_manager():
                    rewards = [self.compute_rewards(self.model, part) for part in parts]  # (B, H): the head's input
                chosen, rejected = (torch.cat([r[k] for r in rewards]) for k in (0, 1))
                batch_lengths = [torch.cat([part[key] for part in parts]) for key in RESPONSE_LENGTH_COLUMNS]
                # Per pair, (B, 2, H) and (B, 2), so that the duplicates filling the last batch are dropped whole.
                pairs, pair_lengths = self.accelerator.gather_for_metrics(
                    (at_least_float32(torch.stack([chosen, rejected], 1)), torch.stack(batch_lengths, 1))
                )
                features.append(pairs.flatten(0, 1).cpu())
                lengths.append(pair_lengths.flatten().cpu())
        finally:
            handle.remove()
        weight, summary = length_projection(
            torch.cat(features).numpy(), torch.cat(lengths).numpy(), head.weight[0].double().cpu().numpy()
        )
        head.weight[0] = torch.as_tensor(weight, dtype=head.weight.dtype, device=head.weight.device)
        return {f"length_projection_{key}": value for key, value in summary.items()}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self.compute_rewards(model, inputs)  # (B,), or (B, 2) with a length head
        batch_term = None  # a statistic of the whole micro-batch (ODIN), weighted by the micro-batch's share
        if self.args.length_debias:
            lengths = torch.cat([inputs["chosen_length"], inputs["rejected_length"]])  # (2B,)
            both = torch.cat([chosen, rejected])  # (2B, 2): reward, length reward
            weight = reward_head(model).weight  # (2, H)
            batch_term = self.args.length_correlation_weight * length_decorrelation_loss(
                both[:, 0], both[:, 1], lengths
            ) + self.args.length_orthogonality_weight * orthogonality_loss(weight[0], weight[1])
            outputs = (chosen[:, 0], rejected[:, 0])  # what evaluation reports: the debiased reward
            chosen, rejected = chosen.sum(-1), rejected.sum(-1)  # the preference is explained by both heads
        else:
            outputs = (chosen, rejected)
        losses, weight = self.objective(model, chosen, rejected, inputs)
        if num_items_in_batch is None:  # evaluation: a plain weighted mean over this batch
            loss = (weight * losses).sum() / weight.sum().clamp_min(1e-12)
            if batch_term is not None:
                loss = loss + batch_term
        else:
            # Sum over this micro-batch divided by the weight of the whole accumulated (and, under DDP,
            # global) batch, so that 2 x accumulation 2 gives the gradient of batch 4 exactly, even when
            # micro-batches differ in size. DDP averages gradients over processes: multiply that back.
            scale = self.accelerator.num_processes / num_items_in_batch
            loss = (weight * losses).sum() * scale
            if batch_term is not None:  # each micro-batch's statistic counts by its share of the batch's weight
                loss = loss + batch_term * weight.sum() * scale
            # Stop before a NaN reaches the weights (and from there every later checkpoint). This costs one
            # device sync per micro-batch; on a crash, the checkpoints already written stay intact.
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} "
                    f"(epoch {self.state.epoch or 0:.2f}); stopped before updating the weights. Checkpoints in "
                    f"{self.args.output_dir} are intact: lower the learning rate or check the data, then rerun "
                    "with --resume_from_checkpoint auto"
                )
        return (loss, outputs) if return_outputs else loss

    def objective(self, model, chosen, rejected, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses, weights) of the `--loss` objective (`loss.OBJECTIVES`): per pair, or per ranking for one that
        trains on rankings."""
        objective = OBJECTIVES[self.args.loss]
        if objective.data == "rankings":
            return ranking_losses(chosen, rejected, inputs)
        weight = inputs.get("weight", torch.ones(len(chosen), device=chosen.device))
        if "chosen_ratings" in inputs:  # ratings of A attributes: rewards (B, A)
            return self.rating_losses(model, chosen, rejected, inputs), weight
        if objective.data == "ratings":
            raise UsageError(
                f"--loss {objective.name} needs ratings: the `ratings` format (prompt, response, rating columns)"
            )
        if objective.ties_in_loss:
            tie = inputs.get("tie", torch.zeros_like(chosen))
            losses = objective.loss(chosen, rejected, tie, tie_alpha(model, self.args).to(chosen.device))
        else:
            losses = objective.loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient)
        return losses, weight

    def rating_losses(self, model, chosen, rejected, inputs) -> torch.Tensor:
        """Per pair: the `--loss` applied to each attribute, plus `regression_weight` times the squared error on the
        ratings of both responses (a loss that trains on ratings, `regression`: the squared error alone). A single
        response is a pair of itself, so its squared error is its own."""
        objective = OBJECTIVES[self.args.loss]
        chosen = chosen if chosen.dim() == 2 else chosen[:, None]  # (B, A)
        rejected = rejected if rejected.dim() == 2 else rejected[:, None]
        ratings = inputs["chosen_ratings"], inputs["rejected_ratings"]  # (B, A) each, NaN: missing
        squared = (rating_regression_loss(chosen, ratings[0]) + rating_regression_loss(rejected, ratings[1])) / 2
        if objective.data == "ratings":
            return squared
        alpha = tie_alpha(model, self.args).to(chosen.device) if objective.ties_in_loss else None
        return attribute_pairwise_loss(chosen, rejected, *ratings, alpha=alpha) + self.args.regression_weight * squared

    def create_optimizer(self, model=None):
        """The stock optimizer, with a learned tie parameter (`bt_ties`) in a group of its own at `tie_learning_rate`
        and no weight decay: one scalar, which the backbone's learning rate would leave where it started."""
        optimizer = super().create_optimizer(model)
        tie = getattr(base_model_of(self.model), TIE_PARAMETER, None)
        if tie is not None and not any(g.get("tie_parameter") for g in optimizer.param_groups):
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if p is not tie]
            optimizer.add_param_group({"params": [tie], "lr": self.args.tie_learning_rate, "weight_decay": 0.0,
                                       "tie_parameter": True})  # fmt: skip
        return optimizer

    def _get_num_items_in_batch(self, batch_samples, device):
        weights = [batch_weight(part) for batch in batch_samples for part in micro_batches(batch)]
        num_items = torch.as_tensor(sum(float(w) for w in weights), device=device)
        if self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items).sum()
        return num_items

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        parts = inputs.get("micro_batches")
        if parts is None:
            return self.predict_part(model, inputs, prediction_loss_only)
        # A batch cut into micro-batches: their rows in order, and the loss weighted by each one's pairs.
        outputs = [self.predict_part(model, part, prediction_loss_only) for part in parts]
        weights = [float(batch_weight(part)) for part in parts]
        loss = sum(out[0].float() * w for out, w in zip(outputs, weights)) / max(sum(weights), 1e-12)
        if prediction_loss_only:
            return loss, None, None
        predictions, labels = (
            {key: torch.cat([out[i][key] for out in outputs]) for key in outputs[0][i]} for i in (1, 2)
        )
        return loss, predictions, labels

    def predict_part(self, model, inputs, prediction_loss_only):
        """`prediction_step` of one batch that is not cut into micro-batches."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, (chosen, rejected) = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        predictions = {}
        if "chosen_ratings" in inputs:  # ratings: the reward is the weighted sum of the attributes
            chosen, rejected = (x if x.dim() == 2 else x[:, None] for x in (chosen, rejected))  # (B, A) each
            predictions |= {"chosen_attributes": chosen, "rejected_attributes": rejected}
            weights = torch.tensor(base_model_of(model).config.attribute_weights, device=chosen.device)
            chosen, rejected = chosen @ weights, rejected @ weights
        predictions |= {"chosen": chosen, "rejected": rejected}
        if OBJECTIVES[self.args.loss].ties_in_loss:  # alpha = log(theta), one copy per pair so that DDP gathers it
            alpha = tie_alpha(model, self.args).to(chosen.device).detach().float()
            predictions["tie_alpha"] = alpha.expand(len(chosen)).contiguous()
        # Named columns (`metrics.PREDICTION_COLUMNS`, `metrics.LABEL_COLUMNS`): the stock Trainer concatenates and,
        # under DDP, gathers a dict key by key. The data's columns are the same in every batch and process; one
        # that the data lacks is left out.
        labels = {key: label_column(key, inputs[key]) for key in LABEL_COLUMNS if key in inputs}
        return loss.detach(), {key: at_least_float32(value) for key, value in predictions.items()}, labels

    def create_model_card(self, model_name=None, finetuned_from=None, dataset=None, command=None, **kwargs):
        """Writes the reward-model card (`reward_trainer.hub.model_card`) to `output_dir/README.md`; called by
        `push_to_hub`, which passes `finetuned_from`, `dataset` and `command` through."""
        if not self.is_world_process_zero():
            return
        from .hub import model_card, training_command

        accuracies = [log["eval_accuracy"] for log in self.state.log_history if "eval_accuracy" in log]
        config = base_model_of(self.model).config
        weights = getattr(config, "attribute_weights", None)  # a model of rated attributes (`prepare_objective`)
        contract = read_contract(config)
        card = model_card(
            repo_id=self.hub_model_id or self.args.hub_model_id or model_name or "reward-model",
            base_model=finetuned_from or self.model.config.name_or_path,
            dataset=dataset or "unknown",
            eval_accuracy=accuracies[-1] if accuracies else None,
            command=command or training_command(),
            loss=self.args.loss,
            attribute_weights={config.id2label[i]: w for i, w in enumerate(weights)} if weights else None,
            regression_weight=self.args.regression_weight,
            append_eos=bool(contract and contract.append_eos),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))


def label_column(key: str, values: torch.Tensor) -> torch.Tensor:
    """A label column as `compute_metrics` reads it: ratings as floats (NaN: missing), the annotators' tie as 0 or
    1, the other columns (lengths, row and subset ids, places) as int64, which keeps ids exact."""
    if key in RATING_COLUMNS:
        return values.float()
    return (values > 0).long() if key == "tie" else values.long()


def response_lengths(row: dict) -> dict[str, int]:
    """Tokens after the shared prompt (the longest common prefix) of each response, for the length-bias metrics."""
    prefix = shared_prefix_length(row["chosen_ids"], row["rejected_ids"])
    return {"chosen_length": len(row["chosen_ids"]) - prefix, "rejected_length": len(row["rejected_ids"]) - prefix}


def num_pairs(batch: dict[str, torch.Tensor]) -> int:
    return len(batch["chosen_index"]) if "chosen_index" in batch else batch["input_ids"].shape[0] // 2


def batch_weight(batch: dict[str, torch.Tensor]):
    """The weight of a collated batch in the loss's denominator: its pairs' weights, or its number of pairs."""
    return batch["weight"].sum() if "weight" in batch else num_pairs(batch)


def micro_batches(batch: dict) -> list[dict]:
    """The micro-batches of a collated batch (`collator.split_by_positions`), or the batch itself."""
    return batch.get("micro_batches") or [batch]


def longest_sequence(dataset: datasets.Dataset) -> int:
    """Tokens of the longest sequence of a training set of pairs or ranking items."""
    longest = 0
    for table in dataset.with_format("arrow").iter(batch_size=10_000):
        for column in ("chosen_ids", "rejected_ids", "ranking_ids"):
            if column in table.column_names:
                values = table[column]
                if column == "ranking_ids":
                    values = pc.list_flatten(values)
                longest = max(longest, pc.max(pc.list_value_length(values)).as_py() or 0)
    return longest


def ranking_losses(chosen, rejected, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Plackett-Luce losses (G,) of the rankings in a batch of pairs, and each ranking's weight (G,).

    A response is its ranking (`group`) and its place in it (`chosen_response` / `rejected_response`); its reward
    is the mean of its copies (they are one forward's output, or equal ones), its rank the number of responses it
    beats, which orders a ranking's responses as its scores do when all its pairs are in the batch (ranking items
    are batched whole). Annotated ties are not a ranking and are left out.
    """
    keep = inputs["tie"] == 0 if "tie" in inputs else torch.ones_like(chosen, dtype=torch.bool)
    weight = inputs["weight"][keep] if "weight" in inputs else torch.ones_like(chosen[keep])
    group = inputs["group"][keep]
    if len(group) == 0:
        return chosen[:0], chosen[:0]
    places = torch.cat([inputs["chosen_response"][keep], inputs["rejected_response"][keep]])  # (2P,)
    keys = torch.cat([group, group]) * (int(places.max()) + 1) + places
    responses, slot = torch.unique(keys, return_inverse=True)  # (U,), (2P,)
    values = torch.cat([chosen[keep], rejected[keep]])
    rewards = values.new_zeros(len(responses)).scatter_reduce(0, slot, values, "mean", include_self=False)
    wins = values.new_zeros(len(responses)).index_add(0, slot[: len(group)], torch.ones_like(weight))
    losses = plackett_luce_loss(rewards, wins, responses // (int(places.max()) + 1))  # (G,)
    groups, group_slot = torch.unique(group, return_inverse=True)
    return losses, weight.new_zeros(len(groups)).index_add(0, group_slot, weight)


def pair_rewards(model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of each pair's chosen and rejected sequence, (B,) each, from the batch a collator built.

    Plain (`PreferenceCollator`): one forward over chosen and rejected stacked. Deduplicated: the forward
    covers the distinct sequences, and `chosen_index`/`rejected_index` pick each pair's. Prefix-shared
    (`PrefixSharingCollator`, the batch has `reward_index`): see `reward_trainer.packing`.
    """
    if "reward_index" in inputs:
        rewards = prefix_shared_rewards(model, inputs)  # (U,)
    else:
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        rewards = at_least_float32(logits.squeeze(-1))  # (2B,) or (U,); (.., 2) with a length head
        if "chosen_index" not in inputs:
            return rewards.chunk(2)
    return rewards[inputs["chosen_index"]], rewards[inputs["rejected_index"]]
