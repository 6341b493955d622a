"""`RewardScorer`: score texts with a trained reward model, fast and batch-invariant.

    from reward_trainer import RewardScorer
    scorer = RewardScorer.from_pretrained("outputs/quickstart")
    scorer.score(["key | code of cat?\\nanswer:"], [" red"])       # prompt + response, as in training
    scorer.score_texts(["a whole text"], normalize=True)          # (r - reward_mean) / reward_std
    scorer.score_conversations([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])

Texts are tokenized exactly as training tokenizes them (`tokenizer(prompt + response)`, special tokens
included), sorted by length, cut into batches under a token budget, run in `torch.inference_mode`, and
returned in the caller's order. A text's reward does not depend on the batch it lands in: padding is
masked, the reward is read at the last real token, and with left padding the position ids are computed
from the attention mask (GPT-2 in transformers 5 does not derive them; it would shift every padded row).

Grouped scoring: when texts share a prompt (`score(prompts, responses)`, the TRL reward-function call, GRPO
groups, best-of-n), a causal model with a `score` head encodes the group's shared token prefix once and each
completion after it, with the tree layout that training uses (`reward_trainer.packing`). The shared part is the
common prefix of the whole texts' token ids, not the prompt string, so a tokenizer that merges tokens across the
prompt/response seam still gets exact rewards: the same as scoring each text alone. Encoders keep the plain path.
"""

import inspect
import json
import math
import os
from collections.abc import Hashable

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .chat import chat_template_of  # the same rendering as training data
from .collator import pad_sequences
from .loading import require_safetensors
from .packing import build_tree, pack_trees, prefix_shared_batch, prefix_shared_rewards, supports_prefix_sharing

# A tree's row carries a (T, T) attention mask: groups are cut into trees of at most this many tokens so that a
# large GPU token budget does not make one 32k x 32k mask.
MAX_TREE_TOKENS = 4096


def reward_stats_from_metrics(metrics: dict[str, float], prefix: str = "eval_") -> tuple[float, float]:
    """Mean and std of all eval rewards (chosen and rejected pooled, N of each) from the per-side metrics.

    pooled mean = (m_c + m_r) / 2;  pooled var = (s_c^2 + s_r^2) / 2 + ((m_c - m_r) / 2)^2.
    """
    m_c, m_r = metrics[f"{prefix}chosen_reward_mean"], metrics[f"{prefix}rejected_reward_mean"]
    s_c, s_r = metrics[f"{prefix}chosen_reward_std"], metrics[f"{prefix}rejected_reward_std"]
    mean = (m_c + m_r) / 2
    std = math.sqrt((s_c**2 + s_r**2) / 2 + ((m_c - m_r) / 2) ** 2)
    return mean, std


def store_reward_normalization(config, metrics: dict[str, float]) -> None:
    """Writes `reward_mean` / `reward_std` of the eval rewards into a model config (saved in config.json)."""
    config.reward_mean, config.reward_std = reward_stats_from_metrics(metrics)


