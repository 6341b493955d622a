"""The HTTP reward server: endpoints, dynamic batching, bad requests, overload (503), API key (401), metrics,
graceful shutdown, the `serve` command."""

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import subprocess_env

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
        def score_texts(self, texts, normalize=False, groups=None, prompts=None):
            calls.append(len(texts))
            return scorer.score_texts(texts, normalize=normalize, groups=groups, prompts=prompts)

        def complete_turn_ends(self, texts):
            return scorer.complete_turn_ends(texts)

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
    padded = {"query": ["<pad><pad>pa", "pb<pad>"], "prompts": ["<pad><pad>p", "p"], "labels": None}
    assert texts_of_request(padded, "get_reward", 10, strip=["<pad>"]) == (["pa", "pb"], ["p", "p"])
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
        assert client.post("/score", json={"texts": []}).json() == {"rewards": [], "scores": []}
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
        env=subprocess_env(),
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


class BlockingScorer:
    """Scores with `scorer` once `release` is set: holds the model busy so that requests queue up behind it."""

    def __init__(self, scorer):
        self.scorer, self.release, self.started = scorer, threading.Event(), threading.Event()

    def score_texts(self, texts, normalize=False, groups=None, prompts=None):
        self.started.set()
        self.release.wait(timeout=30)
        return self.scorer.score_texts(texts, normalize=normalize, groups=groups, prompts=prompts)


def test_openrlhf_request_shape_gets_scores_and_rewards(server, scorer):
    """OpenRLHF's agent executor posts query (prompt + response, decoded), prompts and labels (may be null)."""
    url, _ = server
    pairs = make_pairs(3, seed=12)
    queries = [p["prompt"] + p["chosen"] for p in pairs]
    expected = scorer.score_texts(queries)
    with httpx.Client(base_url=url) as client:
        for labels in (None, ["a", "b", "c"]):
            body = {"query": queries, "prompts": [p["prompt"] for p in pairs], "labels": labels}
            reply = client.post("/get_reward", json=body).json()
            assert reply["scores"] == reply["rewards"] and reply["scores"] == pytest.approx(expected, abs=1e-5)


def test_full_queue_answers_503_at_once_and_recovers(scorer, trained_checkpoint):
    blocking = BlockingScorer(scorer)
    args = ServeArguments(str(trained_checkpoint), max_wait_ms=0, max_queue_texts=3)
    texts = [p["prompt"] + p["chosen"] for p in make_pairs(6, seed=13)]
    expected = scorer.score_texts(texts)
    with serve_in_background(create_app(blocking, args)) as url, httpx.Client(base_url=url, timeout=30) as client:
        results = {}

        def send(i, n):
            results[i] = client.post("/score", json={"texts": texts[i : i + n]})

        first = threading.Thread(target=send, args=(0, 1))
        first.start()
        assert blocking.started.wait(10)  # the model is busy with text 0; the queue is empty
        queued = threading.Thread(target=send, args=(1, 3))  # 3 texts: the queue is full
        queued.start()
        deadline = time.monotonic() + 10
        while "reward_server_queue_texts 3" not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.02)
        start = time.monotonic()
        refused = client.post("/score", json={"texts": texts[4:5]})
        assert refused.status_code == 503 and time.monotonic() - start < 5  # at once, not after the busy model
        assert int(refused.headers["Retry-After"]) >= 1 and "queue" in refused.json()["error"]
        blocking.release.set()
        first.join(30)
        queued.join(30)
        assert results[0].json()["rewards"] == pytest.approx(expected[:1], abs=1e-5)
        assert results[1].json()["rewards"] == pytest.approx(expected[1:4], abs=1e-5)
        assert client.post("/score", json={"texts": texts[4:6]}).json()["rewards"] == pytest.approx(
            expected[4:6], abs=1e-5
        )
        metrics = client.get("/metrics").text
    assert 'reward_server_requests_total{path="/score",status="503"} 1' in metrics
    assert 'reward_server_requests_total{path="/score",status="200"} 3' in metrics
    assert "reward_server_texts_scored_total 6" in metrics and "reward_server_queue_texts 0" in metrics


