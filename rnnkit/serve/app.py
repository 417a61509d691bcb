"""The HTTP service: a FastAPI app over one run directory, with JSON endpoints and the web page.

What is here: `create_app(run_dir, config)` with `GET /health`, `GET /info`, `GET /` (the page), and for
language models `POST /complete` (with typing sessions), `DELETE /sessions/{id}`, `POST /generate`
and `POST /generate/stream` (one JSON line per piece of text); for the other tasks `POST /predict`.
Request and answer shapes are the pydantic models of schemas.py. Every refusal or failure, whichever
layer it comes from (validation, routing, the tasks, the body limit), is answered with the one shape
`{"error": message, "field": name or null}` and the server stays up. What is not: the models, decoding
or training (the service imports tasks, checkpoints and decoding, never the trainer).

Handlers are plain functions, which the ASGI server runs in its thread pool, so requests from many
clients proceed at once; torch releases the interpreter lock inside its kernels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import threading
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rnnkit.checkpoint import read_run_config
from rnnkit.config import UserError
from rnnkit.serve.batching import BatchedSteps
from rnnkit.serve.config import ServeConfig
from rnnkit.serve.schemas import (
    ERRORS,
    JSON_ERRORS,
    CompleteRequest,
    CompleteResponse,
    Deleted,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    Health,
    Info,
    PredictRequest,
    StreamLine,
    predict_response,
)
from rnnkit.serve.sessions import SessionStore, UnknownSession

MAX_BODY = 2_000_000  # bytes of a request body

# The request fields a task's message may start with ("inputs.3: the text is empty").
_FIELD = re.compile(r"^(inputs(?:\.\d+)?|prefix|prompt|n|max_tokens|temperature|top_k|top_p|seed|session"
                    r"|history|events): ")


def _error(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "field": field}, headers=headers)


class Refusal(HTTPException):
    """A refusal raised below the routes (the body limit), answered in the service's error shape."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(status_code=status, detail=message)
        self.field = field


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413, whether or not they give their size up front."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = dict(scope["headers"]).get(b"content-length", b"")
        if size.isdigit() and int(size) > self.limit:
            await _error(413, self._message(int(size)), "body")(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # a chunked body that did not say its size
                    raise Refusal(413, self._message(received, "over "), "body")
            return message

        await self.app(scope, counted, send)

    def _message(self, size: int, over: str = "") -> str:
        return f"body: the request body has {over}{size:,} bytes; at most {self.limit:,} are accepted"


class NDJSONResponse(StreamingResponse):
    media_type = "application/x-ndjson"


def _is_json(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _user_error(exc: UserError) -> tuple[str, str | None]:
    """A task's message and the request field it names, if it starts with one."""
    message = str(exc)
    match = _FIELD.match(message)
    return message, match.group(1) if match else None


def _page(name: str = "index.html") -> str:
    return resources.files("rnnkit.serve").joinpath(f"static/{name}").read_text(encoding="utf-8")


class _Stopped(Exception):
    """The client of a generation stream went away."""


async def _generation_lines(loaded: Any, req: GenerateRequest) -> AsyncIterator[str]:
    """The lines of /generate/stream: generation runs in a thread of its own and hands each piece over.

    Whatever the generation raises ends the stream with an error line, so no response is left open;
    when the client goes away (the stream is cancelled or closed), the thread stops at its next token.
    """
    from rnnkit.tasks import lm

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    stop = threading.Event()

    def put(line: dict[str, Any]) -> None:
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, line)
        except RuntimeError:  # the event loop is closed: nobody is listening
            stop.set()

    def on_text(piece: str) -> None:
        if stop.is_set():
            raise _Stopped
        put({"text": piece})

    def work() -> None:
        try:
            with torch.no_grad():
                lm.generate(loaded, req.prompt, req.max_tokens, req.temperature, req.top_k, req.top_p,
                            seed=req.seed, on_text=on_text)
            put({"done": True})
        except _Stopped:
            pass
        except UserError as e:
            message, field = _user_error(e)
            put({"error": message, "field": field})
        except Exception as e:  # any failure must reach the client, or the stream never ends
            put({"error": f"generation failed: {type(e).__name__}: {e}", "field": None})

    threading.Thread(target=work, name="rnnkit-generate", daemon=True).start()
    try:
        while True:
            line = await pieces.get()
            yield json.dumps(line) + "\n"
            if "text" not in line:
                return
    finally:
        stop.set()


def create_app(run_dir: str | Path, config: ServeConfig | None = None, device: str = "cpu") -> FastAPI:
    """The service for one run directory (any task)."""
    from rnnkit import __version__
    from rnnkit.tasks import runner

    config = config or ServeConfig()
    meta = read_run_config(run_dir)
    task = meta["task"]
    kind = runner.task_of(run_dir)
    loaded = runner.load(run_dir, device=device)
    app = FastAPI(title="rnnkit", version=__version__,
                  description=f"rnnkit {task} service for the run {Path(run_dir).name}. Every error is answered "
                              "as {\"error\": message, \"field\": name or null}.")
    app.add_middleware(BodyLimit, limit=MAX_BODY)
    model = getattr(loaded, "model", None)
    info: dict[str, Any] = {
        "task": task,
        "run": Path(run_dir).name,
        "version": __version__,
        "cell": meta["model"]["cell"],
        "hidden_size": meta["model"]["hidden_size"],
        "num_layers": meta["model"]["num_layers"],
        "parameters": sum(p.numel() for p in model.parameters()) if model is not None else None,
    }
    info.update(kind.describe_run(loaded))
    if kind.limits_input_chars:
        info["max_input_chars"] = config.max_input_chars
    sessions, steps = None, None
    if kind.generates_text:
        # Sessions and the completion search step the model through the batcher, which joins the steps of
        # concurrent requests; a lone request steps the model directly.
        steps = BatchedSteps(loaded.model) if config.batch_steps else loaded.model
        searcher = dataclasses.replace(loaded, model=steps)
        sessions = SessionStore(steps, config.max_sessions, config.session_idle_seconds, config.session_states,
                                config.session_memory_bytes)
    app.state.sessions = sessions
    app.state.steps = steps
    app.state.loaded = loaded
    app.state.config = config

    # ------------------------------------------------------------------------------- errors

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        content_type = request.headers.get("content-type", "")
        if any(isinstance(e.get("input"), bytes) for e in errors) and not _is_json(content_type):
            return _error(415, f"body: expected a JSON body sent as application/json; got "
                               f"{content_type or 'no Content-Type'}", "body")
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            detail = first.get("ctx", {}).get("error") or first.get("msg", "")
            return _error(400, f"body: the request body is not valid JSON: {detail}", "body")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = "required"
        elif "input" in first and first.get("type") not in ("extra_forbidden",):
            shown = json.dumps(first["input"], default=repr)[:60]
            message = f"{message}; got {shown}"
        return _error(422, f"{field}: {message}", field)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = getattr(exc, "headers", None)
        if isinstance(exc, Refusal):
            return _error(exc.status_code, exc.detail, exc.field, headers)
        if exc.status_code == 404:
            return _error(404, f"path: no endpoint {request.url.path}; the endpoints are listed at /docs", "path",
                          headers)
        if exc.status_code == 405:
            allowed = (headers or {}).get("Allow", "")
            return _error(405, f"method: {request.url.path} does not take {request.method}; it takes {allowed}",
                          "method", headers)
        return _error(exc.status_code, str(exc.detail), None, headers)

    @app.exception_handler(UnknownSession)
    async def unknown_session(request: Request, exc: UnknownSession) -> JSONResponse:
        return _error(404, f"session: no session {exc.args[0]!r} (never made, or expired); omit it to start one",
                      "session")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return _error(422, *_user_error(exc))

    @app.exception_handler(Exception)
    async def failure(request: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"the service failed: {type(exc).__name__}: {exc}")

    # ----------------------------------------------------------------------------- endpoints

    @app.get("/health", response_model=Health)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info", response_model=Info, response_model_exclude_none=True)
    def get_info() -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if sessions is not None:
            extra["sessions"] = sessions.stats()
        if isinstance(steps, BatchedSteps):
            extra["batching"] = {"batches": steps.batches, "calls": steps.calls}
        return {**info, **extra}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page(kind.page)

    if kind.generates_text:
        from rnnkit.tasks import lm

        unknown = {404: {"model": ErrorResponse, "description": "no such session (never made, or expired)"}}

        @app.post("/complete", response_model=CompleteResponse, responses={**ERRORS, **unknown})
        def complete(req: CompleteRequest) -> dict[str, Any]:
            if req.session is None:
                sid, session = sessions.create()
            else:
                sid, session = req.session, sessions.get(req.session)
            with session.lock, torch.no_grad():
                found = lm.complete(searcher, req.prefix, req.n, reader=session.read)
            sessions.fit(sid)
            return {"completions": found, "session": sid}

        @app.delete("/sessions/{sid}", response_model=Deleted, responses={**unknown, 422: ERRORS[422]})
        def end_session(sid: str) -> dict[str, str]:
            sessions.delete(sid)
            return {"status": "deleted"}

        @app.post("/generate", response_model=GenerateResponse, responses=ERRORS)
        def generate(req: GenerateRequest) -> dict[str, str]:
            with torch.no_grad():
                text = lm.generate(loaded, req.prompt, req.max_tokens, req.temperature, req.top_k, req.top_p,
                                   seed=req.seed)
            return {"text": text}

        @app.post("/generate/stream", response_class=NDJSONResponse, responses={
            200: {"model": StreamLine, "description": "one JSON object per line: {\"text\": piece} for each piece "
                                                      "of text, then {\"done\": true}, or {\"error\", \"field\"} "
                                                      "if generation fails"},
            **JSON_ERRORS})
        async def generate_stream(req: GenerateRequest) -> NDJSONResponse:
            return NDJSONResponse(_generation_lines(loaded, req))

    elif kind.answer is not None:
        answer = kind.answer

        @app.post("/predict", response_model=predict_response(task), response_model_exclude_none=True,
                  responses=ERRORS)
        def predict(req: PredictRequest) -> dict[str, Any]:
            with torch.no_grad():
                return {"predictions": answer(loaded, req.inputs, config)}

    if kind.streams_audio:
        from rnnkit.serve.speech import add_speech_routes

        add_speech_routes(app, kind, loaded, config)

    kind.add_routes(app, loaded, config)  # endpoints of the task's own (recommend: /recommend and its sessions)
    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, config: ServeConfig | None = None) -> None:
    """Run the service until interrupted."""
    import uvicorn

    config = config or ServeConfig()
    torch.set_num_threads(config.threads)
    app = create_app(run_dir, config)
    uvicorn.run(app, host=host, port=port, log_level="info")

