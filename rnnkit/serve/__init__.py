"""Serving a run over HTTP: the JSON API, typing sessions and the web page.

What is here: `create_app` (a FastAPI app for one run directory) and `serve` (run it with uvicorn).
What is not: training; the service loads runs and calls the tasks' decoding and prediction.
"""

from rnnkit.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
