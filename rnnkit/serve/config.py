"""The service's settings: one typed dataclass, whose fields are also the options of `rnnkit serve`.

What is here: `ServeConfig` (limits on sessions and inputs, threads, step batching), checked in
`__post_init__`. What is not: the host and port (the server's, not the app's) or anything that imports
FastAPI, so that `rnnkit serve --help` works without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from rnnkit.config import _check, _check_types, _opt, flag_of


@dataclass
class ServeConfig:
    """Limits and settings of the service for one run."""

    threads: int = _opt(1, "torch threads per request; requests run side by side in a thread pool")
    max_sessions: int = _opt(1000, "typing sessions kept at once; a new one past that drops the least recently used")
    session_idle_seconds: float = _opt(900.0, "a typing session unused this long expires")
    session_memory_mb: float = _opt(256.0, "memory for the recurrent states of all typing sessions together, in "
                                           "MiB; past it the least recently used sessions are dropped")
    session_states: int = _opt(4096, "recurrent states one session keeps at most; an edit before the oldest "
                                     "re-reads the text from its start")
    max_input_chars: int = _opt(2000, "characters of one /predict text input (classify, tag, seq2seq)")
    max_attention_cells: int = _opt(40_000, "seq2seq: the attention map is sent when it has at most this many "
                                            "cells (output tokens x source tokens)")
    batch_steps: bool = _opt(True, "language models: run the model steps of concurrent requests as one batched step")

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("threads", "max_sessions", "session_states", "max_input_chars", "max_attention_cells"):
            value = getattr(self, name)
            _check(value >= 1, flag_of(ServeConfig, name), value, "an integer >= 1")
        _check(self.session_idle_seconds > 0, "--session-idle-seconds", self.session_idle_seconds, "seconds > 0")
        _check(self.session_memory_mb > 0, "--session-memory-mb", self.session_memory_mb, "MiB > 0")

    @property
    def session_memory_bytes(self) -> int:
        return int(self.session_memory_mb * 2**20)
