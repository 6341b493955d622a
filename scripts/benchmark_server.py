"""Load test of the reward server on loopback: N requests from C concurrent clients, then an overload run.

    python scripts/benchmark_server.py --output server.json                      # 10,000 requests, 64 clients
    python scripts/benchmark_server.py --model outputs/quickstart --requests 2000 --clients 16

Starts `reward-trainer serve` as a subprocess on a free loopback port (by default on the built-in tiny GPT-2,
saved to a temporary directory) and sends one text per request, cycling through the three request shapes:
`/score` with `texts`, `/score` with `prompts` + `responses`, and OpenRLHF's `/get_reward` with `query`,
`prompts` and `labels: null` (reading `scores`). Load run: no errors, and every reward equals the offline
`RewardScorer`'s (<= 1e-5). Overload run (`--overload_requests`, 0 to skip): a second server with a small
`--max_queue_texts`; some requests must get 503 with `Retry-After`, every 200 must be correct, and the server
must answer `/health` and a scoring request afterwards. Each client sends its share and stops: every loop is
bounded, and `--time_limit` bounds each run. Exits 1 when a check fails. Prints the machine first
(`hardware.machine_line`, also in the JSON), then p50/p99 latency and requests/s.
"""

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

from reward_trainer import RewardScorer, hardware
from reward_trainer.quickstart import build_tiny_gpt2, build_tokenizer, make_pairs
from reward_trainer.server import free_port


