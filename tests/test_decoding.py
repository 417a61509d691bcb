"""Tests for rnnkit.decoding against hand loops and brute-force enumeration on a toy step model."""

import itertools
import math

import pytest
import torch

from rnnkit.decoding import (
    Completion,
    Hypothesis,
    beam_search,
    complete,
    filter_logits,
    greedy,
    iter_sample,
    sample,
)


class ToyModel:
    """Seeded Markov model with a small recurrent state; next-token logits depend on both.

    State is a nested tuple ``(h, (pos,))`` with h (B, K) and pos (B,), to check decoding treats it as opaque.
    Every operation is row-wise, so a row's result does not depend on what else is in the batch.
    """

    def __init__(
        self,
        vocab_size: int,
        state_size: int = 3,
        seed: int = 0,
        eos_id: int | None = None,
        eos_growth: float = 0.0,
    ):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.transition = 1.5 * torch.randn(vocab_size, vocab_size, generator=g)  # (V, V)
        self.token_mix = torch.randn(vocab_size, state_size, generator=g)  # (V, K)
        self.readout = torch.randn(state_size, vocab_size, generator=g)  # (K, V)
        self.eos_id = eos_id
        self.eos_growth = eos_growth  # eos logit grows with position so rows do end
        self.calls: list[tuple[int, bool]] = []  # (rows, grad enabled) per step call

    def step(self, tokens, state):
        h, (pos,) = state
        self.calls.append((tokens.numel(), torch.is_grad_enabled()))
        h = torch.tanh(0.7 * h + self.token_mix[tokens])  # (B, K)
        pos = pos + 1
        logits = self.transition[tokens].clone()  # (B, V)
        for j in range(h.size(1)):  # explicit loop: identical arithmetic whatever the batch size
            logits = logits + h[:, j : j + 1] * self.readout[j]
        if self.eos_id is not None:
            logits[:, self.eos_id] += self.eos_growth * pos
        return logits, (h, (pos,))

    def reorder_state(self, state, index):
        h, (pos,) = state
        return h.index_select(0, index), (pos.index_select(0, index),)

    def start(self, prompts):
        """Read (B, T) prompts; returns next-token logits (B, V) and the state."""
        batch_size = prompts.size(0)
        state = (
            torch.zeros(batch_size, self.token_mix.size(1)),
            (torch.zeros(batch_size, dtype=torch.long),),
        )
        logits = None
        for t in range(prompts.size(1)):
            logits, state = self.step(prompts[:, t], state)
        return logits, state

    def sequence_log_prob(self, prompt, tokens):
        """Sum of log P(token) for tokens after a (T,) prompt, one row at a time."""
        logits, state = self.start(prompt.unsqueeze(0))
        total = 0.0
        for tok in tokens:
            total += float(logits.double().log_softmax(-1)[0, tok])
            logits, state = self.step(torch.tensor([tok]), state)
        return total, logits


def _prompts(batch_size, vocab_size, length=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(vocab_size, (batch_size, length), generator=g)


def _row(model, logits, state, i):
    index = torch.tensor([i])
    return logits.index_select(0, index), model.reorder_state(state, index)


# ---------------------------------------------------------------- filter_logits


def test_filter_logits_temperature_scales():
    logits = torch.randn(3, 7)
    torch.testing.assert_close(filter_logits(logits, temperature=2.0), logits / 2.0)
    torch.testing.assert_close(filter_logits(logits, temperature=0.5), logits * 2.0)


@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_filter_logits_top_k_keeps_k_largest(k):
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(k))
    out = filter_logits(logits, top_k=k)
    kept = out.isfinite()
    assert (kept.sum(-1) == min(k, 6)).all()
    expected = torch.zeros_like(kept).scatter_(-1, logits.topk(min(k, 6), -1).indices, True)
    assert torch.equal(kept, expected)
    torch.testing.assert_close(out[kept], logits[kept])


def test_filter_logits_top_k_exact_count_with_ties():
    logits = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert filter_logits(logits, top_k=2).isfinite().sum() == 2


