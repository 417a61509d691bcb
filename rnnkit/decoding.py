"""Decoding strategies shared by every generating model: filtering, greedy, sampling, beam search, completion.

Every function drives a model through one step interface and knows nothing of its layout::

    logits, state = model.step(tokens, state)   # tokens (B,) int64 -> logits (B, V), new state
    state = model.reorder_state(state, index)   # index (B',) int64: keep/duplicate rows in this order

Decoding starts from the logits and state the model produced after reading the prompt or source (the
caller does that), so every function takes ``(model, logits, state, ...)`` with ``logits`` (B, V).

Not in this file: feeding the prompt, encoders, tokenizers, detokenisation, and any model's state layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

import torch
from torch import Tensor


class StepModel(Protocol):
    """What a model must provide to be decoded."""

    def step(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]: ...

    def reorder_state(self, state: Any, index: Tensor) -> Any: ...


@dataclass
class Hypothesis:
    """One finished beam-search hypothesis."""

    tokens: list[int]  # generated tokens, eos excluded
    log_prob: float  # summed log-probability of the tokens, eos included when it ended the hypothesis
    score: float  # log_prob / length ** length_penalty, the ranking key


@dataclass
class Completion:
    """One autocomplete continuation."""

    tokens: list[int]  # continuation tokens, the closing boundary token excluded
    probability: float  # P(tokens, then a boundary); P(tokens) alone when complete is False
    complete: bool  # False when max_tokens ran out before a boundary


def _compute_dtype(logits: Tensor) -> torch.dtype:
    """At least float32, so half-precision logits are normalised and summed accurately."""
    return torch.promote_types(logits.dtype, torch.float32)


def _log_softmax(logits: Tensor) -> Tensor:
    return logits.log_softmax(dim=-1, dtype=_compute_dtype(logits))


def _check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}")


def _check_max_tokens(max_tokens: int, minimum: int) -> None:
    if max_tokens < minimum:
        raise ValueError(f"max_tokens must be >= {minimum}, got {max_tokens}")


def filter_logits(
    logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> Tensor:
    """Scale by temperature, then keep the top-k tokens, then the top-p nucleus; removed entries get -inf.

    The nucleus is the smallest set of most probable tokens whose probability sums to at least top_p;
    it always holds at least one token.

    Args:
        logits: (B, V) unnormalised scores.
        temperature: > 0; scores are divided by it.
        top_k: keep exactly the k highest-scoring tokens (None keeps all).
        top_p: nucleus mass in (0, 1] (None or 1.0 keeps all).

    Returns:
        (B, V) filtered logits, same dtype.
    """
    _check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        raise ValueError("temperature must be > 0 in filter_logits; use greedy decoding for temperature 0")
    logits = logits / temperature
    vocab_size = logits.size(-1)
    if top_k is not None and top_k < vocab_size:
        # scatter from topk indices (not a threshold) so ties still leave exactly k entries
        keep = torch.zeros_like(logits, dtype=torch.bool)
        keep.scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1, dtype=_compute_dtype(logits))
        mass_before = probs.cumsum(dim=-1) - probs
        # a token is in the nucleus while the mass of the better tokens is still short of top_p
        remove_sorted = mass_before >= top_p
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(remove_sorted).scatter_(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def iter_sample(
    model: StepModel,
    logits: Tensor,
    state: Any,
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Iterator[Tensor]:
    """Yield one sampled token per row per step, for streaming output.

    Rows that have produced eos_id keep yielding eos_id; the iteration stops early once every row has.

    Args:
        model: provides ``step``.
        logits: (B, V) next-token logits after the prompt.
        state: the model's state after the prompt.
        max_tokens: most steps to yield (>= 0).
        temperature: 0 means greedy (argmax); otherwise logits are divided by it before sampling.
        top_k: sample only among the k most likely tokens.
        top_p: sample only within the top-p nucleus.
        generator: random generator for ``torch.multinomial``; the same seed gives the same tokens.
        eos_id: token that ends a row.

    Returns:
        An iterator of (B,) int64 tensors.
    """
    _check_sampling_args(temperature, top_k, top_p)
    _check_max_tokens(max_tokens, 0)
    # validate now: the generator body runs only on the first next()
    return _sample_steps(model, logits, state, max_tokens, temperature, top_k, top_p, generator, eos_id)


@torch.no_grad()
def _sample_steps(
    model: StepModel,
    logits: Tensor,
    state: Any,
    max_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
    eos_id: int | None,
) -> Iterator[Tensor]:
    finished = torch.zeros(logits.size(0), dtype=torch.bool, device=logits.device)  # (B,)
    for step in range(max_tokens):
        if temperature == 0:
            tokens = logits.argmax(dim=-1)  # (B,)
        else:
            filtered = filter_logits(logits.to(_compute_dtype(logits)), temperature, top_k, top_p)
            probs = filtered.softmax(dim=-1)  # (B, V)
            tokens = torch.multinomial(probs, 1, generator=generator).squeeze(1)  # (B,)
        if eos_id is not None:
            tokens = tokens.masked_fill(finished, eos_id)
            finished |= tokens == eos_id
        yield tokens
        if eos_id is not None and bool(finished.all()):
            return
        if step + 1 < max_tokens:
            logits, state = model.step(tokens, state)


def _collect(steps: Iterator[Tensor], logits: Tensor) -> Tensor:
    tokens = list(steps)
    if not tokens:
        return torch.empty(logits.size(0), 0, dtype=torch.long, device=logits.device)
    return torch.stack(tokens, dim=1)  # (B, N)


def greedy(
    model: StepModel, logits: Tensor, state: Any, max_tokens: int, eos_id: int | None = None
) -> Tensor:
    """Take the most likely token at every step.

    Args:
        model: provides ``step``.
        logits: (B, V) next-token logits after the prompt.
        state: the model's state after the prompt.
        max_tokens: most tokens to generate.
        eos_id: token that ends a row; finished rows are padded with it.

    Returns:
        (B, N) int64 tokens, N <= max_tokens (shorter when every row ended with eos_id).
    """
    return _collect(iter_sample(model, logits, state, max_tokens, temperature=0.0, eos_id=eos_id), logits)


def sample(
    model: StepModel,
    logits: Tensor,
    state: Any,
    max_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> Tensor:
    """Sample tokens with temperature, top-k and top-p filtering; see ``iter_sample``.

    Returns:
        (B, N) int64 tokens, N <= max_tokens (shorter when every row ended with eos_id).
    """
    steps = iter_sample(model, logits, state, max_tokens, temperature, top_k, top_p, generator, eos_id)
    return _collect(steps, logits)


def _add_best(pool: list, item: Any, key: Callable[[Any], float], limit: int) -> None:
    """Insert item into pool, kept sorted best first by key and at most limit long."""
    pool.append(item)
    pool.sort(key=key, reverse=True)
    del pool[limit:]


@dataclass
class _Beams:
    """The live beams of a batched search: K rows per input still decoding, in row blocks of K.

    Attributes:
        state: the model's state, n*K rows.
        log_probs: (n*K, V) next-token log-probabilities of every row.
        beam_lp: (n, K) summed log-probability of each beam (-inf for unused beams).
        history: (n, K, t) tokens of each beam so far.
        alive: the original input index of each of the n row blocks.
    """

    state: Any
    log_probs: Tensor
    beam_lp: Tensor
    history: Tensor
    alive: list[int]

    @classmethod
    def start(cls, model: StepModel, logits: Tensor, state: Any, beam_size: int) -> _Beams:
        """One live beam per input; the other K-1 start at -inf so no identical beams are expanded."""
        batch_size, device = logits.shape[0], logits.device
        expand = torch.arange(batch_size, device=device).repeat_interleave(beam_size)  # (B*K,)
        log_probs = _log_softmax(logits).index_select(0, expand)  # (B*K, V)
        beam_lp = torch.full((batch_size, beam_size), -math.inf, dtype=log_probs.dtype, device=device)  # (B, K)
        beam_lp[:, 0] = 0.0
        history = torch.empty(batch_size, beam_size, 0, dtype=torch.long, device=device)  # (B, K, t)
        return cls(model.reorder_state(state, expand), log_probs, beam_lp, history, list(range(batch_size)))

    def extend(self, parent_beam: Tensor, new_tok: Tensor, new_lp: Tensor) -> None:
        """Each beam k of block r becomes beam parent_beam[r, k] followed by new_tok[r, k]; all (n, K)."""
        step = self.history.shape[2]
        history = self.history.gather(1, parent_beam.unsqueeze(2).expand(-1, -1, step))  # (n, K, t)
        self.history = torch.cat([history, new_tok.unsqueeze(2)], dim=2)  # (n, K, t+1)
        self.beam_lp = new_lp
        self._parent, self._token = parent_beam, new_tok

    def advance(self, model: StepModel, keep: list[int]) -> None:
        """Keep the row blocks `keep` and feed every kept beam's newest token to the model."""
        beam_size = self.beam_lp.shape[1]
        keep_t = torch.tensor(keep, dtype=torch.long, device=self.beam_lp.device)  # (n',)
        rows = (keep_t.unsqueeze(1) * beam_size + self._parent.index_select(0, keep_t)).reshape(-1)  # (n'*K,)
        state = model.reorder_state(self.state, rows)
        logits, self.state = model.step(self._token.index_select(0, keep_t).reshape(-1), state)
        self.log_probs = _log_softmax(logits)  # (n'*K, V)
        self.beam_lp = self.beam_lp.index_select(0, keep_t)
        self.history = self.history.index_select(0, keep_t)
        self.alive = [self.alive[r] for r in keep]