def tiny_checkpoint(directory: str) -> str:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    build_tiny_gpt2(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


async def wait_until_healthy(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited with code {server.returncode}")
            try:
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"the server was not healthy after {timeout}s")


@contextlib.contextmanager
def running_server(path: str, *flags: str):
    """`reward-trainer serve` on a free loopback port, stopped with SIGTERM at the end; yields its URL."""
    port = free_port()
    command = [sys.executable, "-m", "reward_trainer.cli", "serve", "--model_name_or_path", path, "--port", str(port)]
    server = subprocess.Popen([*command, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_until_healthy(url, server, timeout=120))
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def request_of(i: int, prompt: str, response: str) -> tuple[str, dict, str]:
    """(endpoint, body, key to read) of request i: the three request shapes in turn."""
    if i % 3 == 0:
        return "/score", {"texts": [prompt + response]}, "rewards"
    if i % 3 == 1:
        return "/score", {"prompts": [prompt], "responses": [response]}, "rewards"
    return "/get_reward", {"query": [prompt + response], "prompts": [prompt], "labels": None}, "scores"


async def load_test(url: str, pairs: list[tuple[str, str]], clients: int) -> dict:
    """Sends every pair once, from `clients` concurrent loops; returns rewards, statuses, latencies, errors."""
    rewards, statuses, latencies, errors = [None] * len(pairs), [None] * len(pairs), [], []
    retry_after = []
    queue = asyncio.Queue()
    for i in range(len(pairs)):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient):
        while not queue.empty():  # bounded: each request is sent once
            i = queue.get_nowait()
            endpoint, body, key = request_of(i, *pairs[i])
            start = time.perf_counter()
            try:
                reply = await client.post(url + endpoint, json=body)
                statuses[i] = reply.status_code
                if reply.status_code == 200:
                    rewards[i] = reply.json()[key][0]
                elif reply.status_code == 503:
                    retry_after.append(int(reply.headers["Retry-After"]))
                else:
                    errors.append(f"request {i}: HTTP {reply.status_code} {reply.text[:200]}")
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
                errors.append(f"request {i}: {err!r}")
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        elapsed = time.perf_counter() - start
    return {
        "rewards": rewards,
        "statuses": statuses,
        "latencies": latencies,
        "errors": errors,
        "retry_after": retry_after,
        "elapsed": elapsed,
    }


def summary(run: dict, offline: list[float]) -> dict:
    answered = [(r, o) for r, o in zip(run["rewards"], offline) if r is not None]
    latencies_ms = sorted(1000 * t for t in run["latencies"])
    return {
        "requests": len(offline),
        "answered_200": len(answered),
        "answered_503": sum(s == 503 for s in run["statuses"]),
        "errors": len(run["errors"]),
        "max_abs_diff_vs_offline": max((abs(r - o) for r, o in answered), default=float("nan")),
        "every_200_equals_offline": all(abs(r - o) <= 1e-5 for r, o in answered),
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))],
        "requests_per_second": len(offline) / run["elapsed"],
        "seconds": run["elapsed"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A reward checkpoint; default: the built-in tiny GPT-2 (random weights).")
    parser.add_argument("--requests", type=int, default=10000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--overload_requests", type=int, default=2000, help="Requests of the overload run; 0: none.")
    parser.add_argument("--overload_max_queue_texts", type=int, default=4, help="The overload server's queue bound.")
    parser.add_argument("--time_limit", type=float, default=900, help="Seconds each run may take.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()
    machine = hardware.machine_line()
    print(machine, flush=True)

    rows = make_pairs(max(args.requests, args.overload_requests) // 2 + 1, seed=11)
    pairs = [(p["prompt"], p[side]) for p in rows for side in ("chosen", "rejected")]
    result = {
        "machine": machine,
        "clients": args.clients,
        "max_wait_ms": args.max_wait_ms,
        "load_average_before": os.getloadavg(),
    }
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or tiny_checkpoint(tmp)
        scorer = RewardScorer.from_pretrained(path)
        load_pairs = pairs[: args.requests]
        offline = scorer.score_texts([p + r for p, r in load_pairs])
        with running_server(path, "--max_wait_ms", str(args.max_wait_ms)) as url:
            httpx.post(f"{url}/score", json={"texts": [p + r for p, r in load_pairs[:16]]}, timeout=60)  # warm-up
            run = asyncio.run(asyncio.wait_for(load_test(url, load_pairs, args.clients), args.time_limit))
        result["load"] = summary(run, offline)
        if run["errors"] or result["load"]["answered_200"] != len(load_pairs):
            failed.append("load run: errors or unanswered requests")
        if not result["load"]["every_200_equals_offline"]:
            failed.append("load run: a reward differs from the offline scorer's")
        errors = run["errors"]

        if args.overload_requests:
            over_pairs = pairs[: args.overload_requests]
            offline = scorer.score_texts([p + r for p, r in over_pairs])
            flags = ["--max_wait_ms", str(args.max_wait_ms), "--max_queue_texts", str(args.overload_max_queue_texts)]
            with running_server(path, *flags) as url:
                run = asyncio.run(asyncio.wait_for(load_test(url, over_pairs, args.clients), args.time_limit))
                healthy = httpx.get(f"{url}/health", timeout=30).status_code == 200
                after = httpx.post(f"{url}/score", json={"texts": [over_pairs[0][0] + over_pairs[0][1]]}, timeout=30)
                metrics = httpx.get(f"{url}/metrics", timeout=30).text
            result["overload"] = summary(run, offline) | {
                "max_queue_texts": args.overload_max_queue_texts,
                "retry_after_s_max": max(run["retry_after"], default=None),
                "healthy_after": healthy,
                "scores_after": after.status_code == 200 and abs(after.json()["rewards"][0] - offline[0]) <= 1e-5,
                "metrics_503": sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in metrics.splitlines()
                    if line.startswith("reward_server_requests_total") and 'status="503"' in line
                ),
            }
            over = result["overload"]
            if not over["answered_503"] or run["errors"]:
                failed.append("overload run: no 503, or other errors")
            if not (over["every_200_equals_offline"] and over["healthy_after"] and over["scores_after"]):
                failed.append("overload run: a wrong answer, or the server unhealthy after")
            errors += run["errors"]
    result["model"] = args.model or "builtin tiny GPT-2 (2 layers, hidden 128), random weights"
    result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    for error in errors[:5]:
        print(error, file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if failed:
        print("FAILED: " + "; ".join(failed), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
