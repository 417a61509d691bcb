"""The HTTP service: a FastAPI app over one run directory, with JSON endpoints and the web page.

What is here: `create_app(run_dir)` with `GET /health`, `GET /info`, `GET /` (the page), and for
language models `POST /complete` (with typing sessions), `DELETE /sessions/{id}`, `POST /generate`
and `POST /generate/stream` (one JSON line per piece of text); for the other tasks `POST /predict`.
Request bodies are checked by pydantic models; every refusal is a 4xx JSON object
`{"error": message, "field": name}` and the server stays up. What is not: the models, decoding or
training (the service imports tasks, checkpoints and decoding, never the trainer).

Handlers are plain functions, which the ASGI server runs in its thread pool, so requests from many
clients proceed at once; torch releases the interpreter lock inside its kernels.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from rnnkit.checkpoint import read_run_config
from rnnkit.config import UserError
from rnnkit.serve.predictors import PREDICTORS
from rnnkit.serve.sessions import SessionStore, UnknownSession

MAX_TEXT = 20_000  # characters of a prefix or prompt
MAX_BODY = 2_000_000  # bytes of a request body
MAX_INPUTS = 256  # inputs of one /predict request


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class CompleteRequest(_Strict):
    prefix: str = Field(max_length=MAX_TEXT, description="the text typed so far")
    n: int = Field(5, ge=1, le=50, description="how many completions")
    session: str | None = Field(None, min_length=1, max_length=64,
                                description="a session id from an earlier answer; omitted: start a session")


class GenerateRequest(_Strict):
    prompt: str = Field("", max_length=MAX_TEXT)
    max_tokens: int = Field(100, ge=1, le=5000)
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_k: int | None = Field(None, ge=1)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None


class PredictRequest(_Strict):
    inputs: list[Any] = Field(min_length=1, max_length=MAX_INPUTS,
                              description="the inputs, in the task's form (text for classify, tag and seq2seq)")


def _error(status: int, message: str, field: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(status_code=status, content=body)


def _page() -> str:
    return resources.files("rnnkit.serve").joinpath("static/index.html").read_text(encoding="utf-8")


def _describe(task: str, loaded: Any) -> dict[str, Any]:
    """What the page shows about a run of a task other than language modelling."""
    if task == "classify":
        return {"labels": list(loaded.labels), "audio": bool(loaded.audio)}
    if task == "tag":
        return {"tags": list(loaded.vocab.tags), "scheme": loaded.vocab.scheme}
    if task == "seq2seq":
        return {"source_vocab_size": loaded.source_tokenizer.vocab_size,
                "target_vocab_size": loaded.target_tokenizer.vocab_size,
                "attention": loaded.config.options.attention}
    if task == "forecast":
        o = loaded.config.options
        return {"target": list(loaded.meta["target"]), "lookback": o.lookback, "horizon": o.horizon,
                "columns": [c for c in [loaded.meta.get("time_column"), *loaded.meta["target"],
                                        *(loaded.meta.get("covariates") or [])] if c]}
    return {}


def create_app(run_dir: str | Path, device: str = "cpu", max_sessions: int = 1000, idle_seconds: float = 900.0,
               session_tokens: int = 4096) -> FastAPI:
    """The service for one run directory (any task)."""
    from rnnkit import __version__
    from rnnkit.tasks import task_module

    meta = read_run_config(run_dir)
    task = meta["task"]
    module = task_module(task)
    loaded = module.load(run_dir, device=device) if task == "lm" else module.load(run_dir)
    app = FastAPI(title="rnnkit", version=__version__,
                  description=f"rnnkit {task} service for the run {Path(run_dir).name}")
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
    if task == "lm":
        info.update({"vocab_size": loaded.tokenizer.vocab_size, "tokenizer": loaded.tokenizer.kind})
    else:
        info.update(_describe(task, loaded))
    sessions = SessionStore(loaded.model, max_sessions, idle_seconds, session_tokens) if task == "lm" else None
    app.state.sessions = sessions
    app.state.loaded = loaded

    # ------------------------------------------------------------------------------- errors

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return _error(400, f"the request body is not valid JSON: {first.get('msg', '')}", "body")
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        field = ".".join(loc) or "body"
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = "required"
        elif "input" in first and first.get("type") not in ("extra_forbidden",):
            shown = json.dumps(first["input"])[:60]
            message = f"{message}; got {shown}"
        return _error(422, f"{field}: {message}", field)

    @app.exception_handler(UnknownSession)
    async def unknown_session(request: Request, exc: UnknownSession) -> JSONResponse:
        return _error(404, f"session: no session {exc.args[0]!r} (never made, or expired); omit it to start one",
                      "session")

    @app.exception_handler(UserError)
    async def user_error(request: Request, exc: UserError) -> JSONResponse:
        return _error(422, str(exc))

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > MAX_BODY:
            return _error(413, f"the request body has {size} bytes; at most {MAX_BODY} are accepted", "body")
        return await call_next(request)

    # ----------------------------------------------------------------------------- endpoints

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/info")
    def get_info() -> dict[str, Any]:
        return {**info, **({"sessions": sessions.stats()} if sessions is not None else {})}

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    if task == "lm":
        from rnnkit.tasks import lm

        @app.post("/complete")
        def complete(req: CompleteRequest) -> dict[str, Any]:
            if req.session is None:
                sid, session = sessions.create()
            else:
                sid, session = req.session, sessions.get(req.session)
            with session.lock, torch.no_grad():
                found = lm.complete(loaded, req.prefix, req.n, reader=session.read)
            return {"completions": found, "session": sid}

        @app.delete("/sessions/{sid}")
        def end_session(sid: str) -> dict[str, str]:
            sessions.delete(sid)
            return {"status": "deleted"}

        @app.post("/generate")
        def generate(req: GenerateRequest) -> dict[str, str]:
            with torch.no_grad():
                text = lm.generate(loaded, req.prompt, req.max_tokens, req.temperature, req.top_k, req.top_p,
                                   seed=req.seed)
            return {"text": text}

        @app.post("/generate/stream")
        def generate_stream(req: GenerateRequest) -> StreamingResponse:
            pieces: queue.Queue[tuple[str, Any]] = queue.Queue()

            def work() -> None:
                try:
                    with torch.no_grad():
                        lm.generate(loaded, req.prompt, req.max_tokens, req.temperature, req.top_k, req.top_p,
                                    seed=req.seed, on_text=lambda piece: pieces.put(("text", piece)))
                    pieces.put(("done", None))
                except UserError as e:
                    pieces.put(("error", str(e)))

            threading.Thread(target=work, daemon=True).start()

            def lines() -> Iterator[str]:
                while True:
                    kind, value = pieces.get()
                    if kind == "text":
                        yield json.dumps({"text": value}) + "\n"
                    elif kind == "error":
                        yield json.dumps({"error": value}) + "\n"
                        return
                    else:
                        yield json.dumps({"done": True}) + "\n"
                        return

            return StreamingResponse(lines(), media_type="application/x-ndjson")

    else:

        @app.post("/predict")
        def predict(req: PredictRequest) -> dict[str, Any]:
            with torch.no_grad():
                return {"predictions": PREDICTORS[task](loaded, req.inputs)}

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, threads: int = 1) -> None:
    """Run the service until interrupted."""
    import uvicorn

    torch.set_num_threads(threads)
    app = create_app(run_dir)
    uvicorn.run(app, host=host, port=port, log_level="info")
