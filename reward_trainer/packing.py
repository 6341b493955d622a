"""Prefix sharing: encode the prompt of a pair once, and each response once per batch.

A causal model's reward for `prompt + response` depends only on the tokens up to the response's last
token, so the two sequences of a pair can share one encoding of their prompt. One row holds

    [prompt | chosen response | rejected response]

with position ids that restart at the prompt's end for every response, and a 4D attention mask in
which a response token sees the prompt and the earlier tokens of its own response, never another
response. Each reward is read from the backbone's hidden state at the last token of its response and
passed through the `score` head: the same numbers as the plain forward over the two padded sequences.

Sequences that occur more than once in a batch (rankings of K responses expanded into pairs) are
encoded once: all unique sequences linked by a pair, or by an equal `group` id, form one tree with one
shared prompt (their longest common prefix). Trees are then packed first-fit into rows no longer than
the longest tree, which removes most padding without making any row longer.

Only exact for causal attention: a bidirectional encoder (BERT) would let the prompt see the
responses; `supports_prefix_sharing` says no for those, and the plain path is used.

Each attention implementation of transformers takes the tree mask its own way, or not at all:
    eager            an additive float mask (0 where a token may attend, the dtype's minimum elsewhere);
    sdpa             the boolean 4D mask; on CUDA the memory-efficient or cuDNN kernel runs it (the flash kernel
                     of SDPA takes no mask), on the CPU the fused CPU flash kernel does;
    flex_attention   a `BlockMask` built from the boolean mask: blocks the tree hides are skipped. transformers
                     passes a 4D tensor to flex as an additive score, so the boolean mask is never given as is;
    flash_attention_2 and the other flash kernels: no custom mask (only causal masks over padded or packed
                     sequences, where a response would see the other one): prefix sharing is off, with one
                     warning that says so and what it costs.
"""

import logging
from dataclasses import dataclass

import torch

from .heads import base_model_of

logger = logging.getLogger("reward_trainer")

# The attention implementations that compute exactly under the prefix-sharing mask (see the module docstring).
PREFIX_SHARING_ATTENTION = ("eager", "sdpa", "flex_attention")


def shared_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def unique_sequences(rows: list[dict]) -> tuple[list[list[int]], list[int], list[int]]:
    """The distinct sequences of a batch, and for each pair the index of its chosen and rejected one."""
    index: dict[tuple[int, ...], int] = {}
    chosen, rejected = [], []
    for row in rows:
        for key, out in (("chosen_ids", chosen), ("rejected_ids", rejected)):
            out.append(index.setdefault(tuple(row[key]), len(index)))
    return [list(seq) for seq in index], chosen, rejected


def sequence_trees(rows: list[dict], chosen: list[int], rejected: list[int], n: int) -> list[list[int]]:
    """Groups sequence indices into trees: sequences joined by a pair or by an equal `group` of their rows."""
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_of_group: dict[int, int] = {}
    for row, c, r in zip(rows, chosen, rejected, strict=True):
        parent[find(c)] = find(r)
        if row.get("group") is not None:
            g = first_of_group.setdefault(int(row["group"]), c)
            parent[find(c)] = find(g)
    trees: dict[int, list[int]] = {}
    for i in range(n):
        trees.setdefault(find(i), []).append(i)
    return list(trees.values())


def shared_row_length(chosen: list[int], rejected: list[int]) -> int:
    """Tokens of the prefix-shared row `[prompt | chosen | rejected]` of one pair: the work it costs.

    The prompt keeps out the last token of the shorter side, where its reward is read (as in `build_tree`).
    """
    prompt = min(shared_prefix_length(chosen, rejected), min(len(chosen), len(rejected)) - 1)
    return len(chosen) + len(rejected) - max(prompt, 0)


@dataclass
class Tree:
    """One shared prompt and the responses that follow it; `members` index the batch's unique sequences."""

    members: list[int]
    prompt: list[int]
    responses: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt) + sum(len(r) for r in self.responses)


