"""Tokenizing `prompt + response` fast and exactly, with the truncation policy (`keep_end` or `filter`).

A text's ids are `tokenizer(text)["input_ids"]`: the tokenizer's own special tokens, except that a leading one
the text already holds is not repeated (`drop_repeated_lead`). Chat templates of tokenizers that add BOS (Llama 3)
write the BOS into the rendered text; their ids then hold it once, as `apply_chat_template(tokenize=True)`, TRL and
verl give them. With `append_eos` the EOS string ends every text first (`contract.with_eos`).
"""

import bisect
import copy
import hashlib

import numpy as np
import pyarrow as pa
from datasets import Dataset, Features, Sequence, Value
from transformers import PreTrainedTokenizerBase

from ..config import DataArguments
from ..contract import with_eos
from ..errors import DataError
from .mapping import fingerprint, num_proc_for

# Part of the tokenization cache's fingerprint: a change of the rule that turns text into ids changes it.
ENCODING_RULE = "lead-once"


def drop_repeated_lead(ids: list[int], lead: list[int]) -> list[int]:
    """`ids` less the second copy of the tokenizer's leading special tokens `lead` when the text held them too
    (a chat template that writes BOS, under a tokenizer that adds BOS): BOS once."""
    n = len(lead)
    if n and ids[:n] == lead and ids[n : 2 * n] == lead:
        return ids[:n] + ids[2 * n :]
    return ids


def split_special(special_mask: list[int]) -> tuple[int, int]:
    """Numbers of leading and trailing special tokens (BOS/CLS, EOS/SEP)."""
    lead = 0
    while lead < len(special_mask) and special_mask[lead]:
        lead += 1
    trail = 0
    while trail < len(special_mask) - lead and special_mask[-1 - trail]:
        trail += 1
    return lead, trail


def truncate_keep_end(tokenizer, prompt: str, responses: list[str], max_length: int) -> list[list[int]]:
    """`tokenizer(prompt + response)` cut to `max_length` tokens, for each response of a row.

    The prompt is cut from the left (keeping leading special tokens), by the same number of tokens for every
    response of the row so that they keep one shared prompt, and only when a response alone is too long is it
    cut from the right (keeping trailing special tokens). A token that straddles the prompt/response boundary
    belongs to the response. Boundaries come from the offset mapping, so the result is exactly a contiguous
    part of the untruncated token ids.
    """
    return _truncate_rows(tokenizer, [prompt], [responses], max_length)[0]


