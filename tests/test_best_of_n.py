"""Best-of-n: the estimator by hand, HH prompts as chat turns, and the command end to end on tiny models."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_policy

from reward_trainer import RewardScorer
from reward_trainer.chat import hh_messages
from reward_trainer.cli import main
from reward_trainer.metrics import best_of_n_kl, best_of_n_rewards
from reward_trainer.quickstart import build_tiny_gpt2, make_pairs


def test_best_of_n_rewards_by_hand():
    """Three samples with proxy 0, 2, 1 and gold 10, 30, 20. Of the 3 pairs, the proxy picks 2 (gold 30) in the two
    that hold it and 1 (gold 20) in the third: gold (30 + 30 + 20) / 3, proxy (2 + 2 + 1) / 3."""
    proxy, gold = np.array([[0.0, 2.0, 1.0]]), np.array([[10.0, 30.0, 20.0]])
    assert np.concatenate(best_of_n_rewards(proxy, gold, 1)) == pytest.approx([1.0, 20.0])  # n = 1: the mean
    assert np.concatenate(best_of_n_rewards(proxy, gold, 2)) == pytest.approx([5 / 3, 80 / 3])
    assert np.concatenate(best_of_n_rewards(proxy, gold, 3)) == pytest.approx([2.0, 30.0])  # n = M: the argmax
    with pytest.raises(ValueError, match="n must be in"):
        best_of_n_rewards(proxy, gold, 4)
    # Against brute force over every subset, on random data.
    from itertools import combinations

    rng = np.random.default_rng(0)
    proxy, gold = rng.normal(size=(2, 6)), rng.normal(size=(2, 6))
    for n in (2, 4):
        subsets = list(combinations(range(6), n))
        brute = [np.mean([gold[p, max(s, key=lambda i: proxy[p, i])] for s in subsets]) for p in range(2)]
        assert best_of_n_rewards(proxy, gold, n)[1] == pytest.approx(brute)
    assert best_of_n_kl(np.array([1, 2, 16])) == pytest.approx([0.0, math.log(2) - 0.5, math.log(16) - 15 / 16])


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory, tiny_tokenizer, trained_checkpoint):
    """A tiny GPT-2 policy, a prompt file, a random tiny proxy and the trained tiny checkpoint as gold."""
    root = tmp_path_factory.mktemp("bon")
    torch.manual_seed(0)
    tiny_policy(tiny_tokenizer).save_pretrained(root / "policy")
    tiny_tokenizer.save_pretrained(root / "policy")
    build_tiny_gpt2(tiny_tokenizer).save_pretrained(root / "proxy")
    tiny_tokenizer.save_pretrained(root / "proxy")
    with open(root / "prompts.jsonl", "w") as f:
        for pair in make_pairs(5, seed=21):
            f.write(json.dumps({"prompt": pair["prompt"]}) + "\n")
    return root, trained_checkpoint


def run(root, gold, out, extra=()):
    argv = ["best-of-n", "--policy_name_or_path", str(root / "policy"), "--proxy_model", str(root / "proxy")]
    argv += ["--gold_model", str(gold), "--dataset_name", str(root / "prompts.jsonl"), "--output_dir", str(out)]
    argv += ["--heldout_fraction", "1.0", "--num_prompts", "3", "--max_n", "4", "--max_new_tokens", "5"]
    argv += ["--generation_batch_size", "2", "--disable_tqdm", "true", *extra]
    return main(argv)


def test_best_of_n_command_on_tiny_models(tiny_setup, tmp_path):
    root, gold = tiny_setup
    assert run(root, gold, tmp_path / "a") == 0
    result = json.loads((tmp_path / "a" / "best_of_n.json").read_text())
    curve = result["curve"]
    assert curve["n"] == [1, 2, 4] and curve["kl"] == pytest.approx(best_of_n_kl(np.array([1, 2, 4])).tolist())
    assert (tmp_path / "a" / "best_of_n.png").stat().st_size > 10_000
    samples = [json.loads(line) for line in (tmp_path / "a" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 4 and result["prompts"] == 3
    assert len({s["response"] for s in samples}) > 4  # sampled, not greedy

    # Every sample's rewards are the reward models' own, each text scored alone.
    for path, key in ((root / "proxy", "proxy"), (gold, "gold")):
        alone = RewardScorer.from_pretrained(str(path), max_batch_tokens=1)
        expected = [alone.score_texts([s["prompt"] + s["response"]])[0] for s in samples]
        assert [s[key] for s in samples] == pytest.approx(expected, abs=1e-4)
    # The curve is computed from those samples: n = 1 is the mean, n = 4 the gold reward of the proxy's argmax.
    gold_of_pick = [max(samples[4 * p : 4 * p + 4], key=lambda s: s["proxy"])["gold"] for p in range(3)]
    assert curve["gold"][-1] == pytest.approx(np.mean(gold_of_pick))
    assert curve["gold"][0] == pytest.approx(np.mean([s["gold"] for s in samples]))
    assert curve["proxy"] == sorted(curve["proxy"])  # the proxy's pick only gets better with n
    assert curve["gold_ceiling"][-1] >= curve["gold"][-1]


def test_best_of_n_scores_hh_prompts_as_each_reward_model_was_trained(tiny_setup, tmp_path):
    """A reward model trained on chat-rendered HH text scores the samples rendered the same way; one trained on
    raw HH text scores prompt + response."""
    from transformers import AutoConfig

    root, gold = tiny_setup
    proxy = tmp_path / "proxy"
    shutil.copytree(root / "proxy", proxy)
    config = AutoConfig.from_pretrained(proxy)
    config.implicit_prompt_rendering = "chat_template"  # as `train` records it
    config.save_pretrained(proxy)
    prompts = tmp_path / "hh.jsonl"
    hh = ["\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and now?\n\nAssistant:", "\n\nHuman: a b c\n\nAssistant:"]
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in hh))
    argv = ["best-of-n", "--policy_name_or_path", str(root / "policy"), "--proxy_model", str(proxy)]
    argv += ["--gold_model", str(gold), "--dataset_name", str(prompts), "--output_dir", str(tmp_path / "out")]
    argv += ["--heldout_fraction", "1.0", "--max_n", "2", "--max_new_tokens", "4", "--disable_tqdm", "true"]
    argv += ["--chat_template", "false"]
    assert main(argv) == 0
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    chat = RewardScorer.from_pretrained(str(proxy), max_batch_tokens=1)
    conversations = [
        hh_messages(s["prompt"]) + [{"role": "assistant", "content": s["response"].strip()}] for s in samples
    ]
    assert [s["proxy"] for s in samples] == pytest.approx(chat.score_conversations(conversations), abs=1e-4)
    hh_text = [s["prompt"] + s["response"] for s in samples]
    assert [s["proxy"] for s in samples] == pytest.approx(chat.score_texts(hh_text), abs=1e-4)  # rendered itself
    chat.renders_hh = False  # read as raw text instead: another reward
    assert [s["proxy"] for s in samples] != pytest.approx(chat.score_texts(hh_text), abs=1e-4)
    text = RewardScorer.from_pretrained(str(gold), max_batch_tokens=1)
    assert [s["gold"] for s in samples] == pytest.approx(
        [text.score_texts([s["prompt"] + s["response"]])[0] for s in samples], abs=1e-4
    )


@pytest.mark.slow
def test_best_of_n_sampling_is_seeded(tiny_setup, tmp_path):
    """The same command gives the same samples; another seed does not."""
    root, gold = tiny_setup
    assert run(root, gold, tmp_path / "a") == 0
    assert run(root, gold, tmp_path / "b") == 0
    assert (tmp_path / "b" / "samples.jsonl").read_text() == (tmp_path / "a" / "samples.jsonl").read_text()
    assert run(root, gold, tmp_path / "c", ["--seed", "1"]) == 0
    assert (tmp_path / "c" / "samples.jsonl").read_text() != (tmp_path / "a" / "samples.jsonl").read_text()


def test_best_of_n_bad_input_is_one_line(tiny_setup, tmp_path, capsys):
    root, gold = tiny_setup
    assert run(root, tmp_path / "missing", tmp_path / "out") == 2
    assert "missing" in capsys.readouterr().err
    assert run(root, gold, tmp_path / "out", ["--max_n", "6"]) == 2
    assert "power of 2" in capsys.readouterr().err
