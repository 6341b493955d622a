"""An HTTP reward server: a `RewardScorer` behind FastAPI, with dynamic batching of concurrent requests.

    pip install "reward-trainer[serve]"
    reward-trainer serve --model_name_or_path outputs/quickstart [--host 127.0.0.1] [--port 8000]
    curl -s localhost:8000/score -d '{"prompts": ["code of cat?\\nanswer:"], "responses": [" red"]}'
    curl -s localhost:8000/score -d '{"texts": ["code of cat?\\nanswer: red"]}'
    curl -s localhost:8000/get_reward -d '{"query": ["code of cat?\\nanswer: red"]}'   # OpenRLHF remote RM
    curl -s localhost:8000/metrics                                                      # Prometheus text

Every scoring endpoint answers `{"rewards": [...], "scores": [...]}` (the same list), one float per text, in
order, each text read as the model was trained (`RewardScorer`: its scoring contract; HH text rendered with the
chat template when training rendered it; an OpenRLHF query that stops at the policy's EOS, `<|im_end|>`, gets the
rest of the template's end-of-turn text, `<|im_end|>\\n`, that training read). Requests that arrive while the
model is busy (or within `max_wait_ms` of each other) are scored together in one `score_texts` call, which sorts
all their texts by length into batches (texts that share a prompt encode it once); each caller gets back exactly
its own slice.

Under overload it sheds load instead of queueing without limit: a request that would take the queue past
`max_queue_texts` gets 503 with `Retry-After` at once, and one not answered within `request_timeout_s` gets 503
too. With `api_key` (or the `REWARD_TRAINER_API_KEY` environment variable) every endpoint but `/health` needs
`Authorization: Bearer <key>` (else 401). On SIGTERM the requests in flight are answered before it exits.
"""

import asyncio
import contextlib
import hmac
import json
import math
import os
import socket
import threading
import time

from .config import ServeArguments

API_KEY_ENV = "REWARD_TRAINER_API_KEY"


class RequestError(Exception):
    """A bad request; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def texts_of_request(
    payload, endpoint: str, max_texts: int, strip: list[str] | None = None
) -> tuple[list[str], list[str] | None]:
    """The texts to score in a decoded JSON body and their prompts (group keys: texts of one prompt are scored
    as a group, the prompt encoded once), or a `RequestError` that says what is wrong. `strip`: strings removed
    from `/get_reward` queries and prompts."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(payload).__name__}")
    groups = None
    if endpoint == "get_reward":
        texts = _string_list(payload, "query")
        if payload.get("prompts") is not None:  # OpenRLHF sends each query's prompt beside it
            groups = _string_list(payload, "prompts")
            if len(groups) != len(texts):
                raise RequestError(400, f"got {len(texts)} queries but {len(groups)} prompts")
        for unwanted in strip or ():
            texts = [t.replace(unwanted, "") for t in texts]
            groups = groups and [g.replace(unwanted, "") for g in groups]
    elif "texts" in payload:
        texts = _string_list(payload, "texts")
    elif "prompts" in payload and "responses" in payload:
        prompts, responses = _string_list(payload, "prompts"), _string_list(payload, "responses")
        if len(prompts) != len(responses):
            raise RequestError(400, f"got {len(prompts)} prompts but {len(responses)} responses")
        texts, groups = [p + r for p, r in zip(prompts, responses)], prompts
    else:
        raise RequestError(400, 'expected {"texts": [...]} or {"prompts": [...], "responses": [...]}')
    if len(texts) > max_texts:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {max_texts}")
    return texts, groups


def _string_list(payload: dict, key: str) -> list[str]:
    value = payload.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RequestError(400, f"field {key!r} must be a list of strings")
    return value