def _brute_force_nucleus(probs, p):
    """Smallest set of tokens with mass >= p; among sets of that size, the most probable one."""
    vocab = range(len(probs))
    for size in range(1, len(probs) + 1):
        sets = [s for s in itertools.combinations(vocab, size) if sum(probs[i] for i in s) >= p]
        if sets:
            return set(max(sets, key=lambda s: sum(probs[i] for i in s)))
    raise AssertionError("probabilities do not sum to 1")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("p", [0.05, 0.3, 0.6, 0.9, 0.99])
def test_filter_logits_top_p_is_minimal_nucleus(seed, p):
    logits = 2 * torch.randn(3, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = filter_logits(logits, top_p=p)
    for row in range(3):
        probs = logits[row].softmax(-1).tolist()
        kept = set(out[row].isfinite().nonzero().flatten().tolist())
        assert kept == _brute_force_nucleus(probs, p)
    torch.testing.assert_close(out[out.isfinite()], logits[out.isfinite()])


def test_filter_logits_top_k_then_top_p_renormalises():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    # after top_k=3 the kept probabilities renormalise to about (0.665, 0.245, 0.090)
    assert filter_logits(logits, top_k=3, top_p=0.7).isfinite().sum() == 2
    assert filter_logits(logits, top_k=3, top_p=0.9).isfinite().sum() == 2
    assert filter_logits(logits, top_k=3, top_p=0.95).isfinite().sum() == 3


# ---------------------------------------------------------------- greedy and sampling


def _hand_greedy(model, logits, state, max_tokens, eos_id=None):
    rows = []
    for i in range(logits.size(0)):
        lg, st = _row(model, logits, state, i)
        out = []
        for _ in range(max_tokens):
            tok = int(lg.argmax(-1))
            out.append(tok)
            if tok == eos_id:
                break
            lg, st = model.step(torch.tensor([tok]), st)
        rows.append(out)
    return rows


def test_greedy_equals_hand_loop():
    model = ToyModel(8, seed=3)
    logits, state = model.start(_prompts(5, 8))
    out = greedy(model, logits, state, max_tokens=7)
    assert out.shape == (5, 7) and out.dtype == torch.long
    assert out.tolist() == _hand_greedy(model, logits, state, 7)


def test_greedy_with_eos_pads_and_stops_early():
    model = ToyModel(8, seed=3, eos_id=0, eos_growth=0.3)
    logits, state = model.start(_prompts(5, 8))
    expected = _hand_greedy(model, logits, state, 30, eos_id=0)
    assert all(row[-1] == 0 for row in expected)  # every row ends, so iteration must stop early
    longest = max(len(row) for row in expected)
    assert len({len(row) for row in expected}) > 1  # some rows are padded
    out = greedy(model, logits, state, max_tokens=30, eos_id=0)
    assert out.shape == (5, longest)
    for row, exp in zip(out.tolist(), expected, strict=True):
        assert row == exp + [0] * (longest - len(exp))


def test_iter_sample_yields_steps_and_runs_without_grad():
    model = ToyModel(8, seed=3)
    model.transition.requires_grad_(True)
    logits, state = model.start(_prompts(2, 8))
    model.calls.clear()
    steps = iter_sample(model, logits.detach(), state, max_tokens=4, temperature=0)
    first = next(steps)
    assert first.shape == (2,) and not first.requires_grad
    assert model.calls == []  # no model call before the first token is needed
    rest = list(steps)
    assert len(rest) == 3
    assert len(model.calls) == 3 and not any(grad for _, grad in model.calls)


def test_sample_same_seed_same_tokens_different_seed_differs():
    model = ToyModel(10, seed=4)
    logits, state = model.start(_prompts(4, 10))

    def run(seed):
        return sample(
            model, logits, state, 20, temperature=1.0, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_sample_top_k_one_and_temperature_zero_equal_greedy():
    model = ToyModel(10, seed=5, eos_id=1, eos_growth=0.3)
    logits, state = model.start(_prompts(6, 10))
    expected = greedy(model, logits, state, 12, eos_id=1)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(sample(model, logits, state, 12, top_k=1, generator=gen, eos_id=1), expected)
    assert torch.equal(sample(model, logits, state, 12, temperature=0.0, eos_id=1), expected)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, None, None), (0.7, 3, None), (1.3, None, 0.8)]
)
def test_sample_first_token_frequencies_match_probabilities(temperature, top_k, top_p):
    model = ToyModel(6, seed=6)
    logits, state = model.start(_prompts(1, 6))
    batch = 20000
    logits = logits.expand(batch, -1)
    state = model.reorder_state(state, torch.zeros(batch, dtype=torch.long))
    gen = torch.Generator().manual_seed(123)
    tokens = sample(model, logits, state, 1, temperature, top_k, top_p, generator=gen)[:, 0]
    freq = torch.bincount(tokens, minlength=6).double() / batch
    expected = filter_logits(logits[:1].double(), temperature, top_k, top_p).softmax(-1)[0]
    torch.testing.assert_close(freq, expected, atol=0.015, rtol=0)