def _truncate_rows(
    tokenizer, prompts: list[str], responses: list[list[str]], max_length: int
) -> list[list[list[int]]]:
    """`truncate_keep_end` for several rows, splitting each text's ids where the offsets put the prompt's end."""
    texts = [p + r for p, rs in zip(prompts, responses, strict=False) for r in rs]
    encoded = tokenizer(
        texts,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    lead_ids = (special_affixes(tokenizer) or ([], []))[0]
    out, k = [], 0
    for prompt, rs in zip(prompts, responses, strict=False):
        parts = []
        for ids, offsets, special in zip(
            *(encoded[key][k : k + len(rs)] for key in ("input_ids", "offset_mapping", "special_tokens_mask")),
            strict=False,
        ):
            if len(drop_repeated_lead(ids, lead_ids)) < len(ids):  # the text's own copy of the leading tokens goes
                n = len(lead_ids)
                ids, offsets, special = (x[:n] + x[2 * n :] for x in (ids, offsets, special))
            lead, trail = split_special(special)
            middle_ends = [end for _, end in offsets[lead : len(ids) - trail]]
            parts.append(_split_ids(ids, lead, bisect.bisect_right(middle_ends, len(prompt)), trail))
        k += len(rs)
        out.append(cut_keep_end(parts, max_length))
    return out


def _split_ids(ids: list[int], lead: int, n_prompt: int, trail: int) -> tuple[list[int], ...]:
    """(leading special tokens, prompt, response, trailing special tokens) of one text's ids."""
    return ids[:lead], ids[lead : lead + n_prompt], ids[lead + n_prompt : len(ids) - trail], ids[len(ids) - trail :]


def cut_keep_end(parts: list[tuple[list[int], ...]], max_length: int) -> list[list[int]]:
    """One row's responses, each as `_split_ids` parts (leading special tokens, prompt, response, trailing special
    tokens), cut to `max_length` (see `truncate_keep_end`). A text whose prompt is unknown is all prompt: it loses
    its beginning."""
    room = [max_length - len(lead) - len(trail) for lead, _, _, trail in parts]
    if min(room) < 1:
        raise DataError(f"max_length {max_length} leaves no room for text after the special tokens")
    prompt_room = max(0, min(r - len(response) for r, (_, _, response, _) in zip(room, parts, strict=False)))
    row = []
    for r, (lead, prompt_ids, response_ids, trail) in zip(room, parts, strict=False):
        kept_prompt = prompt_ids[len(prompt_ids) - min(prompt_room, len(prompt_ids)) :]
        row.append(lead + kept_prompt + response_ids[: r - len(kept_prompt)] + trail)
    return row


def special_affixes(tokenizer) -> tuple[list[int], list[int]] | None:
    """The special tokens the tokenizer puts before and after one sequence (e.g. [CLS] / [SEP], or - / EOS)."""
    full, bare = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return None


def _pieces(pre_tokenizer, text: str, shift: int = 0) -> list[tuple[int, int]]:
    return [(start + shift, end + shift) for _, (start, end) in pre_tokenizer.pre_tokenize_str(text)]


def _splits_cleanly(pre_tokenizer, prompt_tail: list, tail: str, response: str, window: int = 16) -> bool:
    """Whether pre-tokenizing prompt and response apart gives the pieces of their concatenation near the seam."""
    head = response[:window]
    return _pieces(pre_tokenizer, tail + head) == prompt_tail + _pieces(pre_tokenizer, head, shift=len(tail))


class Encoder:
    """Texts -> token ids, exactly `tokenizer(text)["input_ids"]` (special tokens included unless told; a leading
    special token the text holds is not repeated, `drop_repeated_lead`).

    With `fast=True` it calls the Rust tokenizer's `encode_batch_fast` on a copy with truncation and padding
    off, which skips the offsets and the per-text Python objects of `tokenizer(...)` (a third of the time);
    `tokenize` turns it on only after checking that it gives `tokenizer(...)`'s ids on a sample.
    """

    def __init__(self, tokenizer, fast: bool = False, lead_once: bool = True):
        self.tokenizer, self.backend = tokenizer, None
        self.lead = (special_affixes(tokenizer) or ([], []))[0] if lead_once else []
        if fast:
            self.backend = copy.deepcopy(tokenizer.backend_tokenizer)
            self.backend.no_truncation()
            self.backend.no_padding()

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
        if self.backend is not None:
            ids = [e.ids for e in self.backend.encode_batch_fast(texts, add_special_tokens=add_special_tokens)]
        else:
            # ids only: building attention masks and token type ids would cost a quarter of the time again
            ids = self.tokenizer(
                texts, add_special_tokens=add_special_tokens, return_attention_mask=False, return_token_type_ids=False
            )["input_ids"]
        if add_special_tokens and self.lead:
            ids = [drop_repeated_lead(x, self.lead) for x in ids]
        return ids


def encode_rows(
    encode: Encoder, prompts: list[str], responses: list[list[str]], affixes
) -> tuple[list[list[list[int]]], list[int | None]]:
    """`tokenizer(prompt + response)["input_ids"]` for every response of every row, and per row the number of
    prompt tokens in them when it is known (the prompt was encoded apart for all the row's responses).

    With `affixes` (the tokenizer was checked to allow it, see `tokenize`), the prompt is tokenized once per row
    and each response apart, then joined, wherever the pre-tokenizer splits the text at the seam exactly as it
    splits the parts; elsewhere the whole text is tokenized. Both give the same ids; the first skips the prompt
    for every response after the first, which is most of the text in multi-turn data.
    """
    if affixes is None:
        flat = encode([p + r for p, rs in zip(prompts, responses, strict=False) for r in rs])
        out, start = [], 0
        for rs in responses:
            out.append(flat[start : start + len(rs)])
            start += len(rs)
        return out, [None] * len(out)
    lead, trail = affixes
    pre = encode.tokenizer.backend_tokenizer.pre_tokenizer
    n = len(lead)  # a prompt that starts with the leading special tokens (BOS) gets them once: the added copy
    prompt_ids = [p[n:] if n and p[:n] == lead else p for p in encode(prompts, add_special_tokens=False)]
    response_ids = encode([r for rs in responses for r in rs], add_special_tokens=False)
    out, prompt_lengths, whole, k = [], [], [], 0
    for i, (prompt, rs) in enumerate(zip(prompts, responses, strict=False)):
        tail = prompt[-16:]
        tail_pieces = _pieces(pre, tail) if prompt else []
        row = []
        for j, response in enumerate(rs):
            if not prompt or _splits_cleanly(pre, tail_pieces, tail, response):
                row.append(drop_repeated_lead(lead + prompt_ids[i] + response_ids[k] + trail, lead))
            else:
                row.append(None)
                whole.append((i, j, prompt + response))
            k += 1
        out.append(row)
        prompt_lengths.append(None if None in row else len(prompt_ids[i]))
    if whole:
        for (i, j, _), ids in zip(whole, encode([text for _, _, text in whole]), strict=False):
            out[i][j] = ids
    return out, prompt_lengths


def _nested_ids(rows: list[list[list[int]]]) -> pa.Array:
    """Arrow `list<list<int32>>` of the rows' id lists, built level by level (faster than `datasets`' generic
    conversion: BENCHMARKS.md, preprocessing)."""
    sequences = pa.array([ids for row in rows for ids in row], type=pa.list_(pa.int32()))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum([len(row) for row in rows], out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), sequences)


