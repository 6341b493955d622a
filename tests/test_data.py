"""Preference data: formats, sources, the prompt split, truncation, pairs, the row accounting, caching."""

import copy
import gzip
import json
import os
import random

import pyarrow as pa
import pytest
from datasets import Dataset, DatasetDict
from transformers import BertTokenizerFast

import reward_trainer.data.sources as sources
import reward_trainer.data.tokenizing as tokenizing
from reward_trainer.chat import common_prefix_length
from reward_trainer.config import DataArguments
from reward_trainer.data import load_preference_data, split_implicit_prompt, write_data_report
from reward_trainer.data.formats import detect_format, prompt_bucket
from reward_trainer.data.tokenizing import truncate_keep_end
from reward_trainer.errors import DataError

BUCKETS = ("kept", "truncated", "filtered", "ties", "single_responses", "skipped", "unused")


@pytest.fixture(scope="module")
def word_tokenizer():
    """A BERT-style tokenizer with one token per word: [CLS] words [SEP], so ids can be derived by hand."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"a b c d e f g h".split(), ":", "?"]
    return BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})


def ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs(n, prefix="Question"):
    return [{"prompt": f"{prefix} {i}?", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(n)]


def load(path, tokenizer, tmp_path, **kw):
    kw.setdefault("eval_fraction", 0.0)
    return load_preference_data(
        DataArguments(dataset_name=str(path), dataset_cache_dir=str(tmp_path / "cache"), **kw), tokenizer
    )


def assert_accounted(report):
    assert sum(report[k] for k in BUCKETS) == report["input_rows"]


# ----------------------------------------------------------------------------------------------- pure functions


def test_common_prefix_length_matches_os_path_commonprefix():
    rng = random.Random(0)
    for _ in range(500):
        a = "".join(rng.choice("ab\n") for _ in range(rng.randrange(12)))
        b = a[: rng.randrange(len(a) + 1)] + "".join(rng.choice("ab\n") for _ in range(rng.randrange(12)))
        assert common_prefix_length(a, b) == len(os.path.commonprefix([a, b])), (a, b)


def test_json_array_is_read_element_by_element_whatever_the_chunk_size(tmp_path):
    """Streamed in chunks as small as one byte: numbers, multi-byte UTF-8 and nesting cut anywhere read whole."""
    records = [
        {"prompt": "Qé 🙂", "chosen": " a", "rejected": " b", "margin": 12345.5},
        {"prompt": "Q2", "chosen": ' ["x", {}]', "rejected": " c", "scores": [1, -20]},
        1234,  # a top-level number: a chunk may end inside it
        {"nested": {"list": [1, 2, {"deep": "ü"}]}},
    ]
    path = tmp_path / "a.json"
    path.write_text(
        "[\n" + ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n] \n", encoding="utf-8"
    )
    for chunk_size in (1, 2, 3, 7, 1 << 20):
        rows = list(sources.json_array_rows(str(path), None, chunk_size=chunk_size))
        assert [json.loads(r["_json"]) for r in rows] == records, chunk_size
        assert [r["_row"] for r in rows] == [1, 2, 3, 4]
    for text, line in (("[{}, {} {}]", 1), ("[{},\n\n{]", 3), ("[{}] x", 1)):
        path.write_text(text)
        with pytest.raises(DataError, match=f"line {line}: malformed JSON"):
            list(sources.json_array_rows(str(path), None, chunk_size=2))


def test_split_implicit_prompt_at_the_last_shared_assistant_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: sure"
    rejected = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: no"
    assert split_implicit_prompt(chosen, rejected) == (
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:",
        " sure",
        " no",
    )


def test_split_implicit_prompt_when_conversations_differ_before_the_final_turn():
    chosen = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant: sure"
    rejected = "\n\nHuman: hi\n\nAssistant: go away\n\nHuman: rude\n\nAssistant: yes"
    prompt, c, r = split_implicit_prompt(chosen, rejected)
    assert prompt == "\n\nHuman: hi\n\nAssistant:"
    assert prompt + c == chosen and prompt + r == rejected  # nothing mangled: the texts are the originals


@pytest.mark.parametrize(
    "columns, example, expected",
    [
        ({"prompt", "chosen", "rejected"}, {"chosen": "x"}, "explicit_prompt"),
        ({"chosen", "rejected"}, {"chosen": "x"}, "implicit_prompt"),
        ({"chosen", "rejected"}, {"chosen": [{"role": "user", "content": "x"}]}, "conversational"),
        ({"prompt", "chosen", "rejected", "margin"}, {"chosen": "x"}, "explicit_prompt"),
        ({"prompt", "responses", "scores"}, {"responses": ["a", "b", "c"]}, "ranking"),
    ],
)
def test_detect_format(columns, example, expected):
    assert detect_format(columns, example) == expected


def test_detect_format_names_the_columns_it_could_not_use():
    with pytest.raises(DataError, match="response_columns"):
        detect_format({"question", "answer"}, {})


def test_keep_end_cuts_the_prompt_from_the_left_by_hand(word_tokenizer):
    """prompt "a b c d", responses " e f" and " g"; [CLS]=2, [SEP]=3, a..h=4..11.

    Untruncated: [CLS] a b c d e f [SEP] (8) and [CLS] a b c d g [SEP] (7). max_length 6 leaves 4 text tokens;
    the longer response needs 2, so both keep the last 2 prompt tokens "c d": the same prompt for both."""
    assert ids(word_tokenizer, "a b c d e f") == [2, 4, 5, 6, 7, 8, 9, 3]
    assert truncate_keep_end(word_tokenizer, "a b c d", [" e f", " g"], 6) == [[2, 6, 7, 8, 9, 3], [2, 6, 7, 10, 3]]


def test_keep_end_cuts_the_response_only_when_it_alone_is_too_long(word_tokenizer):
    # max_length 4: room for 2 text tokens = all of " e f": no prompt left; max_length 3: " e f" is cut to "e"
    assert truncate_keep_end(word_tokenizer, "a b c d", [" e f", " g"], 4) == [[2, 8, 9, 3], [2, 10, 3]]
    assert truncate_keep_end(word_tokenizer, "a b c d", [" e f", " g"], 3) == [[2, 8, 3], [2, 10, 3]]


@pytest.mark.parametrize("appends_eos", [False, True])
def test_keep_end_keeps_the_end_and_trailing_special_tokens(tiny_tokenizer, appends_eos):
    """The built-in tokenizer adds no special token; the one saved with `tests/data/legacy-gpt2` appends EOS, which
    stays."""
    from conftest import REPO_ROOT
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(REPO_ROOT / "tests/data/legacy-gpt2") if appends_eos else tiny_tokenizer
    prompt, responses = "cat dog fox owl bee | code of cat?\nanswer:", [" red", " sky"]
    full = [ids(tokenizer, prompt + r) for r in responses]
    cut = truncate_keep_end(tokenizer, prompt, responses, 6)
    for whole, short, response in zip(full, cut, responses, strict=True):
        end = tokenizer(response, add_special_tokens=False)["input_ids"][-1]
        assert len(short) == 6 and short[-2:] == ([end, tokenizer.eos_token_id] if appends_eos else [short[-2], end])
        # a contiguous tail of the untruncated ids: the prompt was cut from the left, the response kept whole
        assert whole[-6:] == short


def test_keep_end_gives_the_same_ids_whether_the_prompt_was_encoded_apart_or_not(tiny_tokenizer, word_tokenizer):
    """Truncation splits at the prompt's end: known from the separate encoding, else found from offsets."""
    batch = pa.table({
        "prompt": ["a b c d", "cat dog fox owl bee | code of cat?\nanswer:", "x y"],
        "responses": [[" e f", " g"], [" red", " sky blue"], [" z z z z z z z z", " w"]],
    })  # fmt: skip
    for tokenizer in (tiny_tokenizer, word_tokenizer):
        affixes = tokenizing.special_affixes(tokenizer)
        for max_length in (3, 4, 6):
            apart = tokenizing.tokenize_batch(
                batch, tokenizing.Encoder(tokenizer, True), max_length, "keep_end", affixes
            )
            whole = tokenizing.tokenize_batch(batch, tokenizing.Encoder(tokenizer), max_length, "keep_end", None)
            assert apart["ids"].to_pylist() == whole["ids"].to_pylist(), (tokenizer, max_length)
            assert "truncated" in apart["_status"].to_pylist()


