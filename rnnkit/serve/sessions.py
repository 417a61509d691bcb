"""Typing sessions: the recurrent state of what a client has typed, kept so a keystroke costs one step.

What is here: `Session` (the token ids read so far and the model state after each of them) with
`read(ids)`, which finds the longest common prefix with what it holds and steps the model only over
the rest; `SessionStore`, which creates, finds and expires sessions (idle time, a cap on their number
and on the tokens each keeps). What is not: HTTP (app.py) or the completion search (tasks/lm.py).

An RNN's whole past lives in its state, so appending a character costs one step whatever the length
of the text before it. A backspace or an edit goes back to the state at the longest common prefix,
which the session still holds, and steps forward from there.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from typing import Any

import torch

# Appending more than this many tokens at once reads them as one sequence (the fused kernel) and keeps
# only the state at the end; a later edit inside that stretch re-reads from the last kept state.
BULK_READ = 32


class Session:
    """The token ids one client's text has been read as, and the states along the way.

    Args:
        model: a language model with `prefill`, `step` and `logits_from_state`.
        max_tokens: the most token positions whose state is kept; older text is forgotten from the
            front by keeping states only past that point (reads still see the whole text).
    """

    def __init__(self, model: Any, max_tokens: int = 4096) -> None:
        self.model = model
        self.max_tokens = max_tokens
        self.ids: list[int] = []
        self.states: dict[int, Any] = {}  # position k -> state after reading ids[:k] (k >= 1)
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.steps = 0  # model steps taken, for tests and the benchmark

    def _logits(self, state: Any) -> torch.Tensor:
        return self.model.logits_from_state(state)

    @torch.no_grad()
    def read(self, ids: list[int]) -> tuple[torch.Tensor, Any]:
        """Logits (1, V) after reading `ids` and the state there, reusing what this session has read."""
        if not ids:
            raise ValueError("read: expected at least one token id")
        common = 0
        limit = min(len(ids), len(self.ids))
        while common < limit and ids[common] == self.ids[common]:
            common += 1
        # The nearest kept state at or before the common prefix.
        start = max((k for k in self.states if k <= common), default=0)
        if start == len(ids):
            state = self.states[start]
            self.ids = list(ids)
            self._forget_after(start)
            return self._logits(state), state
        state = self.states.get(start)
        self.ids = list(ids[:start])
        self._forget_after(start)
        rest = ids[start:]
        device = next(self.model.parameters()).device
        if len(rest) > BULK_READ:
            logits, state = self.model.prefill(torch.tensor([rest], device=device), state)
            self.steps += len(rest)
            self.ids.extend(rest)
            self.states[len(self.ids)] = state
        else:
            for token in rest:
                logits, state = self.model.step(torch.tensor([token], device=device), state)
                self.steps += 1
                self.ids.append(token)
                self.states[len(self.ids)] = state
        self._trim()
        return logits, state

    def _forget_after(self, position: int) -> None:
        for k in [k for k in self.states if k > position]:
            del self.states[k]

    def _trim(self) -> None:
        if len(self.states) > self.max_tokens:
            for k in sorted(self.states)[: len(self.states) - self.max_tokens]:
                del self.states[k]

    def state_bytes(self) -> int:
        """Memory held by the kept states."""
        total = 0
        for state in self.states.values():
            for t in state if isinstance(state, tuple) else (state,):
                total += t.numel() * t.element_size()
        return total


class UnknownSession(KeyError):
    """A session id that does not exist (never made, or expired)."""


class SessionStore:
    """Sessions by id, least recently used first out.

    Args:
        model: the language model every session reads with.
        max_sessions: the most sessions kept; a new one beyond that evicts the least recently used.
        idle_seconds: a session unused this long expires.
        max_tokens: positions of state each session keeps (see `Session`).
    """

    def __init__(self, model: Any, max_sessions: int = 1000, idle_seconds: float = 900.0,
                 max_tokens: int = 4096) -> None:
        self.model = model
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self.max_tokens = max_tokens
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, Session]:
        with self._lock:
            self._expire()
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            sid = secrets.token_urlsafe(12)
            session = Session(self.model, self.max_tokens)
            self._sessions[sid] = session
            return sid, session

    def get(self, sid: str) -> Session:
        with self._lock:
            self._expire()
            session = self._sessions.get(sid)
            if session is None:
                raise UnknownSession(sid)
            self._sessions.move_to_end(sid)
            session.last_used = time.monotonic()
            return session

    def delete(self, sid: str) -> None:
        with self._lock:
            if self._sessions.pop(sid, None) is None:
                raise UnknownSession(sid)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._sessions:
            sid, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_used < self.idle_seconds:
                break
            del self._sessions[sid]

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"sessions": len(self._sessions),
                    "state_bytes": sum(s.state_bytes() for s in self._sessions.values())}