def tokenize_batch(
    batch: pa.Table, encode: Encoder, max_length: int | None, truncation: str, affixes, eos: str | None = None
) -> pa.Table:
    """Adds `ids` and `_status` to a batch of rows; `eos`: the EOS string each text ends with (`append_eos`)."""
    prompts, responses = batch["prompt"].to_pylist(), batch["responses"].to_pylist()
    if eos is not None:  # appended to the response, so that the prompt's tokens stay shared
        responses = [[r[len(p) :] for r in with_eos([p + r for r in rs], eos)] for p, rs in zip(prompts, responses)]
    ids, prompt_lengths = encode_rows(encode, prompts, responses, affixes)
    status = ["kept"] * len(ids)
    too_long = [i for i, row in enumerate(ids) if max_length is not None and any(len(x) > max_length for x in row)]
    if truncation == "filter":
        for i in too_long:
            ids[i], status[i] = [], "filtered"
    elif too_long:
        # Where the prompt was encoded apart, its end is known; elsewhere the offsets say where it is.
        unknown = [i for i in too_long if prompt_lengths[i] is None]
        cut = {}
        if unknown:
            rows = _truncate_rows(
                encode.tokenizer, [prompts[i] for i in unknown], [responses[i] for i in unknown], max_length
            )
            cut = dict(zip(unknown, rows, strict=True))
        for i in too_long:
            if i not in cut:
                lead, trail = (len(a) for a in affixes)
                cut[i] = cut_keep_end([_split_ids(x, lead, prompt_lengths[i], trail) for x in ids[i]], max_length)
            ids[i], status[i] = cut[i], "truncated"
    return batch.append_column("ids", _nested_ids(ids)).append_column("_status", pa.array(status, pa.string()))


def plan_encoding(tokenizer, rows: Dataset, sample: int = 64) -> tuple[Encoder, tuple | None]:
    """The fastest `Encoder` and prompt/response split (`special_affixes`, or None: whole texts) that reproduce
    `tokenizer(prompt + response)["input_ids"]` on a sample of the rows."""
    slow = Encoder(tokenizer)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or len(rows) == 0:
        return slow, None
    head = rows.select(range(min(sample, len(rows))))
    prompts, responses = list(head["prompt"]), list(head["responses"])
    reference = encode_rows(slow, prompts, responses, None)[0]
    fast = Encoder(tokenizer, fast=True)
    encode = fast if encode_rows(fast, prompts, responses, None)[0] == reference else slow
    affixes = special_affixes(tokenizer) if backend.pre_tokenizer is not None else None
    if affixes is not None and encode_rows(encode, prompts, responses, affixes)[0] != reference:
        affixes = None
    return encode, affixes


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    state = backend.to_str() if backend is not None else repr(tokenizer)
    return hashlib.sha256(f"{type(tokenizer).__name__}{state}{tokenizer.all_special_tokens}".encode()).hexdigest()


def tokenize(rows: Dataset, tokenizer: PreTrainedTokenizerBase, data_args: DataArguments) -> Dataset:
    """Adds `ids` (token ids of prompt + response, per response) and `_status` (kept/truncated/filtered)."""
    if data_args.truncation not in ("keep_end", "filter"):
        raise DataError(f"truncation must be `keep_end` or `filter`, got {data_args.truncation!r}")
    eos = tokenizer.eos_token if data_args.append_eos else None
    if data_args.append_eos and eos is None:
        raise DataError("--append_eos: the tokenizer has no EOS token")
    settings = (data_args.max_length, data_args.truncation, eos, ENCODING_RULE)
    encode, affixes = plan_encoding(tokenizer, rows)
    tokenized = rows.with_format("arrow").map(
        tokenize_batch,
        batched=True,
        fn_kwargs={
            "encode": encode,
            "max_length": data_args.max_length,
            "truncation": data_args.truncation,
            "affixes": affixes,
            "eos": eos,
        },
        num_proc=num_proc_for(data_args.dataset_num_proc, rows),
        features=Features({**rows.features, "ids": Sequence(Sequence(Value("int32"))), "_status": Value("string")}),
        new_fingerprint=fingerprint(rows._fingerprint, tokenizer_fingerprint(tokenizer), *settings),
        desc="Tokenizing",
    )
    return tokenized.with_format(None)
