"""The real data in ../shared/data (HH-RLHF harmless-base, PandaLM): counts and the prompt split, checked
against values computed here independently of `reward_trainer.data`."""

import gzip
import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import SHARED_DATA

from reward_trainer.config import DataArguments
from reward_trainer.data import load_preference_data

HH = SHARED_DATA / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
PANDALM = SHARED_DATA / "pandalm" / "testset-v1.json"
MARKER = "\n\nAssistant:"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real preference data not found at {path} (set REWARD_TRAINER_SHARED_DATA)")
    return path


def hh_prompt(chosen: str, rejected: str) -> str:
    """Independent of the library: the longest turn-aligned common prefix, found turn by turn."""
    prompt = ""
    turns_c, turns_r = chosen.split(MARKER), rejected.split(MARKER)
    for c, r in zip(turns_c[:-1], turns_r[:-1], strict=False):
        if c != r:
            break
        prompt += c + MARKER
    return prompt


def test_hh_counts_and_prompt_split(tmp_path, tiny_tokenizer):
    rows = [json.loads(line) for line in gzip.open(need(HH), "rt", encoding="utf-8")]
    empty = {i for i, r in enumerate(rows, 1) if not r["chosen"][len(hh_prompt(r["chosen"], r["rejected"])):].strip()
             or not r["rejected"][len(hh_prompt(r["chosen"], r["rejected"])):].strip()}  # fmt: skip
    differ_early = sum(
        r["chosen"][: r["chosen"].rfind(MARKER)] != r["rejected"][: r["rejected"].rfind(MARKER)] for r in rows
    )
    assert differ_early > 0  # the data has rows whose conversations differ before the final turn
    assert len(empty) == 4  # a final response of one space: kept, an empty response is a response
    prompts = {i: hh_prompt(r["chosen"], r["rejected"]) for i, r in enumerate(rows, 1)}
    fraction, seed = 0.1, 42
    in_eval = {
        i
        for i, p in prompts.items()
        if int.from_bytes(hashlib.sha1(f"{seed}\x00{p}".encode()).digest()[:8], "big") / 2**64 < fraction
    }

    args = DataArguments(
        dataset_name=str(HH),
        eval_fraction=fraction,
        max_length=None,
        dataset_cache_dir=str(tmp_path),
    )
    result = load_preference_data(args, tiny_tokenizer, seed=seed)
    report = result.report
    assert report["input_rows"] == len(rows)
    assert report["skipped_rows"] == [] and report["skipped"] == 0 and report["empty_responses"] == len(empty)
    assert report["kept"] == len(rows) and report["truncated"] == report["filtered"] == report["ties"] == 0
    assert report["eval_rows"] == len(in_eval) and report["train_rows"] == len(prompts) - len(in_eval)
    # no prompt on both sides: every copy of a prompt went where its first copy went
    eval_prompts, train_prompts = {prompts[i] for i in in_eval}, {p for i, p in prompts.items() if i not in in_eval}
    assert not eval_prompts & train_prompts
    # the pairs are the original conversations, token for token (nothing added: the built-in tokenizer adds none)
    texts = {tuple(tiny_tokenizer(rows[i - 1]["chosen"], add_special_tokens=False)["input_ids"]) for i in in_eval}
    assert {tuple(c) for c in result.eval["chosen_ids"]} == texts


def test_pandalm_loads_with_flags_only(tmp_path, tiny_tokenizer):
    rows = json.loads(need(PANDALM).read_text())
    bad = {i for i, r in enumerate(rows, 1) if any(not isinstance(r[k], str) for k in ("response1", "response2"))}
    bad |= {i for i, r in enumerate(rows, 1) if r["response1"] == r["response2"]}
    empty = sum(not r[k].strip() for i, r in enumerate(rows, 1) if i not in bad for k in ("response1", "response2"))
    winners = {}
    for i, r in enumerate(rows, 1):
        label, count = Counter(str(r[f"annotator{k}"]) for k in (1, 2, 3)).most_common(1)[0]  # ints in the file
        winners[i] = label if count >= 2 and label != "0" else "tie"
    decided = sum(1 for i, w in winners.items() if w != "tie" and i not in bad)
    ties = sum(1 for i, w in winners.items() if w == "tie" and i not in bad)

    args = DataArguments(
        dataset_name=str(PANDALM), prompt_columns=["instruction", "input"], response_columns=["response1", "response2"],
        label_columns=["annotator1", "annotator2", "annotator3"], label_values='{"0": "tie", "1": 0, "2": 1}',
        on_bad_row="skip", max_length=None, eval_fraction=0.1, dataset_cache_dir=str(tmp_path),
    )  # fmt: skip
    result = load_preference_data(args, tiny_tokenizer)
    report = result.report
    assert report["input_rows"] == len(rows) and report["sources"][0]["format"] == "column_mapping"
    assert {r["row"] for r in report["skipped_rows"]} == bad
    assert report["empty_responses"] == empty > 0
    assert report["kept"] == decided and report["ties"] == ties
    assert len(result.train) + sum(t == 0.0 for t in result.eval["tie"]) == decided
    assert sum(t == 1.0 for t in result.eval["tie"]) <= ties