# ---------------------------------------------------------------- beam search


def test_beam_size_one_equals_greedy():
    model = ToyModel(8, seed=7, eos_id=0, eos_growth=0.3)
    prompts = _prompts(6, 8, seed=2)
    logits, state = model.start(prompts)
    expected = _hand_greedy(model, logits, state, 10, eos_id=0)
    assert any(row[-1] == 0 for row in expected) and any(row[-1] != 0 for row in expected)
    result = beam_search(model, logits, state, beam_size=1, max_tokens=10, eos_id=0, length_penalty=0.0)
    for i, (hyps, exp) in enumerate(zip(result, expected, strict=True)):
        assert len(hyps) == 1
        tokens = exp[:-1] if exp[-1] == 0 else exp
        assert hyps[0].tokens == tokens
        log_prob, _ = model.sequence_log_prob(prompts[i], exp)
        assert hyps[0].log_prob == pytest.approx(log_prob, abs=1e-4)
        assert hyps[0].score == pytest.approx(log_prob, abs=1e-4)


def _brute_force_hypotheses(model, prompt, max_tokens, eos_id, length_penalty, min_tokens):
    """Every sequence beam search could return, with its score, best first."""
    others = [v for v in range(model.vocab_size) if v != eos_id]
    hyps = []
    for length in range(1, max_tokens + 1):
        for body in itertools.product(others, repeat=length - 1):
            if length - 1 >= min_tokens:
                log_prob, _ = model.sequence_log_prob(prompt, [*body, eos_id])
                hyps.append(Hypothesis(list(body), log_prob, log_prob / length**length_penalty))
    for body in itertools.product(others, repeat=max_tokens):
        log_prob, _ = model.sequence_log_prob(prompt, list(body))
        hyps.append(Hypothesis(list(body), log_prob, log_prob / max_tokens**length_penalty))
    return sorted(hyps, key=lambda h: h.score, reverse=True)


@pytest.mark.parametrize(("vocab_size", "max_tokens", "beam_size"), [(4, 3, 64), (3, 4, 24)])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("min_tokens", [0, 2])
def test_wide_beam_finds_brute_force_best(vocab_size, max_tokens, beam_size, length_penalty, min_tokens):
    # beam_size covers every candidate at every step, so the search is exhaustive; with (3, 4, 24) there
    # are more hypotheses (31) than beams, so early stopping is exercised too
    model = ToyModel(vocab_size, seed=8, eos_id=0, eos_growth=0.5)
    prompts = _prompts(2, vocab_size, seed=9)
    logits, state = model.start(prompts)
    result = beam_search(
        model,
        logits,
        state,
        beam_size,
        max_tokens,
        eos_id=0,
        length_penalty=length_penalty,
        min_tokens=min_tokens,
    )
    for i, hyps in enumerate(result):
        expected = _brute_force_hypotheses(model, prompts[i], max_tokens, 0, length_penalty, min_tokens)
        expected = expected[:beam_size]
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        torch.testing.assert_close([h.score for h in hyps], [h.score for h in expected], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            [h.log_prob for h in hyps], [h.log_prob for h in expected], atol=1e-4, rtol=0
        )


