"""`RewardScorer`: score texts with a trained reward model, read as it was trained, fast and batch-invariant.

    from reward_trainer import RewardScorer
    scorer = RewardScorer.from_pretrained("outputs/quickstart")   # device: the device rule (`hardware`)
    scorer.score(["key | code of cat?\\nanswer:"], [" red"])       # prompt + response, as in training
    scorer.score_texts(["a whole text"], normalize=True)          # (r - reward_mean) / reward_std
    scorer.score_conversations([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]])

The checkpoint's scoring contract (`reward_trainer.contract`, saved by training) says how to read it: HH-RLHF text
("\\n\\nHuman: ...\\n\\nAssistant: ...") is rendered with the chat template when training rendered it so, the EOS
string ends each text when training appended it, and texts longer than training's `max_length` are cut as
training cut them (the prompt from the left; `truncated_texts` counts them). Each text is then tokenized as
training tokenizes it (`data.tokenizing.Encoder`: the tokenizer's own special tokens), sorted by length, cut into
batches under a token budget, run in `torch.inference_mode`, and returned in the caller's order. A text's reward
does not depend on the batch it lands in: padding is masked, the reward is read at the last real token, and with
left padding the position ids are computed from the attention mask (GPT-2 in transformers 5 does not derive
them; it would shift every padded row). A checkpoint without a contract is read as it always was.

Grouped scoring: when texts share a prompt (`score(prompts, responses)`, the TRL reward-function call, GRPO
groups, best-of-n), a causal model with a `score` head encodes the group's shared token prefix once and each
completion after it, with the tree layout that training uses (`reward_trainer.packing`). The shared part is the
common prefix of the whole texts' token ids, not the prompt string, so a tokenizer that merges tokens across the
prompt/response seam still gets exact rewards: the same as scoring each text alone. Encoders keep the plain path.
"""

import inspect
import json
import logging
import math
from collections.abc import Hashable

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .chat import HUMAN_MARKER, chat_template_of, end_of_turn, parse_implicit_conversation
from .collator import pad_sequences
from .contract import ScoringContract, read_contract, with_eos
from .data.tokenizing import Encoder, cut_keep_end, special_affixes, truncate_keep_end
from .loading import load_for_scoring
from .packing import build_tree, pack_trees, prefix_shared_batch, prefix_shared_rewards, supports_prefix_sharing

logger = logging.getLogger("reward_trainer")

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


