"""`RewardTrainer`: the stock `Trainer` with the pairwise Bradley-Terry loss."""

import os

import torch
from transformers import Trainer

from .loss import bradley_terry_loss


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before that step updates the weights."""


class RewardTrainer(Trainer):
    """Trains a scalar-head model on preference pairs batched by `PreferenceCollator`.

    Overrides only the loss, the evaluation step (which returns the (chosen, rejected) rewards of each
    pair for `compute_metrics`) and the count of pairs used to scale the loss under gradient accumulation.
    Everything else (optimizer, schedule, clipping, logging, checkpoints, accelerate) is the stock `Trainer`.
    """

    # compute_loss normalizes by the pairs of the whole accumulated batch (see `_get_num_items_in_batch`).
    loss_is_scaled_for_ga = True

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin", "weight", "tie"]

    def compute_rewards(self, model, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over chosen and rejected stacked in one batch; returns their rewards, (B,) each."""
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits
        return logits.squeeze(-1).float().chunk(2)  # (2B, 1) -> (B,), (B,)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        chosen, rejected = self.compute_rewards(model, inputs)
        losses = bradley_terry_loss(chosen, rejected, inputs.get("margin"), self.args.center_rewards_coefficient)
        weight = inputs.get("weight", torch.ones_like(losses))
        if num_items_in_batch is None:  # evaluation: a plain weighted mean over this batch
            loss = (weight * losses).sum() / weight.sum().clamp_min(1e-12)
        else:
            # Sum over this micro-batch divided by the weight of the whole accumulated (and, under DDP,
            # global) batch, so that 2 x accumulation 2 gives the gradient of batch 4 exactly, even when
            # micro-batches differ in size. DDP averages gradients over processes: multiply that back.
            loss = (weight * losses).sum() / num_items_in_batch * self.accelerator.num_processes
            # Stop before a NaN reaches the weights (and from there every later checkpoint). This costs one
            # device sync per micro-batch; on a crash, the checkpoints already written stay intact.
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"non-finite training loss ({loss.item()}) at step {self.state.global_step + 1} "
                    f"(epoch {self.state.epoch or 0:.2f}); stopped before updating the weights. Checkpoints in "
                    f"{self.args.output_dir} are intact: lower the learning rate or check the data, then rerun "
                    "with --resume_from_checkpoint auto"
                )
        return (loss, (chosen, rejected)) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples, device):
        weights = [batch["weight"].sum() if "weight" in batch else batch["input_ids"].shape[0] // 2 for batch in batch_samples]
        num_items = torch.as_tensor(sum(float(w) for w in weights), device=device)
        if self.args.world_size > 1:
            num_items = self.accelerator.gather(num_items).sum()
        return num_items

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss, (chosen, rejected) = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        rewards = torch.stack([chosen, rejected], dim=1)  # (B, 2)
        human_tie = inputs.get("tie", torch.zeros_like(chosen))
        return loss.detach(), rewards, human_tie

    def create_model_card(self, model_name=None, finetuned_from=None, dataset=None, command=None, **kwargs):
        """Writes the reward-model card (`reward_trainer.hub.model_card`) to `output_dir/README.md`; called by
        `push_to_hub`, which passes `finetuned_from`, `dataset` and `command` through."""
        if not self.is_world_process_zero():
            return
        from .hub import model_card, training_command

        accuracies = [log["eval_accuracy"] for log in self.state.log_history if "eval_accuracy" in log]
        card = model_card(
            repo_id=self.hub_model_id or self.args.hub_model_id or model_name or "reward-model",
            base_model=finetuned_from or self.model.config.name_or_path,
            dataset=dataset or "unknown",
            eval_accuracy=accuracies[-1] if accuracies else None,
            command=command or training_command(),
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))
