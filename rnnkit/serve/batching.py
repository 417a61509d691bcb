"""Micro-batching: the model steps of concurrent requests run as one batched step.

What is here: `BatchedSteps`, a language model whose `step` gathers the calls of the threads that
call it at the same time and runs them as one step of the real model. What is not: the requests
themselves (app.py) or the search over completions (decoding.py), which call `step` as on any model.

No thread of its own and no waiting window: a caller that finds no batch running runs one at once;
calls that arrive meanwhile queue, and when the batch is done the first of them runs the next batch
with all that queued. A lone request therefore steps the model directly, and under load each step
takes in whatever the other requests asked for while the previous one ran.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor


def cat_states(states: list[Any]) -> Any:
    """Join states along the batch (dim 1): tensors (L, B_i, H), or tuples of them."""
    if isinstance(states[0], Tensor):
        return torch.cat(states, dim=1)
    return type(states[0])(cat_states(list(parts)) for parts in zip(*states, strict=True))


def split_state(state: Any, sizes: list[int]) -> list[Any]:
    """Undo `cat_states`; each part is a compact copy, so a kept state holds no one else's rows."""
    if isinstance(state, Tensor):
        return [part.contiguous() for part in state.split(sizes, dim=1)]
    per_part = [split_state(s, sizes) for s in state]  # [component][part]
    return [type(state)(component[i] for component in per_part) for i in range(len(sizes))]


class _Call:
    __slots__ = ("tokens", "state", "result", "error", "done", "wake")

    def __init__(self, tokens: Tensor, state: Any) -> None:
        self.tokens, self.state = tokens, state
        self.result: tuple[Tensor, Any] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = threading.Event()  # set when the call is done, or when it is its turn to run a batch


class BatchedSteps:
    """A language model whose `step` runs together with the concurrent calls of other threads.

    Args:
        model: the language model (`step`, `prefill`, `reorder_state`, `logits_from_state`).
        max_rows: the most rows one batched step takes (a single call larger than that runs alone).
    """

    def __init__(self, model: Any, max_rows: int = 1024) -> None:
        self.model = model
        self.max_rows = max_rows
        self._lock = threading.Lock()
        self._queue: list[_Call] = []
        self._running = False  # a batch is running or about to: new calls queue for the next
        self.batches = 0  # batched steps run, and the calls they served (for /info and the benchmark)
        self.calls = 0

    def parameters(self) -> Any:
        return self.model.parameters()

    def prefill(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        return self.model.prefill(tokens, state)

    def logits_from_state(self, state: Any) -> Tensor:
        return self.model.logits_from_state(state)

    def reorder_state(self, state: Any, index: Tensor) -> Any:
        return self.model.reorder_state(state, index)

    def step(self, tokens: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One token per row (B,) in, logits (B, V) and the new state out, as `model.step`."""
        if state is None:  # a first step has no state to join with others'
            return self.model.step(tokens, state)
        call = _Call(tokens, state)
        with self._lock:
            lead = not self._running
            self._running = True
            if not lead:
                self._queue.append(call)
        if not lead:
            # Each waiting thread sleeps on its own event: finishing a batch wakes only its callers.
            call.wake.wait()
            if call.done:
                return self._result(call)
        # This thread runs a batch: its own call first, then the queued ones in order, up to max_rows.
        with self._lock:
            if call in self._queue:
                self._queue.remove(call)
            batch, rows = [call], tokens.shape[0]
            while self._queue and rows + self._queue[0].tokens.shape[0] <= self.max_rows:
                batch.append(self._queue.pop(0))
                rows += batch[-1].tokens.shape[0]
        self._run(batch)
        with self._lock:
            # The first call still queued runs the next batch; with none, the next caller will.
            successor = self._queue[0] if self._queue else None
            self._running = successor is not None
        for c in batch[1:]:
            c.wake.set()
        if successor is not None:
            successor.wake.set()
        return self._result(call)

    @staticmethod
    def _result(call: _Call) -> tuple[Tensor, Any]:
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _run(self, batch: list[_Call]) -> None:
        try:
            with torch.no_grad():
                if len(batch) == 1:
                    batch[0].result = self.model.step(batch[0].tokens, batch[0].state)
                else:
                    sizes = [c.tokens.shape[0] for c in batch]
                    logits, state = self.model.step(torch.cat([c.tokens for c in batch]),
                                                    cat_states([c.state for c in batch]))
                    for c, lg, st in zip(batch, logits.split(sizes), split_state(state, sizes), strict=True):
                        c.result = (lg, st)
        except BaseException as e:  # every caller of the batch gets the failure, not a wait forever
            for c in batch:
                c.error = e
        for c in batch:
            c.done = True
        self.batches += 1
        self.calls += len(batch)