def _reference_beam(model, prompt, beam_size, max_tokens, eos_id, length_penalty):
    """Plain one-input beam search that never stops early: runs every step up to max_tokens."""
    logits, state = model.start(prompt.unsqueeze(0))
    beams = [([], 0.0, logits, state)]
    finished = []
    for step in range(1, max_tokens + 1):
        candidates = []
        for tokens, log_prob, lg, st in beams:
            for tok, lp in enumerate(lg.double().log_softmax(-1)[0].tolist()):
                candidates.append((log_prob + lp, tokens, tok, st))
        candidates.sort(key=lambda c: c[0], reverse=True)
        live = []
        for rank, (log_prob, tokens, tok, st) in enumerate(candidates[: 2 * beam_size]):
            if tok == eos_id:
                if rank < beam_size:
                    finished.append(Hypothesis(tokens, log_prob, log_prob / step**length_penalty))
            elif len(live) < beam_size:
                live.append((log_prob, tokens + [tok], tok, st))
        beams = []
        for log_prob, tokens, tok, st in live:
            if step == max_tokens:
                finished.append(Hypothesis(tokens, log_prob, log_prob / step**length_penalty))
            else:
                lg, st = model.step(torch.tensor([tok]), st)
                beams.append((tokens, log_prob, lg, st))
    return sorted(finished, key=lambda h: h.score, reverse=True)[:beam_size]


@pytest.mark.parametrize("length_penalty", [0.0, 0.5, 1.0, 2.0])
def test_beam_search_early_stop_equals_running_to_max_length(length_penalty):
    # a safe stopping rule cannot change the result of a search that would have run every step
    model = ToyModel(8, seed=17, eos_id=0, eos_growth=0.8)
    prompts = _prompts(16, 8, seed=18)
    logits, state = model.start(prompts)
    model.calls.clear()
    result = beam_search(model, logits, state, 3, 12, eos_id=0, length_penalty=length_penalty)
    assert min(rows for rows, _ in model.calls) < 16 * 3  # inputs stopped early: the check is about stopping
    for i, hyps in enumerate(result):
        expected = _reference_beam(model, prompts[i], 3, 12, 0, length_penalty)
        assert [h.tokens for h in hyps] == [h.tokens for h in expected]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in expected], abs=1e-4)


def test_beam_search_without_eos_runs_to_max_length():
    model = ToyModel(5, seed=10)
    logits, state = model.start(_prompts(2, 5))
    result = beam_search(model, logits, state, beam_size=3, max_tokens=4)
    for hyps in result:
        assert len(hyps) == 3
        assert all(len(h.tokens) == 4 for h in hyps)
        assert len({tuple(h.tokens) for h in hyps}) == 3  # no duplicated beams from step one


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_batched_beam_equals_one_at_a_time(length_penalty):
    model = ToyModel(9, seed=11, eos_id=2, eos_growth=0.4)
    prompts = _prompts(4, 9, length=4, seed=12)
    logits, state = model.start(prompts)
    max_tokens = torch.tensor([3, 7, 5, 9])
    model.calls.clear()
    batched = beam_search(model, logits, state, 3, max_tokens, eos_id=2, length_penalty=length_penalty)
    assert len(model.calls) <= 8  # one batched step per generated token
    assert not any(grad for _, grad in model.calls)
    for i, hyps in enumerate(batched):
        lg, st = _row(model, logits, state, i)
        alone = beam_search(model, lg, st, 3, int(max_tokens[i]), eos_id=2, length_penalty=length_penalty)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-6)
        assert 1 <= len(hyps) <= 3
        scores = [h.score for h in hyps]
        assert scores == sorted(scores, reverse=True)
        assert all(len(h.tokens) <= max_tokens[i] for h in hyps)
        for h in hyps:  # log_prob is the sequence's own log-probability, eos counted when it ended early
            ended = h.tokens + [2] if len(h.tokens) < max_tokens[i] else h.tokens
            log_prob, _ = model.sequence_log_prob(prompts[i], ended)
            assert h.log_prob == pytest.approx(log_prob, abs=1e-4)
            assert h.score == pytest.approx(log_prob / len(ended) ** length_penalty, abs=1e-4)


# ---------------------------------------------------------------- complete


BOUNDARY = {0, 1}


def _brute_force_completions(model, prompt, max_tokens):
    """All completions (complete ones up to max_tokens - 1 tokens, then unfinished ones), with probabilities."""
    words = [v for v in range(model.vocab_size) if v not in BOUNDARY]
    found = []
    for length in range(max_tokens + 1):
        for body in itertools.product(words, repeat=length):
            log_prob, logits = model.sequence_log_prob(prompt, list(body))
            probs = logits.double().softmax(-1)[0]
            if length < max_tokens:
                end = sum(float(probs[b]) for b in BOUNDARY)
                found.append(Completion(list(body), math.exp(log_prob) * end, True))
            else:
                found.append(Completion(list(body), math.exp(log_prob), False))
    return found


