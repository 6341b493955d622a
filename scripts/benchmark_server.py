"""Load test of the reward server: N requests from C concurrent clients on loopback, bounded in time.

    python scripts/benchmark_server.py --output server.json
    python scripts/benchmark_server.py --model outputs/quickstart --requests 2000 --clients 16

Starts `reward-trainer serve` as a subprocess on a free loopback port (by default on the built-in tiny GPT-2,
saved to a temporary directory), sends one text per request (`/score` and `/get_reward` alternately), and
checks that there were no errors and that every reward equals the offline `RewardScorer`'s (<= 1e-5).
Exits 1 otherwise. Prints p50/p99 latency and requests/s.
"""

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import torch

from reward_trainer import RewardScorer
from reward_trainer.quickstart import build_tiny_gpt2, build_tokenizer, make_pairs


def tiny_checkpoint(directory: str) -> str:
    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    build_tiny_gpt2(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


async def load_test(url: str, texts: list[str], clients: int) -> tuple[list, list, list, float]:
    rewards, latencies, errors = [None] * len(texts), [], []
    queue = asyncio.Queue()
    for i in range(len(texts)):
        queue.put_nowait(i)

    async def client_loop(client: httpx.AsyncClient):
        while not queue.empty():
            i = queue.get_nowait()
            endpoint, body = (
                ("/score", {"texts": [texts[i]]}) if i % 2 == 0 else ("/get_reward", {"query": [texts[i]]})
            )
            start = time.perf_counter()
            try:
                reply = await client.post(url + endpoint, json=body)
                reply.raise_for_status()
                rewards[i] = reply.json()["rewards"][0]
            except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
                errors.append(f"request {i}: {err!r}")
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        start = time.perf_counter()
        await asyncio.gather(*[client_loop(client) for _ in range(clients)])
        elapsed = time.perf_counter() - start
    return rewards, latencies, errors, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="A reward checkpoint; default: the built-in tiny GPT-2 (random weights).")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max_wait_ms", type=float, default=5.0)
    parser.add_argument("--time_limit", type=float, default=600, help="Seconds the whole load test may take.")
    parser.add_argument("--output", help="Write the results as JSON here.")
    args = parser.parse_args()

    texts = [
        p["prompt"] + p[side] for p in make_pairs(args.requests // 2 + 1, seed=11) for side in ("chosen", "rejected")
    ]
    texts = texts[: args.requests]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or tiny_checkpoint(tmp)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable,
            "-m",
            "reward_trainer.cli",
            "serve",
            "--model_name_or_path",
            path,
            "--port",
            str(port),
            "--max_wait_ms",
            str(args.max_wait_ms),
        ]
        server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            asyncio.run(wait_until_healthy(url, server, timeout=120))
            httpx.post(f"{url}/score", json={"texts": texts[:16]}, timeout=60).raise_for_status()  # warm-up
            run = asyncio.wait_for(load_test(url, texts, args.clients), timeout=args.time_limit)
            rewards, latencies, errors, elapsed = asyncio.run(run)
        finally:
            server.terminate()
            server.wait(timeout=30)
        offline = RewardScorer.from_pretrained(path).score_texts(texts)

    answered = [(r, o) for r, o in zip(rewards, offline) if r is not None]
    max_diff = max((abs(r - o) for r, o in answered), default=float("nan"))
    latencies_ms = sorted(1000 * t for t in latencies)
    result = {
        "requests": len(texts),
        "clients": args.clients,
        "errors": len(errors),
        "max_abs_diff_vs_offline": max_diff,
        "rewards_equal_offline": len(answered) == len(texts) and max_diff <= 1e-5,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": latencies_ms[min(len(latencies_ms) - 1, int(0.99 * len(latencies_ms)))],
        "requests_per_second": len(texts) / elapsed,
        "seconds": elapsed,
        "max_wait_ms": args.max_wait_ms,
        "model": args.model or "builtin tiny GPT-2 (2 layers, hidden 128), random weights",
    }
    print(json.dumps(result, indent=2))
    for error in errors[:5]:
        print(error, file=sys.stderr)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    if errors or not result["rewards_equal_offline"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