# ----------------------------------------------------------------------------------------------- formats


def test_explicit_prompt_ids_are_those_of_prompt_plus_response(tmp_path, tiny_tokenizer):
    rows = pairs(20)
    result = load(write_jsonl(tmp_path / "p.jsonl", rows), tiny_tokenizer, tmp_path)
    train = result.train
    assert len(train) == 20 and result.eval is None
    by_chosen = {tuple(r["chosen_ids"]): r for r in train}
    for row in rows:
        pair = by_chosen[tuple(ids(tiny_tokenizer, row["prompt"] + row["chosen"]))]
        assert pair["rejected_ids"] == ids(tiny_tokenizer, row["prompt"] + row["rejected"])
        assert pair["weight"] == 1.0 and pair["tie"] == 0.0
    assert result.report["sources"][0]["format"] == "explicit_prompt"


def test_implicit_prompt_hh_format(tmp_path, tiny_tokenizer):
    rows = [
        {"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}", "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}"}
        for i in range(5)
    ]
    result = load(write_jsonl(tmp_path / "hh.jsonl", rows), tiny_tokenizer, tmp_path)
    assert result.report["sources"][0]["format"] == "implicit_prompt"
    assert sorted(map(tuple, result.train["chosen_ids"])) == sorted(
        tuple(ids(tiny_tokenizer, r["chosen"])) for r in rows
    )