@pytest.mark.parametrize("n", [1, 4, 100])
def test_complete_equals_brute_force(n):
    model = ToyModel(5, seed=13)
    prompts = _prompts(2, 5, seed=14)
    logits, state = model.start(prompts)
    result = complete(model, logits, state, n, 3, lambda t: t in BOUNDARY, beam_size=27)
    for i, got in enumerate(result):
        every = _brute_force_completions(model, prompts[i], 3)
        done = sorted((c for c in every if c.complete), key=lambda c: c.probability, reverse=True)
        partial = sorted((c for c in every if not c.complete), key=lambda c: c.probability, reverse=True)
        expected = sorted(
            done[:n] + partial[: max(0, n - len(done))], key=lambda c: c.probability, reverse=True
        )
        assert len(got) == min(n, len(every))
        assert [(c.tokens, c.complete) for c in got] == [(c.tokens, c.complete) for c in expected]
        torch.testing.assert_close(
            [c.probability for c in got], [c.probability for c in expected], atol=1e-6, rtol=1e-4
        )
        if n >= len(every):  # all outcomes of max_tokens steps: they partition probability one
            assert sum(c.probability for c in got) == pytest.approx(1.0, abs=1e-5)
            assert [] in [c.tokens for c in got]  # the empty completion is allowed


def test_complete_default_beam_batched_equals_alone():
    model = ToyModel(7, seed=15)
    prompts = _prompts(3, 7, seed=16)
    logits, state = model.start(prompts)
    model.calls.clear()
    batched = complete(model, logits, state, 3, 30, lambda t: t in BOUNDARY)
    assert len(model.calls) < 10  # probabilities only shrink, so the search stops long before 30 tokens
    assert not any(grad for _, grad in model.calls)
    for i, got in enumerate(batched):
        assert len(got) == 3
        probs = [c.probability for c in got]
        assert probs == sorted(probs, reverse=True)
        lg, st = _row(model, logits, state, i)
        alone = complete(model, lg, st, 3, 30, lambda t: t in BOUNDARY)[0]
        assert [c.tokens for c in got] == [c.tokens for c in alone]
        for c in got:
            assert not set(c.tokens) & BOUNDARY
            log_prob, lg_end = model.sequence_log_prob(prompts[i], c.tokens)
            end = lg_end.double().softmax(-1)[0, list(BOUNDARY)].sum()
            assert c.probability == pytest.approx(math.exp(log_prob) * float(end), rel=1e-4)


# ---------------------------------------------------------------- bad arguments


def _setup():
    model = ToyModel(5)
    logits, state = model.start(_prompts(2, 5))
    return model, logits, state


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": 0.0}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}],
)
def test_filter_logits_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        filter_logits(torch.randn(2, 5), **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -0.5}, {"top_k": 0}, {"top_p": -0.1}, {"top_p": 2.0}, {"max_tokens": -1}],
)
def test_sampling_rejects_bad_arguments_before_iterating(kwargs):
    model, logits, state = _setup()
    kwargs = {"max_tokens": 3, **kwargs}
    with pytest.raises(ValueError):
        iter_sample(model, logits, state, **kwargs)  # raises on the call, not on the first next()
    with pytest.raises(ValueError):
        sample(model, logits, state, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"beam_size": 0},
        {"max_tokens": 0},
        {"max_tokens": torch.tensor([3, 0])},
        {"max_tokens": torch.tensor([3, 3, 3])},
        {"min_tokens": -1},
    ],
)
def test_beam_search_rejects_bad_arguments(kwargs):
    model, logits, state = _setup()
    kwargs = {"beam_size": 2, "max_tokens": 3, **kwargs}
    with pytest.raises(ValueError):
        beam_search(model, logits, state, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"n": 0}, {"max_tokens": 0}, {"beam_size": 0}, {"is_boundary": lambda t: False}],
)
def test_complete_rejects_bad_arguments(kwargs):
    model, logits, state = _setup()
    kwargs = {"n": 2, "max_tokens": 3, "is_boundary": lambda t: t == 0, **kwargs}
    with pytest.raises(ValueError):
        complete(model, logits, state, **kwargs)
