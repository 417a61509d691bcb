"""The service's endpoints for recommendation runs: a history in, the next items out, event by event.

What is here: `add_routes`, which adds `POST /recommend` (one history, read in full), `POST /recommend/session`
(events appended to a session whose recurrent state is kept, so an event costs one model step whatever the
length of the history before it) and `DELETE /recommend/sessions/{id}`. Sessions are the typing sessions of
sessions.py over the item rows (the recommender has the same `step`, `prefill` and `logits_from_state`).
What is not: the scoring itself (tasks/recommend.py) or the service's shared endpoints and errors (app.py).
"""

from __future__ import annotations

from typing import Any

import torch
from fastapi import FastAPI

from rnnkit.serve.config import ServeConfig
from rnnkit.serve.schemas import (
    ERRORS,
    Deleted,
    ErrorResponse,
    RecommendPrediction,
    RecommendRequest,
    RecommendSessionRequest,
    RecommendSessionResponse,
)
from rnnkit.serve.sessions import SessionStore
from rnnkit.tasks.recommend import LoadedRecommender, recommend, top_items


def add_routes(app: FastAPI, run: LoadedRecommender, config: ServeConfig) -> None:
    """Add the recommendation endpoints to the service of `run`."""
    sessions = SessionStore(run.model, config.max_sessions, config.session_idle_seconds, config.session_states,
                            config.session_memory_bytes)
    app.state.sessions = sessions
    unknown = {404: {"model": ErrorResponse, "description": "no such session (never made, or expired)"}}

    @app.post("/recommend", response_model=RecommendPrediction, responses=ERRORS)
    def recommend_history(req: RecommendRequest) -> dict[str, Any]:
        return recommend(run, [req.history], top_k=req.top_k, allow_repeats=req.allow_repeats)[0]

    @app.post("/recommend/session", response_model=RecommendSessionResponse, responses={**ERRORS, **unknown})
    def recommend_event(req: RecommendSessionRequest) -> dict[str, Any]:
        if req.session is None:
            sid, session = sessions.create()
        else:
            sid, session = req.session, sessions.get(req.session)
        rows, skipped = run.vocab.ids(req.events)
        with session.lock, torch.no_grad():
            ids = [*session.ids, *rows]
            if ids:
                logits, _ = session.read(ids)
                answer = top_items(run, logits[0].float().cpu(), set(ids), req.top_k, req.allow_repeats)
            else:  # nothing known yet: the most popular items
                answer = top_items(run, run.popularity_scores().float(), set(), req.top_k, req.allow_repeats)
        sessions.fit(sid)
        return {**answer, "unknown": skipped, "session": sid, "events": len(ids)}

    @app.delete("/recommend/sessions/{sid}", response_model=Deleted, responses={**unknown, 422: ERRORS[422]})
    def end_session(sid: str) -> dict[str, str]:
        sessions.delete(sid)
        return {"status": "deleted"}
