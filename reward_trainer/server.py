"""An HTTP reward server: a `RewardScorer` behind FastAPI, with dynamic batching of concurrent requests.

    pip install "reward-trainer[serve]"
    reward-trainer serve --model_name_or_path outputs/quickstart [--host 127.0.0.1] [--port 8000]
    curl -s localhost:8000/score -d '{"prompts": ["code of cat?\\nanswer:"], "responses": [" red"]}'
    curl -s localhost:8000/score -d '{"texts": ["code of cat?\\nanswer: red"]}'
    curl -s localhost:8000/get_reward -d '{"query": ["code of cat?\\nanswer: red"]}'   # OpenRLHF remote RM

Every endpoint answers `{"rewards": [...]}`, one float per text, in order. Requests that arrive while the
model is busy (or within `max_wait_ms` of each other) are scored together in one `score_texts` call, which
sorts all their texts by length into batches; each caller gets back exactly its own slice.
"""

import asyncio
import contextlib
import json
import threading

from .config import ServeArguments


class RequestError(Exception):
    """A bad request; `status` is the HTTP code to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def texts_of_request(payload, endpoint: str, max_texts: int) -> tuple[list[str], list[str] | None]:
    """The texts to score in a decoded JSON body and their prompts (group keys: texts of one prompt are scored
    as a group, the prompt encoded once), or a `RequestError` that says what is wrong."""
    if not isinstance(payload, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(payload).__name__}")
    groups = None
    if endpoint == "get_reward":
        texts = _string_list(payload, "query")
        if payload.get("prompts") is not None:  # OpenRLHF sends each query's prompt beside it
            groups = _string_list(payload, "prompts")
            if len(groups) != len(texts):
                raise RequestError(400, f"got {len(texts)} queries but {len(groups)} prompts")
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


class DynamicBatcher:
    """Merges the texts of concurrent requests into one call of `score_fn`, run in a worker thread."""

    def __init__(self, score_fn, max_wait_s: float, max_texts_per_call: int):
        self.score_fn, self.max_wait_s, self.max_texts_per_call = score_fn, max_wait_s, max_texts_per_call
        self.queue: asyncio.Queue | None = None  # created on the server's event loop, in `create_app`'s lifespan

    async def score(self, texts: list[str], groups: list[str] | None = None) -> list[float]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, groups, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await self.queue.get()]
            deadline, count = loop.time() + self.max_wait_s, len(waiting[0][0])
            while count < self.max_texts_per_call:
                if self.queue.empty():
                    timeout = deadline - loop.time()
                    if timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self.queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                else:
                    item = self.queue.get_nowait()
                waiting.append(item)
                count += len(item[0])
            texts = [text for item_texts, _, _ in waiting for text in item_texts]
            groups = None
            if any(item_groups is not None for _, item_groups, _ in waiting):  # a text without a prompt: its own group
                groups = [key for t, g, _ in waiting for key in (g if g is not None else [object() for _ in t])]
            try:
                rewards = await asyncio.to_thread(self.score_fn, texts, groups)
            except Exception as err:  # one bad batch answers 500 to its callers, the server goes on
                for _, _, future in waiting:
                    if not future.done():
                        future.set_exception(err)
                continue
            start = 0
            for item_texts, _, future in waiting:
                if not future.done():  # the client may have gone away
                    future.set_result(rewards[start : start + len(item_texts)])
                start += len(item_texts)


def create_app(scorer, args: ServeArguments):
    """The FastAPI application around `scorer` (a `RewardScorer`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    def score_fn(texts, groups):
        return scorer.score_texts(texts, normalize=args.normalize, groups=groups)

    batcher = DynamicBatcher(score_fn, args.max_wait_ms / 1000, max_texts_per_call=args.max_texts)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.queue = asyncio.Queue()  # bound to the server's event loop
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    app = FastAPI(title="reward_trainer reward server", lifespan=lifespan)
    app.state.batcher = batcher

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
            texts, groups = texts_of_request(await read_json(request), endpoint, args.max_texts)
        except RequestError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)
        rewards = await batcher.score(texts, groups) if texts else []
        return {"rewards": rewards}

    @app.post("/score")
    async def score(request: Request):
        """`{"texts": [...]}` or `{"prompts": [...], "responses": [...]}` -> `{"rewards": [...]}`."""
        return await answer(request, "score")

    @app.post("/get_reward")
    async def get_reward(request: Request):
        """OpenRLHF's remote reward model API: `{"query": [...]}` -> `{"rewards": [...]}`."""
        return await answer(request, "get_reward")

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": args.model_name_or_path, "normalize": args.normalize}

    return app


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
    )
    uvicorn.run(create_app(scorer, args), host=args.host, port=args.port)
