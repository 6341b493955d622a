"""The HTTP reward server: endpoints, dynamic batching, bad requests, the `serve` command."""

import asyncio
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from reward_trainer import RewardScorer  # noqa: E402
from reward_trainer.config import ServeArguments  # noqa: E402
from reward_trainer.quickstart import make_pairs  # noqa: E402
from reward_trainer.server import RequestError, create_app, serve_in_background, texts_of_request  # noqa: E402


@pytest.fixture(scope="module")
def scorer(trained_checkpoint):
    return RewardScorer.from_pretrained(str(trained_checkpoint))


@pytest.fixture(scope="module")
def server(scorer, trained_checkpoint):
    """A real uvicorn server on a free loopback port; `calls` records the size of each scorer call."""
    calls = []

    class RecordingScorer:
        def score_texts(self, texts, normalize=False, groups=None):
            calls.append(len(texts))
            return scorer.score_texts(texts, normalize=normalize, groups=groups)

    args = ServeArguments(str(trained_checkpoint), max_wait_ms=50, max_body_bytes=4096, max_texts=8)
    with serve_in_background(create_app(RecordingScorer(), args)) as url:
        yield url, calls


def test_texts_of_request():
    assert texts_of_request({"texts": ["a", "b"]}, "score", 10) == (["a", "b"], None)
    pairs = {"prompts": ["p1", "p1"], "responses": ["r1", "r2"]}
    assert texts_of_request(pairs, "score", 10) == (["p1r1", "p1r2"], ["p1", "p1"])
    assert texts_of_request({"query": ["q"]}, "get_reward", 10) == (["q"], None)
    openrlhf = {"query": ["pa", "pb"], "prompts": ["p", "p"], "labels": None}
    assert texts_of_request(openrlhf, "get_reward", 10) == (["pa", "pb"], ["p", "p"])
    for payload, status, message in [
        ([1], 400, "must be a JSON object"),
        ({"texts": "a"}, 400, "'texts' must be a list of strings"),
        ({"texts": ["a", 3]}, 400, "'texts' must be a list of strings"),
        ({"prompts": ["a"]}, 400, "expected"),
        ({"prompts": ["a"], "responses": []}, 400, "1 prompts but 0 responses"),
        ({"texts": ["a"] * 11}, 413, "11 texts in one request; the limit is 10"),
    ]:
        with pytest.raises(RequestError, match=message) as err:
            texts_of_request(payload, "score", 10)
        assert err.value.status == status


def test_endpoints_return_the_offline_rewards(server, scorer):
    url, _ = server
    pairs = make_pairs(4, seed=5)
    prompts, responses = [p["prompt"] for p in pairs], [p["chosen"] for p in pairs]
    expected = scorer.score(prompts, responses)
    texts = [p + r for p, r in zip(prompts, responses)]
    with httpx.Client(base_url=url) as client:
        assert client.get("/health").json()["status"] == "ok"
        by_pairs = client.post("/score", json={"prompts": prompts, "responses": responses}).json()["rewards"]
        by_texts = client.post("/score", json={"texts": texts}).json()["rewards"]
        openrlhf = client.post("/get_reward", json={"query": texts}).json()["rewards"]
        assert client.post("/score", json={"texts": []}).json() == {"rewards": []}
    for rewards in (by_pairs, by_texts, openrlhf):
        assert rewards == pytest.approx(expected, abs=1e-5)


def test_score_groups_responses_of_one_prompt(server, scorer):
    """Several responses to each prompt (scored as groups, the prompt once): each reward equals the text's alone."""
    url, _ = server
    prompts = [p["prompt"] for p in make_pairs(2, seed=7) for _ in range(4)]
    responses = [" red", " tan sky", "red", " oak oak"] * 2
    alone = [scorer.score_texts([p + r])[0] for p, r in zip(prompts, responses)]
    with httpx.Client(base_url=url) as client:
        rewards = client.post("/score", json={"prompts": prompts, "responses": responses}).json()["rewards"]
    assert scorer.group_prompts and rewards == pytest.approx(alone, abs=1e-4)


def test_concurrent_requests_are_batched_and_each_gets_its_own(server, scorer):
    url, calls = server
    texts = [p["prompt"] + p["chosen"] for p in make_pairs(16, seed=6)]
    expected = scorer.score_texts(texts)

    async def send_all():
        async with httpx.AsyncClient(base_url=url) as client:
            replies = await asyncio.gather(*[client.post("/score", json={"texts": [t]}) for t in texts])
        return [r.json()["rewards"] for r in replies]

    calls.clear()
    rewards = asyncio.run(send_all())
    assert [r[0] for r in rewards] == pytest.approx(expected, abs=1e-5)
    assert sum(calls) == len(texts) and len(calls) < len(texts)  # some calls merged several requests


def test_bad_requests_then_keeps_serving(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        reply = client.post("/score", content=b"{not json")
        assert reply.status_code == 400 and "not valid JSON" in reply.json()["error"]
        assert client.post("/score", json={"texts": [1, 2]}).status_code == 400
        assert client.post("/get_reward", json={"texts": ["a"]}).status_code == 400
        assert client.post("/score", json={"texts": ["a"] * 9}).status_code == 413  # more than max_texts=8
        assert client.post("/score", json={"texts": ["a" * 5000]}).status_code == 413  # body over 4096 bytes
        assert client.post("/score", json={"texts": ["a"]}).status_code == 200


def test_serve_command_rejects_a_missing_model(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reward_trainer.cli", "serve", "--model_name_or_path", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "nope" in result.stderr and "Traceback" not in result.stderr


def test_serve_binds_loopback_by_default(trained_checkpoint):
    args = ServeArguments(str(trained_checkpoint))
    assert args.host == "127.0.0.1" and args.max_body_bytes == 16 * 2**20 and args.max_texts == 4096


def test_serve_options_parse_from_the_command_line():
    from reward_trainer.cli import UsageError, parse_args

    (args,) = parse_args(["--model_name_or_path", "m", "--port", "9001", "--normalize", "true"], (ServeArguments,))
    assert (args.host, args.port, args.normalize) == ("127.0.0.1", 9001, True)
    with pytest.raises(UsageError, match="model_name_or_path"):
        parse_args(["--port", "9001"], (ServeArguments,))