def test_request_timeout_answers_503_and_the_server_goes_on(scorer, trained_checkpoint):
    blocking = BlockingScorer(scorer)
    args = ServeArguments(str(trained_checkpoint), max_wait_ms=0, request_timeout_s=0.5)
    text = make_pairs(1, seed=14)[0]["prompt"] + " red"
    with serve_in_background(create_app(blocking, args)) as url, httpx.Client(base_url=url, timeout=30) as client:
        start = time.monotonic()
        reply = client.post("/score", json={"texts": [text]})  # the model never finishes within 0.5 s
        assert reply.status_code == 503 and "timeout" in reply.json()["error"] and "Retry-After" in reply.headers
        assert time.monotonic() - start < 5
        blocking.release.set()
        assert client.post("/score", json={"texts": [text]}).json()["rewards"] == pytest.approx(
            scorer.score_texts([text]), abs=1e-5
        )


def test_api_key_flag_or_environment(scorer, trained_checkpoint, monkeypatch):
    body = {"texts": ["cat dog | code of owl?\nanswer: red"]}
    for flag, env in (("s3cret", None), (None, "s3cret")):
        if env:
            monkeypatch.setenv("REWARD_TRAINER_API_KEY", env)
        args = ServeArguments(str(trained_checkpoint), api_key=flag)
        with serve_in_background(create_app(scorer, args)) as url, httpx.Client(base_url=url) as client:
            assert client.post("/score", json=body).status_code == 401
            wrong = client.post("/score", json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
            assert client.post("/get_reward", json={"query": body["texts"]}).status_code == 401
            assert client.get("/metrics").status_code == 401
            assert client.get("/health").status_code == 200  # for load balancers' probes
            good = client.post("/score", json=body, headers={"Authorization": "Bearer s3cret"})
            assert good.status_code == 200 and good.json()["rewards"] == pytest.approx(
                scorer.score_texts(body["texts"]), abs=1e-5
            )
            metrics = client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).text
        assert 'reward_server_requests_total{path="/score",status="401"} 2' in metrics


def test_metrics_in_prometheus_text_format(server):
    url, _ = server
    with httpx.Client(base_url=url) as client:
        client.post("/score", json={"texts": ["a", "b"]})
        client.post("/score", content=b"{not json")
        text = client.get("/metrics").text
    assert "# TYPE reward_server_requests_total counter" in text
    assert "# TYPE reward_server_batch_texts histogram" in text
    assert "# TYPE reward_server_request_latency_seconds histogram" in text
    assert 'reward_server_batch_texts_bucket{le="+Inf"}' in text and "reward_server_queue_texts 0" in text
    counts = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)  # every sample line is `name{labels} number`
    assert counts['reward_server_requests_total{path="/score",status="400"}'] >= 1
    assert counts["reward_server_texts_scored_total"] >= 2
    assert counts["reward_server_request_latency_seconds_count"] >= 3


def test_sigterm_answers_requests_in_flight_before_exiting(trained_checkpoint, scorer):
    from reward_trainer.server import free_port

    port = free_port()
    command = [sys.executable, "-m", "reward_trainer.cli", "serve", "--model_name_or_path", str(trained_checkpoint)]
    command += ["--port", str(port), "--max_wait_ms", "2000"]  # the first request waits 2 s for company
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    url, text = f"http://127.0.0.1:{port}", make_pairs(1, seed=15)[0]["prompt"] + " red"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.2)
        result = {}
        sender = threading.Thread(
            target=lambda: result.setdefault("reply", httpx.post(f"{url}/score", json={"texts": [text]}, timeout=60))
        )
        start = time.monotonic()
        sender.start()
        time.sleep(0.5)  # the request is in the batcher's 2 s window
        server.send_signal(signal.SIGTERM)
        sender.join(60)
        server.wait(timeout=60)
    finally:
        if server.poll() is None:
            server.kill()
    reply = result["reply"]
    assert reply.status_code == 200 and reply.json()["rewards"] == pytest.approx(scorer.score_texts([text]), abs=1e-5)
    assert time.monotonic() - start >= 1.5  # answered after the signal, at the end of the window
    with pytest.raises(httpx.TransportError):  # and then the process is gone
        httpx.get(f"{url}/health")