def build_tree(members: list[int], sequences: list[list[int]]) -> Tree:
    seqs = [sequences[i] for i in members]
    p = min(len(s) for s in seqs) - 1  # every response keeps at least its last token, where its reward is read
    for s in seqs[1:]:
        p = min(p, shared_prefix_length(seqs[0], s))
    p = max(p, 0)
    return Tree(members, seqs[0][:p], [s[p:] for s in seqs])


def pack_trees(trees: list[Tree], capacity: int) -> list[list[Tree]]:
    """First-fit decreasing: rows of trees whose total length is at most `capacity`."""
    rows: list[list[Tree]] = []
    free: list[int] = []
    for tree in sorted(trees, key=len, reverse=True):
        for i, room in enumerate(free):
            if len(tree) <= room:
                rows[i].append(tree)
                free[i] -= len(tree)
                break
        else:
            rows.append([tree])
            free.append(capacity - len(tree))
    return rows


def _layout(rows: list[dict], pack: bool, pad_to_multiple_of: int | None):
    """The batch's unique sequences, each pair's chosen and rejected index into them, the rows of trees and the
    row length."""
    sequences, chosen, rejected = unique_sequences(rows)
    trees = [build_tree(members, sequences) for members in sequence_trees(rows, chosen, rejected, len(sequences))]
    length = max(len(t) for t in trees)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    layout = pack_trees(trees, length) if pack else [[t] for t in trees]
    return sequences, chosen, rejected, layout, length


def prefix_shared_positions(rows: list[dict], pack: bool = True, pad_to_multiple_of: int | None = None) -> int:
    """Token positions the prefix-shared layout of these pairs runs: rows x row length, padding included."""
    _, _, _, layout, length = _layout(rows, pack, pad_to_multiple_of)
    return len(layout) * length


def prefix_shared_batch(
    rows: list[dict], pad_token_id: int, pack: bool = True, pad_to_multiple_of: int | None = None
) -> dict[str, torch.Tensor]:
    """Lays out a batch of pairs as prefix-shared rows.

    Returns `input_ids` and `position_ids` (R, T), `attention_mask` (R, 1, T, T) bool (True: may attend),
    `reward_index` (U,) flat index into R*T of the last token of each unique sequence, and
    `chosen_index`/`rejected_index` (B,) into those U rewards.
    """
    sequences, chosen, rejected, layout, length = _layout(rows, pack, pad_to_multiple_of)
    n_rows = len(layout)
    input_ids = torch.full((n_rows, length), pad_token_id, dtype=torch.long)  # (R, T)
    position_ids = torch.zeros((n_rows, length), dtype=torch.long)
    segment = torch.full((n_rows, length), -1, dtype=torch.long)  # which tree of the row; -1: padding
    branch = torch.zeros((n_rows, length), dtype=torch.long)  # 0: prompt, k: k-th response of the tree
    reward_index = torch.zeros(len(sequences), dtype=torch.long)
    for r, row_trees in enumerate(layout):
        t = 0
        for s, tree in enumerate(row_trees):
            p = len(tree.prompt)
            input_ids[r, t : t + p] = torch.as_tensor(tree.prompt, dtype=torch.long)
            position_ids[r, t : t + p] = torch.arange(p)
            segment[r, t : t + p] = s
            t += p
            for k, (member, response) in enumerate(zip(tree.members, tree.responses, strict=True), start=1):
                n = len(response)
                input_ids[r, t : t + n] = torch.as_tensor(response, dtype=torch.long)
                position_ids[r, t : t + n] = torch.arange(p, p + n)
                segment[r, t : t + n] = s
                branch[r, t : t + n] = k
                reward_index[member] = r * length + t + n - 1
                t += n

    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (T, T)
    same_tree = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)  # (R, T, T)
    same_branch = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    mask = same_tree & same_branch & causal
    mask |= torch.eye(length, dtype=torch.bool)  # padding attends to itself, so no softmax row is empty
    return {
        "input_ids": input_ids,
        "attention_mask": mask[:, None],  # (R, 1, T, T)
        "position_ids": position_ids,
        "reward_index": reward_index,
        "chosen_index": torch.tensor(chosen, dtype=torch.long),
        "rejected_index": torch.tensor(rejected, dtype=torch.long),
    }