def test_conversational_uses_the_chat_template_or_a_default(tmp_path, tiny_tokenizer):
    msg = lambda role, text: {"role": role, "content": text}  # noqa: E731
    rows = [
        {
            "chosen": [msg("user", f"key {i}"), msg("assistant", "red")],
            "rejected": [msg("user", f"key {i}"), msg("assistant", "tan")],
        }
        for i in range(4)
    ]
    result = load(write_jsonl(tmp_path / "c.jsonl", rows), tiny_tokenizer, tmp_path)
    assert result.report["sources"][0]["format"] == "conversational"
    chosen = sorted(map(tuple, result.train["chosen_ids"]))
    # the default template: "role: content" turns separated by blank lines
    assert chosen == sorted(tuple(ids(tiny_tokenizer, f"user: key {i}\n\nassistant: red\n\n")) for i in range(4))


def test_margins_and_scores(tmp_path, tiny_tokenizer):
    rows = [dict(p, margin=float(i)) for i, p in enumerate(pairs(3))]
    train = load(write_jsonl(tmp_path / "m.jsonl", rows), tiny_tokenizer, tmp_path).train
    assert sorted(train["margin"]) == [0.0, 1.0, 2.0]
    rows = [dict(p, score_chosen=7.0, score_rejected=float(i)) for i, p in enumerate(pairs(3))]
    train = load(write_jsonl(tmp_path / "s.jsonl", rows), tiny_tokenizer, tmp_path).train
    assert sorted(train["margin"]) == [5.0, 6.0, 7.0]


def test_ties_are_kept_for_eval_with_weight_0_and_left_out_of_training(tmp_path, tiny_tokenizer):
    rows = [dict(p, tie=i % 2 == 0) for i, p in enumerate(pairs(40))]  # 20 ties
    result = load(write_jsonl(tmp_path / "t.jsonl", rows), tiny_tokenizer, tmp_path, eval_fraction=0.5)
    report = result.report
    assert report["ties"] == 20 and report["kept"] == 20
    assert all(t == 0.0 for t in result.train["tie"])
    eval_ties = [(w, t) for w, t in zip(result.eval["weight"], result.eval["tie"], strict=False) if t == 1.0]
    assert eval_ties and all(w == 0.0 for w, _ in eval_ties)
    assert len(result.train) + len(result.eval) == 20 + len(eval_ties)


