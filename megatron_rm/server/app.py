"""The reward server's HTTP app (FastAPI on uvicorn): routes, request limits and error bodies.

Every request is validated, limited and tokenized here, before it reaches the batcher, so
a bad request is refused on its own and never delays or changes another client's rewards.
Every refusal has one shape, `{"error": {"message", "type", "param", "code"}}`, whatever
raised it (our checks, FastAPI's validation, an unknown route). Requests are tokenized one
at a time on a thread of their own (`Tokenizing`): one tokenizer is not safe to call from
several threads at once, and off the event loop a long text never stalls other clients.

Endpoints (see `protocol` for the fields):
- `POST /score`: native items -> rewards, normalised rewards (when the model stores
  statistics) and truncation flags; a float per item for one label, a list for several.
- `POST /get_reward` (OpenRLHF): the first label's reward per query; normalised by the
  model's stored statistics when the app is built with `normalize=True` (OpenRLHF applies
  its normalisation on the server, and its client ignores the flag for a remote model).
- `POST /classify`, `/v1/classify` (vLLM, verl's reward loop; SGLang's path) and `POST /pooling`.
- `GET /health`: counts of forwards, requests and items scored; a 503 once the forward loop
  has stopped (then every request is refused with a 503 instead of waiting forever).
- `GET /v1/models`: OpenAI's list, with the served name and the length limit.

A token-head model (outcome or process reward model) answers on the same paths with
`token_server`'s routes: rewards aggregated from per-token probabilities, per-token class
probabilities (`/pooling` task token_classify) and step scores (`/score`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import h11
import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from megatron_rm.errors import DataError, UsageError
from megatron_rm.scoring.scorer import Scorer
from megatron_rm.server.protocol import (
    CLASSIFY_TASK,
    ClassifyRequest,
    PoolingRequest,
    RequestProblem,
    RewardRequest,
    ScoreRequest,
    checked,
    classify_response,
    error_body,
    models_response,
    pooling_response,
    reward_response,
    score_response,
)
from megatron_rm.server.serving_loop import Batcher, Closed
from megatron_rm.server.token_routes import add_token_routes

# What one request may ask for: 1024 inputs, 32 MiB of JSON (some 8M tokens of text), and a body
# that keeps arriving (a client stalled mid-body would otherwise hold its request, and a drain, forever).
# Headers are a few hundred bytes: 10 s for them is long on any network, and short enough that
# clients stalled mid-headers cannot pile up connections.
DEFAULT_MAX_ITEMS = 1024
DEFAULT_MAX_BODY_BYTES = 32 * 2**20
DEFAULT_BODY_TIMEOUT_S = 30.0
DEFAULT_HEADER_TIMEOUT_S = 10.0


def build_app(scorer: Scorer, batcher: Batcher, *, name: str, normalize: bool = False,
              max_items: int = DEFAULT_MAX_ITEMS, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
              body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> FastAPI:
    """The app; it starts the batcher with itself and closes it (stopping the other ranks) last."""
    if normalize:
        check_normalize(scorer, "normalize", name)
    created = int(time.time())

    tokenizing = Tokenizing()

    @asynccontextmanager
    async def lifespan(_app):
        batcher.start()
        try:
            yield
        finally:
            tokenizing.close()
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="megatron-rm reward server", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.tokenizing = tokenizing
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, timeout_s=body_timeout_s)
    _add_error_handlers(app)
    if scorer.token_head:
        add_token_routes(app, scorer, batcher, tokenizing, name=name, max_items=max_items)
    else:
        _add_sequence_routes(app, scorer, batcher, tokenizing, name=name, normalize=normalize, max_items=max_items)

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        if not batcher.serving:
            raise RequestProblem(503, "not serving: the forward loop has stopped")
        return {"status": "ok", **batcher.counts}

    @app.get("/v1/models")
    async def models():
        return models_response(name, created, scorer.max_length)

    return app


def check_normalize(scorer: Scorer, option: str, model: str) -> None:
    """Refuse `option` (normalised rewards) unless `model` gives sequence rewards and stores the
    reward statistics to normalise them with."""
    if scorer.token_head:
        raise UsageError(f"{option}: {model} is a token-head model, whose rewards are probabilities")
    if scorer.model.normalization is None:
        raise UsageError(f"{option}: {model} stores no reward statistics to normalise with")


class Tokenizing:
    """One thread that tokenizes requests in turn, awaited from the event loop."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def __call__(self, function: Callable, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, function, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _add_sequence_routes(app: FastAPI, scorer: Scorer, batcher: Batcher, tokenizing: Tokenizing, *, name: str,
                         normalize: bool, max_items: int) -> None:
    async def rewards_of(request) -> tuple:
        try:
            encoded, names = await tokenizing(request.encode, scorer.encoder, max_items)
        except DataError as error:  # e.g. messages for a tokenizer without a chat template
            raise RequestProblem(422, str(error)) from None
        sequences = checked(encoded, names)
        return await batcher.score(sequences), sequences, encoded

    @app.post("/score")
    async def score(request: ScoreRequest):
        rewards, _, encoded = await rewards_of(request)
        return score_response(rewards, scorer.normalized(rewards), [item.truncated for item in encoded])

    @app.post("/get_reward")
    async def get_reward(request: RewardRequest):
        rewards, _, _ = await rewards_of(request)
        return reward_response((scorer.normalized(rewards) if normalize else rewards)[:, 0])

    @app.post("/classify")
    @app.post("/v1/classify")
    async def classify(request: ClassifyRequest):
        activation = request.use_activation_resolved()
        rewards, sequences, _ = await rewards_of(request)
        return classify_response(name, rewards, activation, sequences, scorer.model.label)

    @app.post("/pooling")
    async def pooling(request: PoolingRequest):
        if request.task != CLASSIFY_TASK:
            raise RequestProblem(400, f"task {request.task!r} is not served: a sequence reward model serves "
                                      f"task {CLASSIFY_TASK!r} only", "task")
        activation = request.use_activation_resolved()
        rewards, sequences, _ = await rewards_of(request)
        return pooling_response(name, rewards, activation, sequences)