class RewardScorer:
    """Scores texts with a scalar-head model. Build it with `from_pretrained` or from a loaded model and tokenizer.

    Args:
        max_batch_tokens: a batch holds at most this many tokens, padding included (rows x longest row).
            None: 2,048 on CPU, 32,768 on a GPU (the budgets BENCHMARKS.md's scoring figures were measured at).
        max_length: longer texts are cut (see the module docstring); None: the contract's `max_length` (training's),
            else `default_max_length`, else the model's maximum positions; never more than the model's positions.
        padding_side: `right` (default) or `left`; both give the same rewards for decoder models. Encoders
            (BERT) read the reward at the first token and need `right`.
        group_prompts: encode the shared prompt of grouped texts once (see the module docstring). On by itself
            for causal models with a `score` head (`packing.supports_prefix_sharing`); False forces the plain path.
        contract: how to read the model (`reward_trainer.contract`); None: the one in `model.config`, if any.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_batch_tokens: int | None = None,
        max_length: int | None = None,
        padding_side: str = "right",
        group_prompts: bool = True,
        contract: ScoringContract | None = None,
        default_max_length: int | None = None,
    ):
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; train with reward_trainer, which adds one")
        self.model = model.eval()
        self.tokenizer = tokenizer
        # Over-long texts lose their beginning, never the response; special tokens ([CLS], EOS) are kept.
        tokenizer.truncation_side = "left"
        self.contract = contract if contract is not None else read_contract(model.config)
        config, known = model.config, self.contract
        positions = getattr(config, "max_position_embeddings", None)
        limit = max_length or (known.max_length if known else None) or default_max_length or positions
        self.max_length = min(limit, positions) if limit and positions else limit
        self.max_batch_tokens = max_batch_tokens or (2048 if model.device.type == "cpu" else 32768)
        self.padding_side = padding_side
        self.pad_token_id = tokenizer.pad_token_id
        parameters = inspect.signature(model.forward).parameters
        self.takes_position_ids = "position_ids" in parameters
        self.takes_use_cache = "use_cache" in parameters  # no key/value cache: nothing is generated
        self.group_prompts = group_prompts and supports_prefix_sharing(model)
        self.reward_mean = known.reward_mean if known else getattr(config, "reward_mean", None)
        self.reward_std = known.reward_std if known else getattr(config, "reward_std", None)
        # Several attributes (one output each): the reward is their weighted sum (`set_attribute_weights`).
        weights = known.attribute_weights if known else None
        weights = weights if weights is not None else getattr(config, "attribute_weights", None)
        self.attribute_weights = torch.tensor(weights or [1.0])
        # A contract names the rule training tokenized with; without one, the saved tokenizer as it is.
        self.encode = Encoder(tokenizer, lead_once=known is not None)
        self.affixes = special_affixes(tokenizer) or ([], [])
        # HH text as training rendered it: the contract says how; older checkpoints of this project say it at the
        # top level of config.json; others are read as raw text.
        rendering = known.implicit_prompt_rendering if known else getattr(config, "implicit_prompt_rendering", "raw")
        self.renders_hh = rendering == "chat_template"
        self.turn_end = end_of_turn(tokenizer)
        self.truncated_texts = 0  # texts cut to `max_length` so far
        self._warned: set[str] = set()

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str = torch.float32,
        **kwargs,
    ) -> "RewardScorer":
        """Loads a checkpoint saved by `reward-trainer train` (or any scalar-head sequence classifier) with
        `loading.load_for_scoring`, on `device` (default: the device rule), read by its scoring contract."""
        dtype = getattr(torch, dtype) if isinstance(dtype, str) and dtype != "auto" else dtype
        model, tokenizer = load_for_scoring(path, device=device, dtype=dtype)
        if model.config.num_labels != 1 and getattr(model.config, "attribute_weights", None) is None:
            raise ValueError(f"{path!r} has {model.config.num_labels} labels; a reward model has one (or attributes)")
        return cls(model, tokenizer, **kwargs)

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """A TRL reward function (`GRPOTrainer(reward_funcs=scorer)`): conversations, or prompt + completion text
        (HH text rendered as training rendered it).

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
        """Reward of each `prompt + response`, tokenized as one text exactly as in training (an over-long one
        loses the start of its prompt, as `truncation keep_end` cut it); responses to the same prompt are scored
        as a group (the prompt encoded once, for causal models)."""
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        texts = [p + r for p, r in zip(prompts, responses)]
        return self.score_texts(texts, normalize=normalize, progress=progress, groups=prompts, prompts=prompts)

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
        prompts: list[str] | None = None,
    ) -> list[float]:
        """Reward of each text, in the order given; `progress` shows a bar over the batches.

        `groups`: one key per text (its prompt, say); texts with equal keys are encoded as one tree, their
        common token prefix once (causal models with a `score` head; others ignore it). Any grouping gives
        the same rewards: the shared part is computed from the token ids. `prompts`: where each text's prompt
        ends, for cutting an over-long text as training did (else it loses its beginning).
        """
        if isinstance(texts, str):
            raise TypeError("score_texts takes a list of texts, not one string")
        if groups is not None and len(groups) != len(texts):
            raise ValueError(f"got {len(groups)} group keys for {len(texts)} texts")
        if normalize and (self.reward_mean is None or not self.reward_std):
            raise ValueError("this model's config.json has no reward_mean/reward_std; score with normalize=False")
        ids, _ = self.tokenize(texts, prompts)
        rewards = self.score_ids(ids, groups, progress)
        if normalize:
            rewards = [(r - self.reward_mean) / self.reward_std for r in rewards]
        return rewards

    def prepare_texts(self, texts: list[str]) -> list[str]:
        """Texts as training saw them: HH text rendered with the chat template when the contract says training
        rendered it, and the EOS string at the end when training appended it."""
        if self.renders_hh:
            template = chat_template_of(self.tokenizer)
            texts = [
                self.tokenizer.apply_chat_template(
                    parse_implicit_conversation(t), chat_template=template, tokenize=False
                )
                if t.startswith(HUMAN_MARKER)
                else t
                for t in texts
            ]
        if self.contract is not None and self.contract.append_eos:
            texts = with_eos(texts, self.tokenizer.eos_token)
        return texts

    def tokenize(self, texts: list[str], prompts: list[str] | None = None) -> tuple[list[list[int]], list[bool]]:
        """The token ids the model reads for each text (`prepare_texts`, then training's tokenization), and which
        were cut to `max_length`: with the prompt known, as `truncation keep_end` cuts (the prompt from the left,
        then the response from the right if it alone is too long); else from the left. Special tokens stay."""
        texts = self.prepare_texts(list(texts))
        self._warn_on_unseen_eos(texts)
        ids = self.encode(texts)
        cut = [bool(self.max_length) and len(x) > self.max_length for x in ids]
        lead, trail = (len(a) for a in self.affixes)
        for i in (i for i, over in enumerate(cut) if over):
            prompt = prompts[i] if prompts is not None and self.contract is not None else None
            if prompt and texts[i].startswith(prompt):
                ids[i] = truncate_keep_end(self.tokenizer, prompt, [texts[i][len(prompt) :]], self.max_length)[0]
            else:
                body = ids[i][lead : len(ids[i]) - trail]
                ids[i] = cut_keep_end([(ids[i][:lead], body, [], ids[i][len(ids[i]) - trail :])], self.max_length)[0]
        if any(cut):
            self.truncated_texts += sum(cut)
            self._warn_once(
                "truncated",
                "%d of %d texts are longer than max_length %d tokens: each loses the start of its prompt, as training "
                "cut it (`truncated_texts` counts them)",
                sum(cut),
                len(texts),
                self.max_length,
            )
        return ids, cut

    def score_ids(
        self, ids: list[list[int]], groups: list[Hashable] | None = None, progress: bool = False
    ) -> list[float]:
        """Reward of each token id list (`tokenize`'s), grouped by `groups` as `score_texts` describes."""
        rewards = [0.0] * len(ids)
        if groups is not None and self.group_prompts:
            for batch in tqdm(self.grouped_batches(ids, groups), desc="Scoring", unit="batch", disable=not progress):
                for i, reward in self.forward_grouped(ids, batch):
                    rewards[i] = reward
        else:
            for batch in tqdm(self.batches(ids), desc="Scoring", unit="batch", disable=not progress):
                for i, reward in zip(batch, self.forward([ids[i] for i in batch])):
                    rewards[i] = reward
        return rewards

    def complete_turn_ends(self, texts: list[str]) -> list[str]:
        """Texts that end with the chat template's end-of-turn token but not its whole end-of-turn text (a query
        decoded from a policy's tokens, which stop at EOS: SmolLM2 `<|im_end|>` where the template writes
        `<|im_end|>\\n`) get the rest of it, so the reward is read where training read it. Only for a model trained
        on chat-rendered text."""
        marker = self.turn_end.rstrip()
        if not self.renders_hh or not marker or marker == self.turn_end:
            return texts
        rest = self.turn_end[len(marker) :]
        completed = [t + rest if t.endswith(marker) and not t.endswith(self.turn_end) else t for t in texts]
        if completed != texts:
            self._warn_once("turn_end", "queries end with %r; completed to %r as training rendered turns", marker,
                            self.turn_end)  # fmt: skip
        return completed

    def _warn_on_unseen_eos(self, texts: list[str]) -> None:
        """Warns (once) when texts end with the EOS string although training ended none with it: the reward is
        then read at EOS, one token after where training read it."""
        eos = self.tokenizer.eos_token
        if self.contract is None or self.contract.append_eos or not eos or self.turn_end.endswith(eos):
            return
        ending = sum(t.endswith(eos) for t in texts)
        if ending:
            self._warn_once(
                "eos",
                "%d of %d texts end with the EOS token %r, which training never appended: their reward is read at "
                "it, not where training read it. Remove it (the server: --strip_from_query %r), or train with "
                "--append_eos true",
                ending,
                len(texts),
                eos,
                eos,
            )

    def _warn_once(self, key: str, message: str, *args) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

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