@torch.no_grad()
def beam_search(
    model: StepModel,
    logits: Tensor,
    state: Any,
    beam_size: int,
    max_tokens: int | Tensor,
    eos_id: int | None = None,
    length_penalty: float = 1.0,
    min_tokens: int = 0,
) -> list[list[Hypothesis]]:
    """Batched beam search: all B inputs times beam_size beams go through one model.step per step.

    A hypothesis ends when it emits eos_id (kept out of its tokens, its log-prob counted) or reaches its
    input's max length. Hypotheses are ranked by log_prob / length ** length_penalty, where length counts
    the generated tokens including eos (length_penalty 0 ranks by the raw sum). An input stops once it has
    beam_size finished hypotheses and no live beam can still beat the worst of them.

    Args:
        model: provides ``step`` and ``reorder_state``.
        logits: (B, V) next-token logits after the prompt/source.
        state: the model's state after the prompt/source, B rows.
        beam_size: beams kept per input (>= 1).
        max_tokens: most generated tokens (eos included), an int or a (B,) int64 tensor per input (>= 1).
        eos_id: token that ends a hypothesis (None: every hypothesis runs to max length).
        length_penalty: exponent of the length normalisation.
        min_tokens: eos is forbidden until this many tokens have been generated.

    Returns:
        For each input, up to beam_size finished hypotheses, best score first.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    batch_size, vocab_size = logits.shape
    if isinstance(max_tokens, Tensor):
        if max_tokens.shape != (batch_size,):
            raise ValueError(
                f"max_tokens tensor must have shape ({batch_size},), got {tuple(max_tokens.shape)}"
            )
        max_lens = [int(m) for m in max_tokens.tolist()]
    else:
        max_lens = [int(max_tokens)] * batch_size
    for m in max_lens:
        _check_max_tokens(m, 1)

    def score_of(log_prob: float, length: int) -> float:
        return log_prob / length**length_penalty

    def future_bound(log_prob: float, length_now: int, max_len: int) -> float:
        # extensions never raise log_prob (<= 0); the normaliser is monotone in length, so check both ends
        return max(score_of(log_prob, length_now + 1), score_of(log_prob, max_len))

    finished: list[list[Hypothesis]] = [[] for _ in range(batch_size)]
    by_score = attrgetter("score")

    def finish(b: int, tokens: list[int], log_prob: float, length: int) -> None:
        _add_best(finished[b], Hypothesis(tokens, log_prob, score_of(log_prob, length)), by_score, beam_size)

    beams = _Beams.start(model, logits, state, beam_size)
    num_candidates = min(2 * beam_size, beam_size * vocab_size)
    step = 0
    while beams.alive:
        n = len(beams.alive)
        cand = beams.beam_lp.unsqueeze(2) + beams.log_probs.view(n, beam_size, vocab_size)  # (n, K, V)
        if eos_id is not None and step < min_tokens:
            cand[:, :, eos_id] = -math.inf
        top_lp, top_idx = cand.view(n, beam_size * vocab_size).topk(num_candidates, dim=1)  # (n, C)
        top_beam = top_idx // vocab_size  # (n, C)
        top_tok = top_idx % vocab_size  # (n, C)
        live_lp = top_lp
        if eos_id is not None:
            is_eos = top_tok == eos_id  # (n, C)
            # only eos among the top beam_size candidates finishes a hypothesis (so beam_size 1 is greedy)
            ending = is_eos[:, :beam_size] & top_lp[:, :beam_size].isfinite()
            for r, c in ending.nonzero().tolist():
                parent = beams.history[r, top_beam[r, c]].tolist()
                finish(beams.alive[r], parent, float(top_lp[r, c]), step + 1)
            live_lp = top_lp.masked_fill(is_eos, -math.inf)
        # stable sort keeps the candidates' rank order among the non-eos ones
        live_lp, pick = live_lp.sort(dim=1, descending=True, stable=True)
        live_lp, pick = live_lp[:, :beam_size], pick[:, :beam_size]  # (n, K)
        beams.extend(top_beam.gather(1, pick), top_tok.gather(1, pick), live_lp)  # (n, K) each
        step += 1

        keep = []
        lp_rows = beams.beam_lp.tolist()
        for r, b in enumerate(beams.alive):
            if step >= max_lens[b]:
                for k, lp in enumerate(lp_rows[r]):
                    if math.isfinite(lp):
                        finish(b, beams.history[r, k].tolist(), lp, step)
                continue
            best_live = lp_rows[r][0]
            if not math.isfinite(best_live):
                continue
            done = finished[b]
            if len(done) >= beam_size and future_bound(best_live, step, max_lens[b]) <= done[-1].score:
                continue
            keep.append(r)
        if not keep:
            break
        beams.advance(model, keep)
    return finished


@torch.no_grad()
def complete(
    model: StepModel,
    logits: Tensor,
    state: Any,
    n: int,
    max_tokens: int,
    is_boundary: Callable[[int], bool],
    beam_size: int | None = None,
) -> list[list[Completion]]:
    """Find the n most probable continuations up to the next word boundary (autocomplete).

    A continuation is finished when the next token is a boundary token; its probability is
    P(tokens, then any boundary token), summed over the boundary tokens, so each token sequence appears
    once. A boundary first gives the empty completion. ``max_tokens`` counts model steps with the boundary
    included: complete continuations have at most max_tokens - 1 tokens. Continuations of max_tokens tokens
    without a boundary are returned (complete=False, probability P(tokens)) only to fill up to n.

    Args:
        model: provides ``step`` and ``reorder_state``.
        logits: (B, V) next-token logits after the prompt.
        state: the model's state after the prompt, B rows.
        n: completions wanted per input (>= 1).
        max_tokens: most model steps, the boundary token included (>= 1).
        is_boundary: tells whether a token id ends a word.
        beam_size: live prefixes kept per input (default 2 * max(n, 4)).

    Returns:
        For each input, up to n completions, most probable first.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_max_tokens(max_tokens, 1)
    if beam_size is None:
        beam_size = 2 * max(n, 4)
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    batch_size, vocab_size = logits.shape
    device = logits.device
    boundary = torch.tensor([bool(is_boundary(v)) for v in range(vocab_size)], device=device)  # (V,)
    if not bool(boundary.any()):
        raise ValueError("is_boundary is False for every token id; completions could never finish")

    finished: list[list[Completion]] = [[] for _ in range(batch_size)]
    unfinished: list[list[Completion]] = [[] for _ in range(batch_size)]
    by_prob = attrgetter("probability")

    beams = _Beams.start(model, logits, state, beam_size)
    num_candidates = min(beam_size, beam_size * vocab_size)
    for step in range(max_tokens):
        m = len(beams.alive)
        log_probs = beams.log_probs.view(m, beam_size, vocab_size)  # (m, K, V)
        end_lp = beams.beam_lp + log_probs[:, :, boundary].logsumexp(dim=-1)  # (m, K)
        for r, k in end_lp.isfinite().nonzero().tolist():
            item = Completion(beams.history[r, k].tolist(), math.exp(float(end_lp[r, k])), True)
            _add_best(finished[beams.alive[r]], item, by_prob, n)
        cand = (beams.beam_lp.unsqueeze(2) + log_probs).masked_fill(boundary, -math.inf)  # (m, K, V)
        top_lp, top_idx = cand.view(m, beam_size * vocab_size).topk(num_candidates, dim=1)  # (m, K)
        beams.extend(top_idx // vocab_size, top_idx % vocab_size, top_lp)  # (m, K) each
        lp_rows = beams.beam_lp.tolist()
        if step + 1 == max_tokens:
            # out of steps: the live prefixes become candidates that never met a boundary
            for r, b in enumerate(beams.alive):
                for k, lp in enumerate(lp_rows[r]):
                    if math.isfinite(lp):
                        item = Completion(beams.history[r, k].tolist(), math.exp(lp), False)
                        _add_best(unfinished[b], item, by_prob, n)
            break
        keep = []
        for r, b in enumerate(beams.alive):
            best_live = lp_rows[r][0]
            if not math.isfinite(best_live):
                continue
            done = finished[b]
            # probabilities only shrink as a prefix grows
            if len(done) >= n and math.exp(best_live) <= done[-1].probability:
                continue
            keep.append(r)
        if not keep:
            break
        beams.advance(model, keep)

    results = []
    for done, partial in zip(finished, unfinished, strict=True):
        merged = done + partial[: n - len(done)]
        merged.sort(key=by_prob, reverse=True)
        results.append(merged)
    return results


# ---------------------------------------------------------------------------------------------- CTC
#
# A CTC model emits, at every frame, a distribution over the output units and a blank. A labelling is
# read from a frame path by merging repeated units and dropping blanks; its probability is the sum over
# every path that reads as it (Graves et al. 2006). Greedy decoding reads the most probable path; prefix
# beam search keeps the most probable labellings frame by frame, each with the probability of its paths
# that end in a blank and of those that end in its last unit, so that the sum over paths stays exact
# for the prefixes kept (Hannun et al. 2014). Shallow fusion adds, as each unit is appended, weighted
# log-scores from `PrefixScorer`s: a language model, a lexicon.


def ctc_collapse(path: Sequence[int], blank: int = 0, previous: int | None = None) -> list[int]:
    """The labelling a frame path reads as: repeats merged, blanks dropped.

    Args:
        path: one unit (or blank) per frame.
        blank: the blank's id.
        previous: the unit of the frame before `path` (streaming: a repeat across chunks is merged).
    """
    out = []
    for u in path:
        if u != blank and u != previous:
            out.append(int(u))
        previous = u
    return out


def ctc_segments(path: Sequence[int], blank: int = 0) -> list[tuple[int, int, int]]:
    """The units a frame path reads as, each with the frames it spans: (unit, first frame, last frame + 1)."""
    out: list[tuple[int, int, int]] = []
    previous = blank
    for t, u in enumerate(path):
        if u != blank and u == previous:
            unit, start, _ = out[-1]
            out[-1] = (unit, start, t + 1)
        elif u != blank:
            out.append((int(u), t, t + 1))
        previous = u
    return out


def ctc_greedy(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding of a batch.

    Args:
        log_probs: (B, T, V) per-frame scores (log-probabilities or logits: only the argmax counts).
        lengths: (B,) valid frames per row, or None when all are full.
    Returns:
        B labellings (lists of unit ids).
    """
    best = log_probs.argmax(dim=-1).tolist()  # (B, T)
    T = log_probs.shape[1]
    ends = lengths.tolist() if lengths is not None else [T] * len(best)
    return [ctc_collapse(row[:n], blank) for row, n in zip(best, ends, strict=True)]


class PrefixScorer(Protocol):
    """A score for each way of extending a labelling by one unit (shallow fusion in CTC prefix search)."""

    def next_scores(self, prefixes: list[tuple[int, ...]]) -> list[Any]:
        """For each prefix, (V,) log-scores of appending each unit (numpy or a list; -inf forbids it)."""
        ...

    def end_score(self, prefix: tuple[int, ...]) -> float:
        """The log-score of the labelling ending after `prefix`."""
        ...


@dataclass
class CTCHypothesis:
    """One labelling found by CTC prefix search."""

    units: list[int]
    log_prob: float  # log P(labelling | audio): the sum over its paths (with the fused scores when fused)
    score: float  # log_prob plus the scorers' end scores and the unit bonus: the ranking key


def _logaddexp(a: float, b: float) -> float:
    if a == -math.inf:
        return b
    if b == -math.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


def _add(table: dict[tuple[int, ...], list[float]], prefix: tuple[int, ...], which: int, value: float) -> None:
    entry = table.get(prefix)
    if entry is None:
        entry = table[prefix] = [-math.inf, -math.inf]
    entry[which] = _logaddexp(entry[which], value)


def ctc_prefix_beam_search(
    log_probs: Any,
    beam_size: int = 8,
    blank: int = 0,
    scorers: Sequence[tuple[PrefixScorer, float]] = (),
    unit_bonus: float = 0.0,
    prune: float | None = math.log(1e-4),
    n_best: int = 1,
) -> list[CTCHypothesis]:
    """CTC prefix beam search over one utterance.

    Args:
        log_probs: (T, V) log-probabilities per frame (a tensor or a numpy array), blank included.
        beam_size: labellings kept after each frame.
        blank: the blank's id.
        scorers: (scorer, weight) pairs; each appended unit adds weight * the scorer's log-score, and a
            finished labelling weight * its end score.
        unit_bonus: added per unit of a labelling (balances a language model's preference for short ones).
        prune: at each frame, only units at least this log-probable are tried (the best one always);
            None tries every unit (exact search when the beam holds every prefix).
        n_best: how many labellings to return.
    Returns:
        Up to `n_best` hypotheses, best first.
    """
    import numpy as np

    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    lp = log_probs.detach().float().cpu().numpy() if isinstance(log_probs, Tensor) else np.asarray(log_probs)
    T, V = lp.shape
    fused: dict[tuple[int, ...], Any] = {}

    def extension_scores(prefixes: list[tuple[int, ...]]) -> None:
        todo = [p for p in prefixes if p not in fused]
        if not todo:
            return
        total = np.full((len(todo), V), unit_bonus, dtype=np.float64)
        for scorer, weight in scorers:
            rows = scorer.next_scores(todo)
            for i, row in enumerate(rows):
                row = np.asarray(row, dtype=np.float64)
                total[i] += np.where(np.isneginf(row), -np.inf, weight * row)
        for p, row in zip(todo, total, strict=True):
            fused[p] = row

    # beam: prefix -> [log P(paths ending in blank), log P(paths ending in the prefix's last unit)]
    beam: dict[tuple[int, ...], list[float]] = {(): [0.0, -math.inf]}
    for t in range(T):
        frame = lp[t]
        if prune is None:
            candidates = [u for u in range(V) if u != blank]
        else:
            keep = np.nonzero(frame >= prune)[0].tolist()
            best = int(frame.argmax())
            candidates = [u for u in dict.fromkeys([*keep, best]) if u != blank]
        extension_scores(list(beam))
        nxt: dict[tuple[int, ...], list[float]] = {}
        for prefix, (pb, pnb) in beam.items():
            total = _logaddexp(pb, pnb)
            _add(nxt, prefix, 0, total + float(frame[blank]))
            last = prefix[-1] if prefix else None
            if last is not None:  # the last unit again, without a blank between: the same labelling
                _add(nxt, prefix, 1, pnb + float(frame[last]))
            ext = fused[prefix]
            for u in candidates:
                bonus = float(ext[u])
                if bonus == -math.inf:
                    continue
                # after the same unit, only paths through a blank make a new unit
                start = pb if u == last else total
                _add(nxt, (*prefix, u), 1, start + float(frame[u]) + bonus)
        ranked = sorted(nxt.items(), key=lambda kv: _logaddexp(*kv[1]), reverse=True)
        beam = dict(ranked[:beam_size])

    found = []
    for prefix, (pb, pnb) in beam.items():
        log_prob = _logaddexp(pb, pnb)
        score = log_prob + sum(weight * scorer.end_score(prefix) for scorer, weight in scorers)
        if score > -math.inf:
            found.append(CTCHypothesis(list(prefix), log_prob, score))
    found.sort(key=attrgetter("score"), reverse=True)
    return found[:n_best]


class StepScorer:
    """A language model as a `PrefixScorer`: log P(unit | labelling so far), through the model's `step`.

    Args:
        model: provides `step(tokens (B,), state) -> (logits (B, W), state)` (batch dim 1 in the state).
        logits, state: the model's next-token logits (1, W) and state after its start (a line start).
        unit_tokens: for each output unit, the model's token id for it (-1: a unit the model cannot
            score, such as the blank or a special, which gets log-score 0).
        end_token: the token that ends a labelling (a newline), or None for no end score.
    """

    def __init__(self, model: Any, logits: Tensor, state: Any, unit_tokens: Sequence[int],
                 end_token: int | None = None) -> None:
        self.model = model
        self.unit_tokens = torch.tensor(list(unit_tokens), dtype=torch.long)
        self.mapped = self.unit_tokens >= 0
        self.end_token = end_token
        self.cache: dict[tuple[int, ...], tuple[Any, float, Any]] = {}
        self._store((), logits, state, 0)

    def _store(self, prefix: tuple[int, ...], logits: Tensor, state: Any, row: int) -> None:
        import numpy as np

        lp = _log_softmax(logits[row:row + 1].float())[0].cpu()  # (W,)
        scores = torch.where(self.mapped, lp[self.unit_tokens.clamp(min=0)], torch.zeros(()))
        end = float(lp[self.end_token]) if self.end_token is not None else 0.0
        kept = _row_state(state, row)
        self.cache[prefix] = (np.asarray(scores, dtype=np.float64), end, kept)

    @torch.no_grad()
    def next_scores(self, prefixes: list[tuple[int, ...]]) -> list[Any]:
        todo = [p for p in dict.fromkeys(prefixes) if p not in self.cache]
        # every prefix asked for extends one already scored (search grows labellings a unit at a time)
        for start in range(0, len(todo), 256):
            group = todo[start:start + 256]
            states = [self.cache[p[:-1]][2] for p in group]
            state = _cat_states(states)
            tokens = torch.tensor([max(int(self.unit_tokens[p[-1]]), 0) for p in group], dtype=torch.long,
                                  device=_state_device(state))
            logits, state = self.model.step(tokens, state)
            for i, p in enumerate(group):
                if self.unit_tokens[p[-1]] < 0:  # a unit the model does not see: its state stays
                    self.cache[p] = self.cache[p[:-1]]
                else:
                    self._store(p, logits, state, i)
        return [self.cache[p][0] for p in prefixes]

    def end_score(self, prefix: tuple[int, ...]) -> float:
        self.next_scores([prefix])
        return self.cache[prefix][1]


def _cat_states(states: list[Any]) -> Any:
    if isinstance(states[0], Tensor):
        return torch.cat(states, dim=1)
    return type(states[0])(_cat_states([s[i] for s in states]) for i in range(len(states[0])))


def _row_state(state: Any, row: int) -> Any:
    if isinstance(state, Tensor):
        return state[:, row:row + 1]
    return type(state)(_row_state(s, row) for s in state)


def _state_device(state: Any) -> torch.device:
    return state.device if isinstance(state, Tensor) else _state_device(state[0])


class LexiconScorer:
    """A word list as a `PrefixScorer`: a unit may be appended only where the text stays on words of the
    list (each finished word one of them, the word being spelt the start of one); log-score 0 or -inf.

    Args:
        words: the allowed words.
        decode: unit ids to text (words separated by single spaces).
        vocab_size: V, the number of unit ids (blank included).
    """

    def __init__(self, words: Sequence[str], decode: Callable[[Sequence[int]], str], vocab_size: int) -> None:
        self.words = set(words)
        self.starts = {w[:i] for w in self.words for i in range(len(w) + 1)}
        self.decode = decode
        self.vocab_size = vocab_size
        self.cache: dict[tuple[int, ...], Any] = {}

    def _allowed(self, text: str, final: bool) -> bool:
        parts = text.split(" ")
        if parts and parts[0] == "":
            parts = parts[1:]
        *done, current = parts or [""]
        if any(w not in self.words for w in done if w):
            return False
        return current in self.words or (not final and current in self.starts) or current == ""

    def next_scores(self, prefixes: list[tuple[int, ...]]) -> list[Any]:
        import numpy as np

        for p in prefixes:
            if p not in self.cache:
                row = np.zeros(self.vocab_size)
                for u in range(self.vocab_size):
                    if not self._allowed(self.decode([*p, u]), final=False):
                        row[u] = -np.inf
                self.cache[p] = row
        return [self.cache[p] for p in prefixes]

    def end_score(self, prefix: tuple[int, ...]) -> float:
        return 0.0 if self._allowed(self.decode(list(prefix)), final=True) else -math.inf