def test_ranking_expands_to_all_pairs_with_weight_summing_to_1(tmp_path, tiny_tokenizer):
    rows = [
        {"prompt": "Rank 1:", "responses": [" a", " b", " c", " d"]},
        {"prompt": "Rank 2:", "responses": [" x", " y"], "scores": [1.0, 3.0]},
    ]
    train = load(write_jsonl(tmp_path / "r.jsonl", rows), tiny_tokenizer, tmp_path).train
    assert len(train) == 6 + 1  # K(K-1)/2 pairs per prompt
    groups = {}
    for pair in train:
        groups.setdefault(pair["group"], []).append(pair)
    assert sorted(len(g) for g in groups.values()) == [1, 6]
    for group in groups.values():
        assert sum(p["weight"] for p in group) == pytest.approx(1.0)
    [single] = [g for g in groups.values() if len(g) == 1]
    assert single[0]["chosen_ids"] == ids(tiny_tokenizer, "Rank 2: y")  # ordered by score, not position
    assert single[0]["margin"] == 2.0
    [four] = [g for g in groups.values() if len(g) == 6]
    best = ids(tiny_tokenizer, "Rank 1: a")
    assert sum(p["chosen_ids"] == best for p in four) == 3  # the best response wins its 3 pairs


def test_column_mapping_majority_of_annotators(tmp_path, tiny_tokenizer):
    rows = [
        {"q": "Do 1", "ctx": "", "r1": "one", "r2": "two", "a1": "1", "a2": "1", "a3": "2"},  # response 1 wins
        {"q": "Do 2", "ctx": "now", "r1": "one", "r2": "two", "a1": "2", "a2": "2", "a3": "0"},  # response 2 wins
        {"q": "Do 3", "ctx": "", "r1": "one", "r2": "two", "a1": "0", "a2": "0", "a3": "1"},  # tie by majority
        {"q": "Do 4", "ctx": "", "r1": "one", "r2": "two", "a1": "0", "a2": "1", "a3": "2"},  # no majority: tie
    ]
    path = tmp_path / "pl.json"
    path.write_text(json.dumps(rows))
    result = load(path, tiny_tokenizer, tmp_path, prompt_columns=["q", "ctx"], response_columns=["r1", "r2"],
                  label_columns=["a1", "a2", "a3"], label_values='{"0": "tie", "1": 0, "2": 1}')  # fmt: skip
    assert result.report["ties"] == 2 and result.report["kept"] == 2
    chosen = {tuple(p["chosen_ids"]) for p in result.train}  # ties stay out of training
    assert chosen == {tuple(ids(tiny_tokenizer, "Do 1\n\none")), tuple(ids(tiny_tokenizer, "Do 2\n\nnow\n\ntwo"))}


def test_column_mapping_renames(tmp_path, tiny_tokenizer):
    rows = [{"question": f"Q{i}", "good": f" g{i}", "bad": f" b{i}"} for i in range(3)]
    result = load(write_jsonl(tmp_path / "x.jsonl", rows), tiny_tokenizer, tmp_path,
                  column_mapping='{"question": "prompt", "good": "chosen", "bad": "rejected"}')  # fmt: skip
    assert result.report["sources"][0]["format"] == "explicit_prompt" and len(result.train) == 3


# ----------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "parquet", "csv", "save_to_disk"])
def test_every_local_source_kind_loads_the_same_pairs(kind, tmp_path, tiny_tokenizer):
    rows = pairs(12)
    path = tmp_path / f"pairs.{kind}"
    if kind == "jsonl":
        write_jsonl(path, rows)
    elif kind == "jsonl.gz":
        with gzip.open(path, "wt") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    elif kind == "csv":
        Dataset.from_list(rows).to_csv(str(path), index=False)
    else:
        Dataset.from_list(rows).save_to_disk(str(path))
    train = load(path, tiny_tokenizer, tmp_path).train
    expected = sorted(tuple(ids(tiny_tokenizer, r["prompt"] + r["chosen"])) for r in rows)
    assert sorted(map(tuple, train["chosen_ids"])) == expected


def test_a_saved_dataset_dict_uses_its_own_eval_split(tmp_path, tiny_tokenizer):
    DatasetDict({"train": Dataset.from_list(pairs(10)), "test": Dataset.from_list(pairs(4, "Other"))}).save_to_disk(
        str(tmp_path / "dd")
    )
    result = load(tmp_path / "dd", tiny_tokenizer, tmp_path, eval_fraction=0.5)
    assert len(result.train) == 10 and len(result.eval) == 4


