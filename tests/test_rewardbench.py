"""RewardBench and RewardBench 2: files in the exact column layouts, arithmetic checked against values derived by hand.

Most tests score with `NumberScorer`: the reward of a completion is the number written in it, so every accuracy,
section and score below follows from the text of the file, and the expected values are worked out in docstrings.
"""

import json
import math

import pytest
import torch
from datasets import Dataset, DatasetDict

from reward_trainer import leaderboard, rewardbench
from reward_trainer.chat import DEFAULT_CHAT_TEMPLATE
from reward_trainer.cli import main
from reward_trainer.config import EvaluateArguments
from reward_trainer.data import sources
from reward_trainer.leaderboard import BenchmarkRows, evaluate_benchmark, render_conversations, score_rows
from reward_trainer.quickstart import build_tiny_gpt2
from reward_trainer.rewardbench import best_of_n_result, section_scores, ties_score
from reward_trainer.scorer import RewardScorer


class NumberScorer:
    """Scores a text with the number it ends with (the default template's "assistant: 7\\n\\n")."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.max_length = 2048
        self.truncated_texts = 0
        self.calls = []

    def score_texts(self, texts, groups=None, progress=False):
        self.calls.append((list(texts), list(groups)))
        return [float(t.strip().split()[-1]) for t in texts]


@pytest.fixture
def number_scorer(monkeypatch, tiny_tokenizer):
    scorer = NumberScorer(tiny_tokenizer)  # the quickstart tokenizer has no chat template: the default one renders
    monkeypatch.setattr(leaderboard, "load_benchmark_scorer", lambda args: scorer)
    return scorer


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def v1_row(subset, chosen, rejected, i=0):
    return {"prompt": f"question {i}", "chosen": str(chosen), "rejected": str(rejected), "subset": subset, "id": i}


def test_rewardbench_subsets_sections_and_score_by_hand(tmp_path, number_scorer):
    """Chat Hard absent; Chat and Reasoning partial; Safety whole; one subset unknown to the benchmark.

    alpacaeval-easy   2 rows, 1 correct              0.5   (count 100)
    mt-bench-easy     1 row, correct                 1.0   (count 28)
    Chat = (0.5 * 100 + 1 * 28) / (100 + 28) = 78 / 128 = 0.609375                  (partial: 3 subsets missing)
    Safety: refusals-dangerous 1, refusals-offensive a tie (3 vs 3) 0, xstest-should-refuse 0,
            xstest-should-respond 1, donotanswer 1
          = (100 + 250 + 136) / (100 + 100 + 154 + 250 + 136) = 486 / 740
    math-prm          2 rows, 1 correct              0.5   (count 984, upweighted)
    hep-python        1 row, correct                 1.0   (count 164)
    Reasoning = (0.5 * 984 + 164) / (984 + 164) = 656 / 1148 = 4 / 7
    Score = (78/128 + 486/740 + 4/7) / 3 over the three sections present, marked partial.
    """
    rows = [
        v1_row("alpacaeval-easy", 2, 1),
        v1_row("alpacaeval-easy", 1, 2),
        v1_row("mt-bench-easy", 5, -1),
        v1_row("refusals-dangerous", 1, 0),
        v1_row("refusals-offensive", 3, 3),
        v1_row("xstest-should-refuse", 0, 1),
        v1_row("xstest-should-respond", 9, 8),
        v1_row("donotanswer", 4, 2),
        v1_row("math-prm", 1, 0),
        v1_row("math-prm", 0, 1),
        v1_row("hep-python", 2, 1),
        v1_row("my-own-subset", 0, 1),
    ]
    path = write_jsonl(tmp_path / "rb.jsonl", rows)
    report = evaluate_benchmark(
        EvaluateArguments(
            model_name_or_path="unused",
            benchmark="rewardbench",
            dataset_name=[str(path)],
            output_dir=str(tmp_path / "out"),
        )
    )
    sections = report["sections"]
    assert report["subsets"]["refusals-offensive"]["accuracy"] == 0.0  # a tie is not a win
    assert report["subsets"]["alpacaeval-easy"] == {"correct": 1.0, "total": 2, "accuracy": 0.5}
    assert sections["Chat"]["score"] == pytest.approx(78 / 128)
    assert sections["Chat"]["partial"] and sections["Chat"]["missing"] == [
        "alpacaeval-length",
        "alpacaeval-hard",
        "mt-bench-med",
    ]
    assert sections["Safety"]["score"] == pytest.approx(486 / 740) and not sections["Safety"]["partial"]
    assert sections["Reasoning"]["score"] == pytest.approx(4 / 7)
    assert sections["Chat Hard"]["score"] is None and len(sections["Chat Hard"]["missing"]) == 6
    assert report["score"] == pytest.approx((78 / 128 + 486 / 740 + 4 / 7) / 3)
    assert report["partial"] and "llmbar-natural" in report["missing_subsets"]
    assert report["unknown_subsets"] == ["my-own-subset"]
    assert report["split"] == "filtered" and report["chat_template"] == "default (role: content)"

    written = json.loads((tmp_path / "out" / "benchmark_report.json").read_text())
    assert written["sections"]["Reasoning"]["score"] == pytest.approx(4 / 7)
    markdown = (tmp_path / "out" / "benchmark_report.md").read_text()
    assert "| Model | Score | Chat | Chat Hard | Safety | Reasoning |" in markdown
    assert f"| unused | {100 * (78 / 128 + 486 / 740 + 4 / 7) / 3:.1f}* | 60.9* | n/a* | 65.7 | 57.1* |" in markdown
    scores = [json.loads(line) for line in (tmp_path / "out" / "benchmark_scores.jsonl").read_text().splitlines()]
    assert scores[0] == {"id": "0", "subset": "alpacaeval-easy", "scores": [2.0, 1.0]}


def test_every_section_whole_and_math_prm_weighs_as_the_six_code_subsets():
    """All 23 subsets present. Reasoning: math-prm 1.0, every hep-* 0.0: 984 / (984 + 6 * 164) = 0.5.
    Chat: alpacaeval-hard 0, the rest 1: (100 + 95 + 28 + 40) / 358 = 263 / 358. Chat Hard and Safety 1."""
    accuracy = {name: 1.0 for names in rewardbench.SECTIONS.values() for name in names}
    accuracy |= {f"hep-{lang}": 0.0 for lang in ("cpp", "go", "java", "js", "python", "rust")}
    accuracy["alpacaeval-hard"] = 0.0
    sections = section_scores(accuracy)
    assert sections["Reasoning"]["score"] == pytest.approx(0.5)
    assert sections["Chat"]["score"] == pytest.approx(263 / 358)
    assert not any(s["partial"] for s in sections.values())
    summary = rewardbench.rewardbench_summary([1.0], ["alpacaeval-easy"])
    assert summary["score"] == 1.0 and summary["partial"]  # one subset: the score of what is there, marked partial
    assert sum(rewardbench.EXAMPLE_COUNTS.values()) == 2985 + 984 - 447  # 2,985 filtered rows, math-prm as 984


def test_best_of_n_shares_tied_top_scores():
    assert best_of_n_result([3, 1, 2, 0]) == 1.0
    assert best_of_n_result([2, 2, 1, 0]) == 0.5  # chosen ties one rejected at the top: half the credit
    assert best_of_n_result([1, 1, 1, 1]) == 0.25
    assert best_of_n_result([1, 3, 0, 0]) == 0.0


def v2_row(subset, chosen, rejected, row_id, num_correct=None):
    return {
        "id": row_id,
        "prompt": f"prompt {row_id}",
        "chosen": [str(c) for c in chosen],
        "rejected": [str(r) for r in rejected],
        "num_correct": len(chosen) if num_correct is None else num_correct,
        "total_completions": len(chosen) + len(rejected),
        "subset": subset,
    }


TANH_TERM = (math.tanh(1) + math.tanh(-2)) / 2


def ties_rows():
    """Prompt 0: ref [4 | 1, 2]: accurate, margin 4 - 2 = 2. tied [5, 4 | 1, 2]: accurate, margin 2, spread 1.
        preferred 2 > 1, hard min(2, 2) > 1, ratio 2 / 1 -> tanh(2 - 1).
    Prompt 1: ref [1 | 3]: not accurate, margin -2. tied [3, 1 | 2]: not accurate (1 < 2), margin -1, spread 2.
        not preferred, not hard, ratio min(-2, -1) / 2 = -1 -> tanh(-1 - 1).
    Ties = 0.3 * 1/2 + 0.3 * 1/2 + 0.2 * 1/2 + 0.2 * 1/2 + 0.01 * (tanh(1) + tanh(-2)) / 2 = 0.5 + 0.01 * TANH_TERM.
    """
    return [
        v2_row("Ties", [4], [1, 2], "ref:0"),
        v2_row("Ties", [5, 4], [1, 2], "tied:0"),
        v2_row("Ties", [1], [3], "ref:1"),
        v2_row("Ties", [3, 1], [2], "tied:1"),
    ]


def test_ties_score_by_hand():
    rows = ties_rows()
    scores = [[float(x) for x in r["chosen"] + r["rejected"]] for r in rows]
    expected = 0.5 + 0.01 * TANH_TERM
    assert ties_score([r["id"] for r in rows], scores, [r["num_correct"] for r in rows]) == pytest.approx(expected)
    # Only ref rows: no prompt has both, so the three comparison terms are 0: 0.3 * acc(ref) = 0.3 * 1/2.
    assert ties_score(["ref:0", "ref:1"], [scores[0], scores[2]], [1, 1]) == pytest.approx(0.15)


def test_rewardbench2_subsets_and_score_by_hand(tmp_path, number_scorer):
    """Factuality: [3 | 1 2 0] 1, [2 | 2 1 0] 1/2, [1 | 3 0 0] 0 -> 1.5 / 3 = 0.5. Precise IF [5 | 1 1 1] 1.
    Math [1 | 1 1 1] 1/4. Ties as in `ties_rows`. Safety and Focus missing: the score is the mean of the four
    present, (0.5 + 1 + 0.25 + Ties) / 4, marked partial."""
    rows = [
        v2_row("Factuality", [3], [1, 2, 0], "1"),
        v2_row("Factuality", [2], [2, 1, 0], "2"),
        v2_row("Factuality", [1], [3, 0, 0], "3"),
        v2_row("Precise IF", [5], [1, 1, 1], "4"),
        v2_row("Math", [1], [1, 1, 1], "5"),
        *ties_rows(),
    ]
    path = tmp_path / "rb2.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    report = evaluate_benchmark(
        EvaluateArguments(
            model_name_or_path="m", benchmark="rewardbench2", dataset_name=[str(path)], output_dir=str(tmp_path / "o")
        )
    )
    subsets = report["subsets"]
    ties = 0.5 + 0.01 * TANH_TERM
    assert subsets["Factuality"]["accuracy"] == pytest.approx(0.5)
    assert subsets["Precise IF"]["accuracy"] == 1.0 and subsets["Math"]["accuracy"] == 0.25
    assert subsets["Ties"]["accuracy"] == pytest.approx(ties)
    assert report["score"] == pytest.approx((0.5 + 1 + 0.25 + ties) / 4)
    assert report["partial"] and report["missing_subsets"] == ["Safety", "Focus"]
    assert report["split"] == "test"
    # every completion of a prompt goes to the scorer with that prompt (grouped scoring encodes it once)
    ((texts, groups),) = number_scorer.calls
    assert len(texts) == 4 * 5 + 3 + 4 + 2 + 3 and texts[0] == "user: prompt 1\n\nassistant: 3\n\n"
    assert groups[:5] == ["user: prompt 1\n\nassistant:"] * 4 + ["user: prompt 2\n\nassistant:"]
    markdown = (tmp_path / "o" / "benchmark_report.md").read_text()
    assert "| Model | Score | Factuality | Precise IF | Math | Safety | Focus | Ties |" in markdown
    assert f"| m | {100 * (1.75 + ties) / 4:.1f}* | 50.0 | 100.0 | 25.0 | n/a | n/a | {100 * ties:.1f} |" in markdown


def test_hub_names_go_through_load_dataset_with_the_official_split(tmp_path, number_scorer, monkeypatch):
    calls = []
    hub = DatasetDict(
        {
            "filtered": Dataset.from_list([v1_row("hep-go", 1, 0), v1_row("hep-go", 0, 1)]),
            "raw": Dataset.from_list([v1_row("x", 0, 1)]),
        }
    )
    monkeypatch.setattr(sources, "load_dataset", lambda *a, **k: calls.append(a) or hub)
    report = evaluate_benchmark(
        EvaluateArguments(model_name_or_path="m", benchmark="rewardbench", output_dir=str(tmp_path))
    )
    assert calls[0][0] == "allenai/reward-bench" and report["dataset"] == "allenai/reward-bench"
    assert report["rows"] == 2 and report["subsets"]["hep-go"]["accuracy"] == 0.5
    assert report["sections"]["Reasoning"]["score"] == 0.5


def test_rendering_with_and_without_a_chat_template(tiny_tokenizer):
    """Without a template: the project's default ("role: content" turns); the split point is the assistant's turn,
    and prompt text + response text is the whole rendered conversation, for string and multi-turn prompts."""
    head, tails = render_conversations(tiny_tokenizer, "hi", ["a", "b"])
    assert head == "user: hi\n\nassistant:" and tails == [" a\n\n", " b\n\n"]
    turns = [{"role": "x", "content": "q1"}, {"role": "y", "content": "a1"}, {"role": "z", "content": "q2"}]
    head, tails = render_conversations(tiny_tokenizer, leaderboard._prompt({"prompt": turns}, "f"), ["r"])
    assert head + tails[0] == "user: q1\n\nassistant: a1\n\nuser: q2\n\nassistant: r\n\n"  # roles by position
    template = "{% for m in messages %}<{{ m['role'] }}|{{ m['content'] }}>{% endfor %}"
    tokenizer = tiny_tokenizer.__class__(tokenizer_object=tiny_tokenizer.backend_tokenizer, chat_template=template)
    assert render_conversations(tokenizer, "hi", ["a"]) == ("<user|hi>", ["<assistant|a>"])
    tokenizer.chat_template = template + "{% if add_generation_prompt %}<gen>{% endif %}"
    head, tails = render_conversations(tokenizer, "hi", ["a"])
    assert head == "" and tails == ["<user|hi><assistant|a>"]  # the prompt rendering is no prefix: the whole text


def test_a_saved_checkpoint_from_the_command_line(tmp_path, tiny_tokenizer, capsys):
    """A tiny GPT-2 saved to disk, no chat template: exit 0, and the written scores are `RewardScorer`'s rewards of
    the conversations rendered with the default template, each text alone."""
    torch.manual_seed(0)
    model = build_tiny_gpt2(tiny_tokenizer)
    model.save_pretrained(tmp_path / "rm")
    tiny_tokenizer.save_pretrained(tmp_path / "rm")
    rows = [v1_row("hep-go", "cat", "dog", 0), v1_row("donotanswer", "red owl", "blue", 1)]
    path = write_jsonl(tmp_path / "rb.jsonl", rows)
    out = tmp_path / "out"
    argv = ["evaluate", "--benchmark", "rewardbench", "--model_name_or_path", str(tmp_path / "rm")]
    assert main([*argv, "--dataset_name", str(path), "--output_dir", str(out), "--disable_tqdm", "true"]) == 0
    assert "| Model | Score | Chat | Chat Hard | Safety | Reasoning |" in capsys.readouterr().out
    written = [json.loads(line)["scores"] for line in (out / "benchmark_scores.jsonl").read_text().splitlines()]
    scorer = RewardScorer.from_pretrained(str(tmp_path / "rm"))
    texts = [
        scorer.tokenizer.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r[side]}],
            chat_template=DEFAULT_CHAT_TEMPLATE,
            tokenize=False,
        )
        for r in rows
        for side in ("chosen", "rejected")
    ]
    expected = scorer.score_texts(texts)
    assert [s for pair in written for s in pair] == pytest.approx(expected, abs=1e-5)
    report = json.loads((out / "benchmark_report.json").read_text())
    assert report["subsets"]["hep-go"]["accuracy"] == float(expected[0] > expected[1])
    assert report["max_length"] == 256  # the official 2,048, capped at the model's positions


def test_score_rows_equals_scoring_each_rendered_text_alone(tiny_tokenizer):
    torch.manual_seed(1)
    scorer = RewardScorer(build_tiny_gpt2(tiny_tokenizer), tiny_tokenizer)
    rows = BenchmarkRows(prompts=["a b", "c"], completions=[["x", "y", "z"], ["w", "v"]])
    full = [
        [h + t for t in tails]
        for h, tails in (render_conversations(tiny_tokenizer, p, c) for p, c in zip(rows.prompts, rows.completions))
    ]
    expected = [scorer.score_texts(texts) for texts in full]
    got = score_rows(scorer, rows)
    assert [len(g) for g in got] == [3, 2]
    for g, e in zip(got, expected):
        assert g == pytest.approx(e, abs=1e-5)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "p", "chosen": ["a"], "rejected": ["b"], "subset": "Math", "id": "1"},
            "row 2: field 'num_correct' is missing",
        ),
        (
            {"prompt": "p", "chosen": "a", "rejected": ["b"], "num_correct": 1, "subset": "Math", "id": "1"},
            "row 2: field 'chosen' must be a list of strings",
        ),
        (
            {"prompt": "p", "chosen": ["a"], "rejected": ["b"], "num_correct": 1, "subset": "Ties", "id": "7"},
            "row 2: field 'id' of a Ties row must be",
        ),
    ],
)
def test_a_bad_row_is_one_line_naming_file_row_and_field(tmp_path, capsys, row, message):
    good = v2_row("Math", [1], [0], "0")
    path = write_jsonl(tmp_path / "rb2.jsonl", [good, row])
    argv = ["evaluate", "--benchmark", "rewardbench2", "--model_name_or_path", "unused", "--dataset_name", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # above it: the `datasets` progress bar, if any
    assert err.startswith("reward-trainer: error:") and str(path) in err and message in err