def _add_error_handlers(app: FastAPI) -> None:
    def refuse(status: int, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(error_body(status, message, param), status_code=status)

    @app.exception_handler(RequestProblem)
    async def problem(_request: Request, error: RequestProblem):
        return refuse(error.status, error.message, error.param)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        if "json" not in request.headers.get("content-type", ""):  # FastAPI parses JSON bodies only
            return refuse(415, "send the body as JSON, with the header Content-Type: application/json")
        errors = error.errors()
        if any(item["type"] == "json_invalid" for item in errors):
            return refuse(400, f"the body is not valid JSON ({errors[0].get('ctx', {}).get('error', 'malformed')})")
        fields = [_field(item["loc"]) for item in errors]
        return refuse(422, "; ".join(f"{field}: {item['msg']}" for field, item in zip(fields, errors)), fields[0])

    @app.exception_handler(HTTPException)
    async def http(_request: Request, error: HTTPException):
        return refuse(error.status_code, str(error.detail))

    @app.exception_handler(Closed)
    async def closed(_request: Request, error: Closed):
        return refuse(503, str(error))

    @app.exception_handler(Exception)
    async def failed(_request: Request, error: Exception):  # the traceback goes to the server's log only
        return refuse(500, f"the server failed on this request ({type(error).__name__}); see its log")


def _field(location: tuple) -> str:
    """FastAPI's error location as the client wrote the field: ('body', 'items', 2, 'x') -> items[2].x."""
    path = ""
    for part in location[1:] if location[:1] == ("body",) else location:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path or "body"


class BodyLimit:
    """Refuses a body over `max_bytes` with a 413 before anything parses it (a declared
    length at once, a chunked body as soon as it grows past the limit), and one whose next
    part does not arrive within `timeout_s` with a 408."""

    def __init__(self, app, max_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        chunks, size = [], 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.timeout_s)
            except asyncio.TimeoutError:
                why = f"the request body stopped arriving for {self.timeout_s:g} s (--body-timeout-s)"
                return await JSONResponse(error_body(408, why), status_code=408,
                                          headers={"connection": "close"})(scope, receive, send)
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)

        async def replay():
            nonlocal body
            if body is None:
                return await receive()
            message, body = {"type": "http.request", "body": body, "more_body": False}, None
            return message

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        message = f"the request body exceeds the server's limit of {self.max_bytes} bytes (--max-body-bytes)"
        await JSONResponse(error_body(413, message), status_code=413)(scope, receive, send)


class HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol with a limit on a request's headers, which it would otherwise
    wait for forever: from the connection's start, or from the first byte of a request on a
    kept-alive one, the headers must be complete within `timeout_s`. Else the connection is
    answered 408 (when part of a request has arrived) and closed. A connection idle between
    requests is not timed here (that is uvicorn's `timeout_keep_alive`), nor a request's body
    (`BodyLimit`). `HeaderTimeout.after(seconds)` is the class to pass as uvicorn's `http`."""

    timeout_s = DEFAULT_HEADER_TIMEOUT_S
    _headers_timer: asyncio.TimerHandle | None = None

    @classmethod
    def after(cls, timeout_s: float) -> type[HeaderTimeout]:
        return type(cls.__name__, (cls,), {"timeout_s": timeout_s})

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._time_headers()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # these bytes begin (or continue) a request's headers
            self._time_headers()
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_timing()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a pipelined request
            self._time_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timing()
        super().connection_lost(exc)

    def _time_headers(self) -> None:
        if self._headers_timer is None:
            self._headers_timer = self.loop.call_later(self.timeout_s, self._headers_late)

    def _stop_timing(self) -> None:
        if self._headers_timer is not None:
            self._headers_timer.cancel()
            self._headers_timer = None

    def _headers_late(self) -> None:
        self._headers_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.conn.trailing_data[0]:  # a request has begun: say why it ends
            why = f"the request headers did not arrive within {self.timeout_s:g} s (--header-timeout-s)"
            body = json.dumps(error_body(408, why), separators=(",", ":")).encode()  # as JSONResponse writes it
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (port 0: a free one), ready for `Server.run(sockets=[...])`."""
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP, and
    # without it small responses wait for delayed ACKs (~40 ms per request on a kept-alive connection).
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


class Server(uvicorn.Server):
    """uvicorn's server with two changes. `on_ready` runs once it accepts connections. A
    SIGINT/SIGTERM starts the graceful shutdown and is then consumed: stock uvicorn raises
    it again once the server has stopped, which would end the process with status 143
    instead of returning to the caller, which shuts the process group down and exits 0."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None] = lambda: None):
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if self.started:
            self.on_ready()

    @contextlib.contextmanager
    def capture_signals(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