class Overloaded(Exception):
    """The queue is full, or a request waited past its timeout: answer 503 with `Retry-After`."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Metrics:
    """Counters, a gauge and histograms, rendered in the Prometheus text format (`GET /metrics`)."""

    BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}  # (path, status) -> count
        self.texts_scored = 0
        self.batch_texts = [0] * len(self.BATCH_BUCKETS)  # cumulative-bucket counts, filled at render time
        self.batch_sum = self.batch_count = 0
        self.latency = [0] * len(self.LATENCY_BUCKETS)
        self.latency_sum, self.latency_count = 0.0, 0

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests[path, status] = self.requests.get((path, status), 0) + 1
        self.latency_sum += seconds
        self.latency_count += 1
        for i, bound in enumerate(self.LATENCY_BUCKETS):
            if seconds <= bound:
                self.latency[i] += 1
                break

    def observe_batch(self, texts: int) -> None:
        self.texts_scored += texts
        self.batch_sum += texts
        self.batch_count += 1
        for i, bound in enumerate(self.BATCH_BUCKETS):
            if texts <= bound:
                self.batch_texts[i] += 1
                break

    def render(self, queue_texts: int) -> str:
        lines = [
            "# HELP reward_server_requests_total HTTP requests answered, by path and status code.",
            "# TYPE reward_server_requests_total counter",
        ]
        for (path, status), count in sorted(self.requests.items()):
            lines.append(f'reward_server_requests_total{{path="{path}",status="{status}"}} {count}')
        lines += [
            "# HELP reward_server_texts_scored_total Texts scored by the model.",
            "# TYPE reward_server_texts_scored_total counter",
            f"reward_server_texts_scored_total {self.texts_scored}",
            "# HELP reward_server_queue_texts Texts waiting in the queue, not yet taken by the model.",
            "# TYPE reward_server_queue_texts gauge",
            f"reward_server_queue_texts {queue_texts}",
        ]
        lines += self._histogram(
            "reward_server_batch_texts",
            "Texts per model call (concurrent requests merged).",
            self.BATCH_BUCKETS,
            self.batch_texts,
            self.batch_sum,
            self.batch_count,
        )
        lines += self._histogram(
            "reward_server_request_latency_seconds",
            "Time from a request's arrival to its answer.",
            self.LATENCY_BUCKETS,
            self.latency,
            self.latency_sum,
            self.latency_count,
        )
        return "\n".join(lines) + "\n"

    @staticmethod
    def _histogram(name, help_text, bounds, counts, total, count) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, n in zip(bounds, counts):
            cumulative += n
            lines.append(f'{name}_bucket{{le="{bound}"}} {cumulative}')
        lines += [f'{name}_bucket{{le="+Inf"}} {count}', f"{name}_sum {total}", f"{name}_count {count}"]
        return lines


class DynamicBatcher:
    """Merges the texts of concurrent requests into one call of `score_fn`, run in a worker thread.

    The queue is bounded in texts: a request that would take it past `max_queue_texts` is refused at once
    (`Overloaded`), and one that is not answered within `timeout_s` of its arrival gets `Overloaded` too and
    is dropped from the queue if the model has not taken it yet.
    """

    def __init__(
        self,
        score_fn,
        max_wait_s: float,
        max_texts_per_call: int,
        max_queue_texts: int = 2**31,
        timeout_s: float | None = None,
        metrics: Metrics | None = None,
    ):
        self.score_fn, self.max_wait_s, self.max_texts_per_call = score_fn, max_wait_s, max_texts_per_call
        self.max_queue_texts, self.timeout_s = max_queue_texts, timeout_s
        self.metrics = metrics or Metrics()
        self.queue: asyncio.Queue | None = None  # created on the server's event loop, in `create_app`'s lifespan
        self.queued_texts = 0  # admitted, not yet taken by the model
        self.texts_per_second = None  # measured throughput, for Retry-After

    def retry_after_s(self) -> int:
        """Seconds after which the queue has likely drained: its texts over the measured throughput (>= 1)."""
        if not self.texts_per_second:
            return 1
        return max(1, math.ceil(self.queued_texts / self.texts_per_second))

    async def score(self, texts: list[str], groups: list[str] | None = None) -> list[float]:
        if self.queued_texts + len(texts) > self.max_queue_texts:
            raise Overloaded(
                f"the queue holds {self.queued_texts} texts; {len(texts)} more would pass its limit of "
                f"{self.max_queue_texts}",
                self.retry_after_s(),
            )
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)
        await self.queue.put((texts, groups, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # the batcher skips it if it has not taken it yet
            message = f"not scored within the request timeout of {self.timeout_s} s"
            raise Overloaded(message, self.retry_after_s()) from None

    async def next_item(self, deadline: float | None = None):
        """The next request that still waits for an answer (timed-out ones leave the queue count here), waiting
        until `deadline` (loop time; None: for ever). `asyncio.TimeoutError` when none came by then."""
        loop = asyncio.get_running_loop()
        while True:
            if not self.queue.empty():
                item = self.queue.get_nowait()
            elif deadline is None:
                item = await self.queue.get()
            else:
                item = await asyncio.wait_for(self.queue.get(), max(deadline - loop.time(), 1e-4))
            self.queued_texts -= len(item[0])
            if not item[2].done():
                return item

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.next_item()]
            deadline, count = loop.time() + self.max_wait_s, len(waiting[0][0])
            while count < self.max_texts_per_call:
                if self.queue.empty() and loop.time() >= deadline:
                    break
                try:
                    item = await self.next_item(deadline)
                except asyncio.TimeoutError:
                    break
                waiting.append(item)
                count += len(item[0])
            texts = [text for item_texts, _, _ in waiting for text in item_texts]
            groups = None
            if any(item_groups is not None for _, item_groups, _ in waiting):  # a text without a prompt: its own group
                groups = [key for t, g, _ in waiting for key in (g if g is not None else [object() for _ in t])]
            start = loop.time()
            try:
                rewards = await asyncio.to_thread(self.score_fn, texts, groups)
            except Exception as err:  # one bad batch answers 500 to its callers, the server goes on
                for _, _, future in waiting:
                    if not future.done():
                        future.set_exception(err)
                continue
            self.metrics.observe_batch(len(texts))
            rate = len(texts) / max(loop.time() - start, 1e-6)
            self.texts_per_second = rate if self.texts_per_second is None else 0.8 * self.texts_per_second + 0.2 * rate
            start = 0
            for item_texts, _, future in waiting:
                if not future.done():  # the client may have gone away, or timed out
                    future.set_result(rewards[start : start + len(item_texts)])
                start += len(item_texts)


def create_app(scorer, args: ServeArguments):
    """The FastAPI application around `scorer` (a `RewardScorer`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    def score_fn(texts, groups):
        # A text's prompt (its group key when it came with one) says where an over-long text's prompt ends.
        prompts = None if groups is None else [g if isinstance(g, str) else "" for g in groups]
        return scorer.score_texts(texts, normalize=args.normalize, groups=groups, prompts=prompts)

    metrics = Metrics()
    batcher = DynamicBatcher(
        score_fn,
        args.max_wait_ms / 1000,
        max_texts_per_call=args.max_texts,
        max_queue_texts=args.max_queue_texts,
        timeout_s=args.request_timeout_s,
        metrics=metrics,
    )
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.queue = asyncio.Queue()  # bound to the server's event loop
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="reward_trainer reward server", lifespan=lifespan)
    app.state.batcher = batcher

    @app.middleware("http")
    async def authorize_and_measure(request: Request, call_next):
        start = time.perf_counter()
        if api_key and request.url.path != "/health" and not authorized(request.headers.get("authorization"), api_key):
            response = JSONResponse(
                {"error": "missing or wrong API key: send the header `Authorization: Bearer <key>`"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            response = await call_next(request)
        metrics.observe_request(request.url.path, response.status_code, time.perf_counter() - start)
        return response

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > args.max_body_bytes:
            raise RequestError(413, f"body of {declared} bytes; the limit is {args.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > args.max_body_bytes:
                raise RequestError(413, f"body over the limit of {args.max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise RequestError(400, f"body is not valid JSON: {err}") from None

    async def answer(request: Request, endpoint: str):
        try:
            texts, groups = texts_of_request(await read_json(request), endpoint, args.max_texts, args.strip_from_query)
            if endpoint == "get_reward":  # OpenRLHF decodes queries from tokens that stop at the policy's EOS
                texts = scorer.complete_turn_ends(texts)
            rewards = await batcher.score(texts, groups) if texts else []
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        except Overloaded as err:
            return JSONResponse({"error": str(err)}, status_code=503, headers={"Retry-After": str(err.retry_after_s)})
        return {"rewards": rewards, "scores": rewards}  # OpenRLHF reads `scores`, older clients `rewards`

    @app.post("/score")
    async def score(request: Request):
        """`{"texts": [...]}` or `{"prompts": [...], "responses": [...]}` -> `{"rewards": [...], "scores": [...]}`."""
        return await answer(request, "score")

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's remote reward model API: `{"query": [...], "prompts": [...], "labels": [...]}` ->
        `{"rewards": [...], "scores": [...]}` (`prompts` and `labels` optional)."""
        return await answer(request, "get_reward")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": args.model_name_or_path, "normalize": args.normalize}

    @app.get("/metrics")
    async def prometheus_metrics():
        return PlainTextResponse(metrics.render(batcher.queued_texts), media_type="text/plain; version=0.0.4")

    return app


def authorized(header: str | None, api_key: str) -> bool:
    """Whether an `Authorization` header carries `Bearer <api_key>` (compared in constant time)."""
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (for tests and benchmarks)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_background(app, host: str = "127.0.0.1", port: int = 0):
    """Runs `app` on uvicorn in a daemon thread; yields its base URL (port 0: a free port). For tests and benchmarks."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server did not start")
        threading.Event().wait(0.01)
    bound_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def serve(args: ServeArguments) -> None:
    """Loads the model and serves it until interrupted."""
    import uvicorn

    from .scorer import RewardScorer

    scorer = RewardScorer.from_pretrained(
        args.model_name_or_path, device=args.device, dtype=args.dtype, max_batch_tokens=args.max_batch_tokens
    )  # read by its scoring contract, on the device rule's device unless --device says otherwise
    # On SIGTERM (or Ctrl-C) uvicorn stops accepting connections and waits for the requests in flight, which the
    # batcher still answers, before the lifespan ends; `request_timeout_s` bounds that wait.
    uvicorn.run(
        create_app(scorer, args),
        host=args.host,
        port=args.port,
        timeout_graceful_shutdown=args.request_timeout_s,
    )
