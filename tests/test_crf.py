"""The linear-chain CRF against brute-force enumeration of every tag path, batched with masks."""

import itertools

import pytest
import torch
from torch.testing import assert_close

from rnnkit.crf import CRF, FORBIDDEN, allowed_transitions


def brute_force(crf: CRF, emissions: torch.Tensor, length: int) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """log Z, the best path and its score of one row (T, K) of true length `length`, by enumeration."""
    trans, start, end = crf._scores()
    K = emissions.shape[1]
    scores, paths = [], []
    for path in itertools.product(range(K), repeat=length):
        s = start[path[0]] + end[path[-1]] + sum(emissions[t, path[t]] for t in range(length))
        s = s + sum(trans[path[t - 1], path[t]] for t in range(1, length))
        scores.append(s)
        paths.append(list(path))
    scores = torch.stack(scores)
    best = int(scores.argmax())
    return torch.logsumexp(scores, 0), paths[best], scores[best]


def random_crf(K: int, constrained: bool = False) -> CRF:
    crf = CRF(K)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_(0, 1.0)
    if constrained:
        crf._allowed = torch.rand(K, K) > 0.3
        crf._allowed_start[0] = False
    return crf.double()


@pytest.mark.parametrize("K", [1, 2, 3])
@pytest.mark.parametrize("constrained", [False, True])
def test_log_partition_and_viterbi_equal_brute_force_with_masks(K, constrained):
    crf = random_crf(K, constrained)
    lengths = [4, 1, 3, 2]
    B, T = len(lengths), max(lengths)
    emissions = torch.randn(B, T, K, dtype=torch.float64) * 2
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, T)
    log_z = crf.log_partition(emissions, mask)
    paths, best_scores = crf.viterbi(emissions, mask)
    for b, n in enumerate(lengths):
        ref_z, ref_path, ref_best = brute_force(crf, emissions[b], n)
        assert_close(log_z[b], ref_z)
        assert paths[b, :n].tolist() == ref_path
        assert paths[b, n:].eq(0).all()
        assert_close(best_scores[b], ref_best)
        assert_close(crf.path_score(emissions[b:b + 1, :n], paths[b:b + 1, :n])[0], ref_best)


def test_padding_does_not_change_a_row():
    crf = random_crf(3)
    emissions = torch.randn(1, 3, 3, dtype=torch.float64)
    tags = torch.tensor([[2, 0, 1]])
    padded = torch.cat([emissions, torch.randn(1, 4, 3, dtype=torch.float64) * 100], dim=1)
    padded_tags = torch.cat([tags, torch.tensor([[1, 2, 0, 1]])], dim=1)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    assert_close(crf.nll(padded, padded_tags, mask), crf.nll(emissions, tags))
    assert crf.viterbi(padded, mask)[0][0, :3].tolist() == crf.viterbi(emissions)[0][0].tolist()


def test_probabilities_of_all_paths_sum_to_one():
    crf = random_crf(3)
    emissions = torch.randn(1, 4, 3, dtype=torch.float64)
    total = sum(torch.exp(-crf.nll(emissions, torch.tensor([p]))) for p in itertools.product(range(3), repeat=4))
    assert_close(total, torch.ones(1, dtype=torch.float64))


def test_gradcheck_of_the_negative_log_likelihood():
    crf = random_crf(3)
    emissions = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    tags = torch.tensor([[0, 2, 1, 1], [1, 1, 0, 0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])

    def f(e, trans, start, end):
        params = {"transitions": trans, "start_transitions": start, "end_transitions": end}
        return torch.func.functional_call(crf, params, (e, tags, mask), strict=False)

    params = [p.detach().clone().requires_grad_(True) for p in (crf.transitions, crf.start_transitions,
                                                                  crf.end_transitions)]
    assert torch.autograd.gradcheck(f, (emissions, *params))


def test_gradient_of_log_partition_is_the_tag_marginal():
    # d log Z / d emission[t, k] is P(y_t = k): the marginals of each step sum to one over the tags.
    crf = random_crf(4)
    emissions = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    crf.log_partition(emissions, mask).sum().backward()
    marginals = emissions.grad.sum(2)
    assert_close(marginals, mask.double())


def test_bio_constraints():
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    allowed, start, end = allowed_transitions(tags, "bio")
    assert start.tolist() == [True, True, False, True, False]
    assert end.all()
    assert allowed[1, 2] and allowed[2, 2] and not allowed[0, 2] and not allowed[3, 2] and not allowed[4, 2]
    assert allowed[2, 3] and allowed[0, 1] and allowed[4, 0]


def test_bioes_constraints():
    tags = ["O", "B-X", "I-X", "E-X", "S-X", "B-Y", "E-Y"]
    allowed, start, end = allowed_transitions(tags, "bioes")
    i = {t: n for n, t in enumerate(tags)}
    assert start.tolist() == [True, True, False, False, True, True, False]
    assert end.tolist() == [True, False, False, True, True, False, True]
    ok = {("B-X", "I-X"), ("B-X", "E-X"), ("I-X", "I-X"), ("I-X", "E-X"), ("B-Y", "E-Y")}
    for a, b in itertools.product(tags, tags):
        begins = b in ("O", "B-X", "S-X", "B-Y")
        expected = (a, b) in ok or (begins and a in ("O", "E-X", "S-X", "E-Y"))
        assert bool(allowed[i[a], i[b]]) == expected, (a, b)


def test_viterbi_never_takes_a_forbidden_transition():
    tags = ["O", "B-X", "I-X", "B-Y", "I-Y"]
    crf = CRF(len(tags), *allowed_transitions(tags, "bio"))
    emissions = torch.randn(8, 6, len(tags))
    emissions[:, :, 2] += 5.0  # I-X is the best tag everywhere, yet it may not start a sequence
    paths, scores = crf.viterbi(emissions)
    allowed, start, _ = allowed_transitions(tags, "bio")
    assert scores.gt(FORBIDDEN / 2).all()
    for row in paths.tolist():
        assert start[row[0]]
        assert all(allowed[a, b] for a, b in zip(row, row[1:], strict=False))


def test_bad_shapes_are_refused():
    crf = CRF(3)
    with pytest.raises(ValueError, match="emissions"):
        crf.log_partition(torch.randn(4, 3))
    with pytest.raises(ValueError, match="first step"):
        crf.log_partition(torch.randn(2, 3, 3), torch.tensor([[False, False, False], [True, True, False]]))
    with pytest.raises(ValueError, match="num_tags"):
        CRF(0)
