"""Typing sessions: the recurrent state of what a client has typed, kept so a keystroke costs one step.

What is here: `Session` (the token ids read so far and the model state at kept positions) with
`read(ids)`, which finds the longest common prefix with what it holds and steps the model only over
the rest; `SessionStore`, which creates, finds and expires sessions (idle time, a cap on their number,
a memory budget for the states of all of them). What is not: HTTP (app.py) or the completion search
(tasks/lm.py).

An RNN's whole past lives in its state, so appending a character costs one step whatever the length
of the text before it. A backspace or an edit goes back to the nearest kept state at or before the
longest common prefix and steps forward from there.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

# Appending more than BULK_READ tokens at once (a paste) reads them in chunks with the fused kernel and
# keeps the state every CHECKPOINT_EVERY positions, then steps the last KEEP_LAST tokens one at a time
# and keeps each of those states: an edit inside a paste re-reads at most CHECKPOINT_EVERY - 1 tokens
# before the edit, and a backspace right after it none.
BULK_READ = 32
CHECKPOINT_EVERY = 32
KEEP_LAST = 8


def state_nbytes(state: Any) -> int:
    """Memory held by the tensors of a state (a tensor or a tuple of them), each storage counted once."""
    seen: dict[int, int] = {}
    for t in state if isinstance(state, tuple) else (state,):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class Session:
    """The token ids one client's text has been read as, and the states at kept positions.

    Args:
        model: a language model with `prefill`, `step` and `logits_from_state` (which also takes the latest
            input when the model's `logits_need_last_input` is true, as a residual recommender's is).
        max_states: the most states kept; past that the oldest are forgotten (reads still see the
            whole text, and an edit before the oldest kept state re-reads from the start).
        max_bytes: the most memory the kept states may take; past it the oldest are forgotten.
    """

    def __init__(self, model: Any, max_states: int = 4096, max_bytes: int | None = None) -> None:
        self.model = model
        self.max_states = max_states
        self.max_bytes = max_bytes
        self.ids: list[int] = []
        self.states: dict[int, Any] = {}  # position k -> state after reading ids[:k] (k >= 1)
        self.nbytes = 0  # memory held by `states`
        self._sizes: dict[int, int] = {}
        self.lock = threading.Lock()
        self.last_used = time.monotonic()
        self.steps = 0  # tokens the model has read for this session, for tests and the benchmark

    def _logits(self, state: Any, last: int) -> torch.Tensor:
        if getattr(self.model, "logits_need_last_input", False):  # the scores depend on the latest input too
            device = next(self.model.parameters()).device
            return self.model.logits_from_state(state, torch.tensor([last], device=device))
        return self.model.logits_from_state(state)

    def _keep(self, position: int, state: Any) -> None:
        self._drop(position)
        self.states[position] = state
        self._sizes[position] = state_nbytes(state)
        self.nbytes += self._sizes[position]

    def _drop(self, position: int) -> None:
        if position in self.states:
            del self.states[position]
            self.nbytes -= self._sizes.pop(position)

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
        self._forget_after(start)
        if start == len(ids):
            state = self.states[start]
            self.ids = list(ids)
            return self._logits(state, ids[-1]), state
        state = self.states.get(start)
        self.ids = list(ids[:start])
        device = next(self.model.parameters()).device
        end = len(ids)
        if end - start > BULK_READ:
            # Chunks that end on multiples of CHECKPOINT_EVERY, up to the last KEEP_LAST tokens.
            stops = [*range((start // CHECKPOINT_EVERY + 1) * CHECKPOINT_EVERY, end - KEEP_LAST, CHECKPOINT_EVERY),
                     end - KEEP_LAST]
            at = start
            for stop in stops:
                _, state = self.model.prefill(torch.tensor([ids[at:stop]], device=device), state)
                self.steps += stop - at
                self.ids.extend(ids[at:stop])
                self._keep(stop, state)
                at = stop
            start = at
        for token in ids[start:]:
            logits, state = self.model.step(torch.tensor([token], device=device), state)
            self.steps += 1
            self.ids.append(token)
            self._keep(len(self.ids), state)
        self._trim()
        return logits, state

    def _forget_after(self, position: int) -> None:
        for k in [k for k in self.states if k > position]:
            self._drop(k)

    def _trim(self) -> None:
        """Forget the oldest states past `max_states` or `max_bytes`; the newest is always kept."""
        if len(self.states) <= 1:
            return
        over_count = len(self.states) - self.max_states
        for k in sorted(self.states)[:-1]:
            if over_count <= 0 and (self.max_bytes is None or self.nbytes <= self.max_bytes):
                break
            self._drop(k)
            over_count -= 1


class UnknownSession(KeyError):
    """A session id that does not exist (never made, or expired)."""


@dataclass(eq=False)
class SessionStore:
    """Sessions by id, least recently used first out.

    Args:
        model: the language model every session reads with.
        max_sessions: the most sessions kept; a new one beyond that evicts the least recently used.
        idle_seconds: a session unused this long expires.
        max_states: states each session keeps (see `Session`).
        max_bytes: memory for the states of all sessions together; past it the least recently used
            sessions are evicted (and one session alone never keeps more than this).
    """

    model: Any
    max_sessions: int = 1000
    idle_seconds: float = 900.0
    max_states: int = 4096
    max_bytes: int = 256 * 2**20
    _sessions: OrderedDict[str, Session] = field(default_factory=OrderedDict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_sessions < 1:
            raise ValueError(f"max_sessions: expected an integer >= 1; got {self.max_sessions}")
        if self.max_bytes < 1:
            raise ValueError(f"max_bytes: expected an integer >= 1; got {self.max_bytes}")

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self) -> tuple[str, Session]:
        with self._lock:
            self._expire()
            while len(self._sessions) >= self.max_sessions:
                self._sessions.popitem(last=False)
            sid = secrets.token_urlsafe(12)
            session = Session(self.model, self.max_states, self.max_bytes)
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

    def fit(self, sid: str) -> None:
        """After session `sid` has read: evict the least recently used others while over the memory budget."""
        with self._lock:
            total = sum(s.nbytes for s in self._sessions.values())
            for other in list(self._sessions):
                if total <= self.max_bytes:
                    break
                if other != sid:
                    total -= self._sessions.pop(other).nbytes

    def _expire(self) -> None:
        now = time.monotonic()
        while self._sessions:
            sid, oldest = next(iter(self._sessions.items()))
            if now - oldest.last_used < self.idle_seconds:
                break
            del self._sessions[sid]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"sessions": len(self._sessions), "max_sessions": self.max_sessions,
                    "idle_seconds": self.idle_seconds, "states_per_session": self.max_states,
                    "state_bytes": sum(s.nbytes for s in self._sessions.values()), "max_state_bytes": self.max_bytes}
