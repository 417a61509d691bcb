"""Serving a run over HTTP: the JSON API, typing sessions and the web page.

What is here: `create_app` (a FastAPI app for one run directory), `serve` (run it with uvicorn) and
`ServeConfig` (the service's limits, also the options of `rnnkit serve`). What is not: training; the
service loads runs and calls the tasks' decoding and prediction.

FastAPI is imported on first use of `create_app` or `serve`, so the settings (and `rnnkit serve --help`)
need nothing past rnnkit's own dependencies.
"""

from typing import Any

from rnnkit.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "serve"):
        from rnnkit.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'rnnkit.serve' has no attribute {name!r}")