class RewardScorer:
    """Scores texts with a scalar-head model. Build it with `from_pretrained` or from a loaded model and tokenizer.

    Args:
        max_batch_tokens: a batch holds at most this many tokens, padding included (rows x longest row).
            None: 2,048 on CPU, 32,768 on a GPU (the budgets BENCHMARKS.md's scoring figures were measured at).
        max_length: longer texts are cut from the left (the tokenizer's `truncation_side` is set to `left`),
            keeping the response and the special tokens; None: the model's maximum positions, if it has one.
        padding_side: `right` (default) or `left`; both give the same rewards for decoder models. Encoders
            (BERT) read the reward at the first token and need `right`.
        group_prompts: encode the shared prompt of grouped texts once (see the module docstring). On by itself
            for causal models with a `score` head (`packing.supports_prefix_sharing`); False forces the plain path.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_tokens: int | None = None,
        max_length: int | None = None,
        padding_side: str = "right",
        group_prompts: bool = True,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; train with reward_trainer, which adds one")
        self.model = model.eval()
        self.tokenizer = tokenizer
        # Over-long texts lose their beginning, never the response; special tokens ([CLS], EOS) are kept.
        tokenizer.truncation_side = "left"
        self.max_batch_tokens = max_batch_tokens or (2048 if model.device.type == "cpu" else 32768)
        self.max_length = max_length or getattr(model.config, "max_position_embeddings", None)
        self.padding_side = padding_side
        self.pad_token_id = tokenizer.pad_token_id
        parameters = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in parameters
        self.takes_use_cache = "use_cache" in parameters  # no key/value cache: nothing is generated
        self.group_prompts = group_prompts and supports_prefix_sharing(model)
        self.reward_mean = getattr(model.config, "reward_mean", None)
        self.reward_std = getattr(model.config, "reward_std", None)
        # Several attributes (one output each): the reward is their weighted sum (`set_attribute_weights`).
        self.attribute_weights = torch.tensor(getattr(model.config, "attribute_weights", None) or [1.0])

    @classmethod
    def from_pretrained(
        cls, path: str, device: str | torch.device = "cpu", dtype: torch.dtype | str = torch.float32, **kwargs
    ) -> "RewardScorer":
        """Loads a checkpoint saved by `reward-trainer train` (or any scalar-head sequence classifier)."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        if os.path.isdir(path):
            require_safetensors(path)  # refuse pickle-only checkpoints with a clear message
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True).to(device)
        if model.config.num_labels != 1 and getattr(model.config, "attribute_weights", None) is None:
            raise ValueError(f"{path!r} has {model.config.num_labels} labels; a reward model has one (or attributes)")
        if tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id
        return cls(model, tokenizer, **kwargs)

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """A TRL reward function (`GRPOTrainer(reward_funcs=scorer)`): conversations or prompt + completion text.

        Completions of the same prompt (a GRPO group) are scored as a group: the prompt is encoded once."""
        if len(prompts) != len(completions):
            raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
        if prompts and isinstance(prompts[0], list):
            groups = [json.dumps(p, sort_keys=True) for p in prompts]
            return self.score_conversations([p + c for p, c in zip(prompts, completions)], groups=groups)
        return self.score(prompts, completions)

    def score(
        self, prompts: list[str], responses: list[str], normalize: bool = False, progress: bool = False
    ) -> list[float]:
        """Reward of each `prompt + response`, tokenized as one text exactly as in training; responses to the
        same prompt are scored as a group (the prompt encoded once, for causal models)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        texts = [p + r for p, r in zip(prompts, responses)]
        return self.score_texts(texts, normalize=normalize, progress=progress, groups=prompts)

    def score_conversations(
        self, messages_lists: list[list[dict]], normalize: bool = False, groups: list[Hashable] | None = None
    ) -> list[float]:
        """Reward of each conversation, rendered with the tokenizer's chat template or, without one, the default
        template that training uses for conversational data (`reward_trainer.chat.DEFAULT_CHAT_TEMPLATE`)."""
        template = chat_template_of(self.tokenizer)
        texts = [self.tokenizer.apply_chat_template(m, chat_template=template, tokenize=False) for m in messages_lists]
        return self.score_texts(texts, normalize=normalize, groups=groups)

    def score_texts(
        self,
        texts: list[str],
        normalize: bool = False,
        progress: bool = False,
        groups: list[Hashable] | None = None,
    ) -> list[float]:
        """Reward of each text, in the order given; `progress` shows a bar over the batches.

        `groups`: one key per text (its prompt, say); texts with equal keys are encoded as one tree, their
        common token prefix once (causal models with a `score` head; others ignore it). Any grouping gives
        the same rewards: the shared part is computed from the token ids.
        """
        if isinstance(texts, str):
            raise TypeError("score_texts takes a list of texts, not one string")
        if groups is not None and len(groups) != len(texts):
            raise ValueError(f"got {len(groups)} group keys for {len(texts)} texts")
        if normalize and (self.reward_mean is None or not self.reward_std):
            raise ValueError("this model's config.json has no reward_mean/reward_std; score with normalize=False")
        ids = self.tokenizer(list(texts), truncation=bool(self.max_length), max_length=self.max_length)["input_ids"]
        rewards = [0.0] * len(ids)
        if groups is not None and self.group_prompts:
            for batch in tqdm(self.grouped_batches(ids, groups), desc="Scoring", unit="batch", disable=not progress):
                for i, reward in self.forward_grouped(ids, batch):
                    rewards[i] = reward
        else:
            for batch in tqdm(self.batches(ids), desc="Scoring", unit="batch", disable=not progress):
                for i, reward in zip(batch, self.forward([ids[i] for i in batch])):
                    rewards[i] = reward
        if normalize:
            rewards = [(r - self.reward_mean) / self.reward_std for r in rewards]
        return rewards

    def batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Indices of `ids`, longest first, grouped so that rows x longest row <= max_batch_tokens."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        batches, current = [], []
        for i in order:
            if current and (len(current) + 1) * len(ids[current[0]]) > self.max_batch_tokens:
                batches.append(current)
                current = []
            current.append(i)
        return batches + [current] if current else batches

    def grouped_batches(self, ids: list[list[int]], groups: list[Hashable]) -> list[list[list[int]]]:
        """Batches of trees (each a list of text indices sharing one encoded prefix) for `forward_grouped`.

        Texts with equal keys form a tree; a tree longer than `max_batch_tokens` (or `MAX_TREE_TOKENS`) is cut
        into several, each with the shared prefix. Trees, longest first, fill a batch while its rows, packed first-fit as
        training packs them (`packing.pack_trees`), hold at most `max_batch_tokens` tokens, padding included.
        """
        members: dict[Hashable, list[int]] = {}
        for i, key in enumerate(groups):
            members.setdefault(key, []).append(i)
        trees, limit = [], min(self.max_batch_tokens, MAX_TREE_TOKENS)
        for group in members.values():
            prompt = len(build_tree(group, ids).prompt)
            chunk, size = [], prompt
            for i in group:
                response = len(ids[i]) - prompt
                if chunk and size + response > limit:
                    trees.append(build_tree(chunk, ids))
                    chunk, size = [], prompt
                chunk.append(i)
                size += response
            trees.append(build_tree(chunk, ids))
        batches, current = [], []
        for tree in sorted(trees, key=len, reverse=True):
            if current:
                capacity = len(current[0])  # the longest tree sets the row length, as in training
                if len(pack_trees([*current, tree], capacity)) * capacity > self.max_batch_tokens:
                    batches.append(current)
                    current = []
            current.append(tree)
        if current:
            batches.append(current)
        return [[tree.members for tree in batch] for batch in batches]

    @torch.inference_mode()
    def forward_grouped(self, ids: list[list[int]], trees: list[list[int]]) -> list[tuple[int, float]]:
        """(text index, reward) of each text of one batch of trees, laid out by `packing.prefix_shared_batch`.

        Each tree becomes pairs (its first text, each of its texts): the pairs' union is the tree, and
        `prefix_shared_batch` encodes each distinct sequence once, after the tree's common token prefix.
        """
        pairs = [{"chosen_ids": ids[tree[0]], "rejected_ids": ids[i]} for tree in trees for i in tree]
        batch = prefix_shared_batch(pairs, self.pad_token_id)
        device = self.model.device
        inputs = {key: value.to(device) for key, value in batch.items()}
        rewards = prefix_shared_rewards(self.model, inputs)[inputs["rejected_index"]]  # (texts,) or (texts, A)
        if rewards.dim() == 2:  # one output per attribute: their weighted sum, as `forward` gives
            rewards = rewards @ self.attribute_weights.to(rewards.device)
        return list(zip((i for tree in trees for i in tree), rewards.tolist()))

    @torch.inference_mode()
    def forward(self, rows: list[list[int]]) -> list[float]:
        """Rewards of one padded batch of token id lists."""
        device = self.model.device
        padded = pad_sequences(rows, self.pad_token_id, padding_side=self.padding_side)  # (B, T) each
        inputs = {key: value.to(device) for key, value in padded.items()}
        if self.takes_position_ids:
            inputs["position_ids"] = (padded["attention_mask"].cumsum(-1) - 1).clamp_min(0).to(device)  # (B, T)
        if self.takes_use_cache:
            inputs["use_cache"] = False
        logits = self.model(**inputs).logits.float()  # (B, A): A = 1, or one output per attribute
        return (logits @ self.attribute_weights.to(logits.device)).tolist()

    def set_attribute_weights(self, weights: dict[str, float] | list[float]) -> None:
        """The weights of the attributes in the reward (default: config.json's `attribute_weights`), as a list in
        the order of `config.id2label` or a {name: weight} dict (attributes left out weigh 0)."""
        names = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        if isinstance(weights, dict):
            unknown = set(weights) - set(names)
            if unknown:
                raise ValueError(f"unknown attributes {sorted(unknown)}; this model has {names}")
            weights = [float(weights.get(name, 0.0)) for name in names]
        if len(weights) != len(names):
            raise ValueError(f"got {len(weights)} weights for the {len(names)} attributes {names}")
        self.attribute_weights = torch.tensor(weights, dtype=torch.float32)

    def score_attributes(self, texts: list[str]) -> list[dict[str, float]]:
        """Every attribute's reward of each text, as {name: reward} (`config.id2label` names the outputs)."""
        names = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        saved, self.attribute_weights = self.attribute_weights, torch.eye(len(names))  # forward gives (B, A) rows
        try:
            rows = self.score_texts(texts)
        finally:
            self.attribute_weights = saved
        return [dict(zip(names, row)) for row in rows]
