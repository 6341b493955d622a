"""`RewardTrainer`: the stock `Trainer` with the pairwise Bradley-Terry loss."""

import torch
from transformers import Trainer

from .loss import bradley_terry_loss


class RewardTrainer(Trainer):
    """Trains a scalar-head model on preference pairs batched by `PreferenceCollator`.

    Overrides only the loss, the evaluation step (which returns the (chosen, rejected) rewards of each
    pair for `compute_metrics`, with the human tie and the response lengths as labels) and the count of
    pairs used to scale the loss under gradient accumulation.
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
        labels = torch.stack([human_tie.float(), *response_lengths(inputs["input_ids"], inputs["attention_mask"])], dim=1)
        return loss.detach(), rewards, labels  # (B, 3): tie, chosen and rejected response length in tokens


def response_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens after the shared prompt (the longest common prefix) of each pair, for the length-bias metrics."""
    chosen_ids, rejected_ids = input_ids.chunk(2)  # (B, T) each
    chosen_mask, rejected_mask = attention_mask.bool().chunk(2)
    same = (chosen_ids == rejected_ids) & chosen_mask & rejected_mask
    prefix = same.long().cumprod(dim=1).sum(dim=1)  # (B,)
    return (chosen_mask.sum(dim=1) - prefix).float(), (rejected_mask.sum(dim=1) - prefix).float()