def prefix_sharing_refusal(model) -> tuple[str, str] | None:
    """Why prefix sharing would not be exact on `model`, as (kind, words), or None when it is.

    kind is `architecture` (no `score` head, or bidirectional attention: the plain path by design) or
    `attention` (a causal reward model whose attention implementation takes no custom mask).
    """
    model = base_model_of(model)  # PEFT
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    if backbone is None or not hasattr(model, "score"):
        return "architecture", "no backbone with a `score` head"
    if not any(getattr(m, "is_causal", False) is True for m in backbone.modules()):
        return "architecture", "bidirectional attention: the prompt would see the responses"
    attention = model.config._attn_implementation
    if attention not in PREFIX_SHARING_ATTENTION:
        return "attention", f"attention implementation {attention!r} takes no custom attention mask"
    return None


def supports_prefix_sharing(model) -> bool:
    """True for causal backbones with a `score` head whose attention computes exactly under the tree mask
    (`PREFIX_SHARING_ATTENTION`). A causal reward model on another attention implementation (flash attention)
    gets one warning: prefix sharing is off, and what that costs."""
    refusal = prefix_sharing_refusal(model)
    if refusal is not None and refusal[0] == "attention":
        logger.warning(
            "prefix sharing off: %s (a response would see the other responses of its prompt). Each sequence is "
            "encoded whole, every prompt once per response, in batches padded to their longest sequence: the "
            "work prefix sharing saves. The `sdpa` or `flex_attention` implementation (`--attn_implementation`) "
            "keeps it on, with the same rewards.",
            refusal[1],
        )
    return refusal is None


def flex_block_mask(mask: torch.Tensor):
    """The boolean (R, 1, T, T) prefix-sharing mask as flex attention's `BlockMask` (True: may attend)."""
    from torch.nn.attention.flex_attention import create_block_mask

    rows, length = mask.shape[0], mask.shape[-1]
    # Indexed as (R, T*T): inductor's CPU flex kernel (torch 2.13) fails to compile a mask that indexes a 3D tensor
    # once the batch shapes vary and it recompiles with dynamic shapes; a 2D index compiles.
    flat = mask.reshape(rows, length * length)
    return create_block_mask(
        lambda b, h, q, kv: flat[b, q * length + kv], rows, None, length, length, device=mask.device, _compile=False
    )


def at_least_float32(values: torch.Tensor) -> torch.Tensor:
    """`values` (rewards, the head's inputs) in float32 from a bf16 or fp16 forward, for the loss and statistics;
    float64 ones stay float64."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def prefix_shared_rewards(model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rewards (U,) (or (U, K) for a head of K outputs) of the unique sequences of a batch laid out by `prefix_shared_batch`.

    Runs the model's own forward (so DDP, FSDP, DeepSpeed and autocast wrappers all apply) and reads the
    per-token output of its `score` head, captured by a hook, at each response's last token.
    """
    inner = base_model_of(model)  # inside DDP / DeepSpeed / FSDP and PEFT wrappers
    mask = inputs["attention_mask"]
    attention = inner.config._attn_implementation
    if attention == "eager":  # eager attention adds the mask to the scores
        dtype = next(inner.parameters()).dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    elif attention == "flex_attention":  # a 4D tensor would be added to the scores: flex takes a BlockMask
        mask = flex_block_mask(mask)
    captured = []
    handle = inner.score.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=inputs["input_ids"], attention_mask=mask, position_ids=inputs["position_ids"], use_cache=False)
    finally:
        handle.remove()
    per_token = captured[0]  # (R, T, K): K = 1, or 2 with a length head
    rewards = at_least_float32(per_token.reshape(-1, per_token.shape[-1])[inputs["reward_index"]])  # (U, K)
    return rewards.squeeze(-1) if rewards.shape[-1] == 1 else rewards