def test_a_hub_name_goes_to_load_dataset_with_its_config_and_splits(tmp_path, tiny_tokenizer, monkeypatch):
    """No network in tests: `datasets.load_dataset` is replaced by what the Hub would give for an HH-style name."""
    hub = DatasetDict({
        "train": Dataset.from_list([{"chosen": f"\n\nHuman: q{i}\n\nAssistant: yes {i}",
                                     "rejected": f"\n\nHuman: q{i}\n\nAssistant: no {i}"} for i in range(6)]),
        "test": Dataset.from_list([{"chosen": "\n\nHuman: t\n\nAssistant: ok", "rejected": "\n\nHuman: t\n\nAssistant: bad"}]),
    })  # fmt: skip
    calls = []
    monkeypatch.setattr(sources, "load_dataset", lambda *a, **k: calls.append((a, k)) or hub)
    result = load("Anthropic/hh-rlhf", tiny_tokenizer, tmp_path, dataset_config="harmless-base")
    assert calls[0][0] == ("Anthropic/hh-rlhf", "harmless-base")
    assert len(result.train) == 6 and len(result.eval) == 1  # the dataset's own test split is the eval set
    assert result.train[0]["chosen_ids"] == ids(tiny_tokenizer, "\n\nHuman: q0\n\nAssistant: yes 0")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'Anthropic/hh-rlhf' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(sources, "load_dataset", offline)
    with pytest.raises(
        DataError, match=r"^cannot load dataset 'Anthropic/hh-rlhf' from the Hub: Couldn't reach"
    ) as err:
        load("Anthropic/hh-rlhf", tiny_tokenizer, tmp_path)
    assert "\n" not in str(err.value)


def test_mixture_weights_take_a_fraction_of_each_source(tmp_path, tiny_tokenizer):
    a = write_jsonl(tmp_path / "a.jsonl", pairs(40, "A"))
    b = write_jsonl(tmp_path / "b.jsonl", pairs(10, "B"))
    args = DataArguments(
        dataset_mixture=json.dumps({a: 0.25, b: 1.0}), eval_fraction=0.0, dataset_cache_dir=str(tmp_path / "c")
    )
    result = load_preference_data(args, tiny_tokenizer)
    assert len(result.train) == 10 + 10 and result.report["unused"] == 30 and result.report["input_rows"] == 50
    assert_accounted(result.report)
    with pytest.raises(DataError, match="weight"):
        load_preference_data(DataArguments(dataset_mixture=json.dumps({a: 2})), tiny_tokenizer)


def test_missing_file_is_a_data_error(tiny_tokenizer):
    with pytest.raises(DataError, match="does not exist"):
        load_preference_data(DataArguments(dataset_name="/nonexistent/pairs.jsonl"), tiny_tokenizer)


# ----------------------------------------------------------------------------------------------- split, report


def test_split_by_prompt_is_deterministic_and_disjoint(tmp_path, tiny_tokenizer):
    rows = [
        dict(p, chosen=f" good {j}", rejected=f" bad {j}") for j in range(3) for p in pairs(60)
    ]  # 3 rows per prompt
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    first = load(path, tiny_tokenizer, tmp_path, eval_fraction=0.3)
    again = load(path, tiny_tokenizer, tmp_path, eval_fraction=0.3)
    prompt_of = lambda pairs_: {tiny_tokenizer.decode(c).split(" good")[0] for c in pairs_["chosen_ids"]}  # noqa: E731
    train_prompts, eval_prompts = prompt_of(first.train), prompt_of(first.eval)
    assert train_prompts and eval_prompts and not train_prompts & eval_prompts
    assert first.eval["chosen_ids"] == again.eval["chosen_ids"]
    expected_eval = {p["prompt"] for p in pairs(60) if prompt_bucket(p["prompt"], 42) < 0.3}  # recomputed here
    assert len(first.eval) == 3 * len(expected_eval)


def test_filter_policy_drops_overlong_pairs_and_keep_end_truncates_them(tmp_path, tiny_tokenizer):
    rows = pairs(10) + [{"prompt": "cat dog " * 40, "chosen": " red", "rejected": " tan"}]
    path = write_jsonl(tmp_path / "long.jsonl", rows)
    filtered = load(path, tiny_tokenizer, tmp_path, max_length=32, truncation="filter")
    assert filtered.report["filtered"] == 1 and filtered.report["kept"] == 10 and len(filtered.train) == 10
    truncated = load(path, tiny_tokenizer, tmp_path, max_length=32)
    assert truncated.report["truncated"] == 1 and len(truncated.train) == 11
    assert max(len(c) for c in truncated.train["chosen_ids"]) == 32
    assert_accounted(filtered.report)
    assert_accounted(truncated.report)


def test_report_is_written_and_adds_up(tmp_path, tiny_tokenizer):
    rows = (
        [dict(pairs(1, "T")[0], tie=True)]
        + pairs(9)
        + [{"prompt": "Q", "chosen": 1, "rejected": " b"}, *pairs(1, "Z")]
    )
    result = load(
        write_jsonl(tmp_path / "r.jsonl", rows), tiny_tokenizer, tmp_path, on_bad_row="skip", max_train_samples=8
    )
    report = result.report
    assert report["input_rows"] == 12 and report["skipped"] == 1 and report["ties"] == 1 and report["unused"] == 3
    assert report["skipped_rows"] == [
        {"file": str(tmp_path / "r.jsonl"), "row": 11, "reason": "field 'chosen': expected a string, got int"}
    ]
    assert_accounted(report)
    write_data_report(report, str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "data_report.json").read_text()) == report


def test_builtin_code_book_still_loads(tiny_tokenizer):
    from reward_trainer.quickstart import make_pairs

    result = load_preference_data(DataArguments(num_synthetic_pairs=50), tiny_tokenizer, seed=3)
    first = make_pairs(50, seed=3)[0]
    assert len(result.train) == 50 and len(result.eval) == 5
    assert result.train[0]["chosen_ids"] == ids(tiny_tokenizer, first["prompt"] + first["chosen"])


# ----------------------------------------------------------------------------------------------- speed


def test_a_second_run_reads_the_tokenized_cache(tmp_path, tiny_tokenizer, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", pairs(30))
    calls = []
    original = tokenizing.tokenize_batch
    monkeypatch.setattr(tokenizing, "tokenize_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = load(path, tiny_tokenizer, tmp_path)
    assert calls, "the first run tokenizes"
    calls.clear()
    second = load(path, tiny_tokenizer, tmp_path)
    assert calls == [], "the second run re-tokenized instead of reading the cache"
    assert first.train["chosen_ids"] == second.train["chosen_ids"]
    os.utime(path, ns=(1, 1))  # a changed file is read and tokenized again
    load(path, tiny_tokenizer, tmp_path)
    assert calls


def test_separate_prompt_encoding_gives_whole_text_ids(tiny_tokenizer, word_tokenizer):
    prompts = ["\n\nHuman: hi\n\nAssistant:", "cat dog | code of cat?\nanswer:", "a b", "x\n\n", ""]
    responses = [[" sure", " no way"], [" red", "tan"], [" c", "d"], ["Hello", " there"], [" lone", " pair"]]
    for tokenizer in (tiny_tokenizer, word_tokenizer):
        expected = [[ids(tokenizer, p + r) for r in rs] for p, rs in zip(prompts, responses, strict=False)]
        for fast in (False, True):  # `tokenizer(...)` and the Rust tokenizer's `encode_batch_fast`
            for affixes in (None, tokenizing.special_affixes(tokenizer)):
                encode = tokenizing.Encoder(tokenizer, fast)
                assert tokenizing.encode_rows(encode, prompts, responses, affixes)[0] == expected, (fast, affixes)


def test_encoding_plan_keeps_tokenizer_truncation_off(tiny_tokenizer):
    """A tokenizer.json may carry truncation settings; the fast encoder must still give whole texts."""
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.backend_tokenizer.enable_truncation(max_length=3)
    rows = Dataset.from_dict({"prompt": ["a b c d e f"], "responses": [[" g h i", " j k"]]})
    encode, _ = tokenizing.plan_encoding(tokenizer, rows)
    assert encode.backend is not None, "the fast path was not taken"
    assert encode(["a b c d e f g h"]) == [ids(tiny_tokenizer, "a b c d e f g h")]


def test_num_proc_gives_the_same_pairs(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "n.jsonl", pairs(40))
    one = load(path, tiny_tokenizer, tmp_path / "a")
    two = load(path, tiny_tokenizer, tmp_path / "b", dataset_num_proc=2)
    assert one.train["chosen_ids"] == two.train["chosen_ids"] and one.report == two.report
