"""Attention modules against references: PyTorch's scaled dot-product attention, the additive formula
written out per position, padding invariance and float64 gradient checks."""

import pytest
import torch
import torch.nn.functional as F

from rnnkit.attention import AdditiveAttention, MultiplicativeAttention, make_attention, masked_softmax


def _batch(B=3, S=5, Q=4, K=6, dtype=torch.float32):
    query = torch.randn(B, Q, dtype=dtype)
    keys = torch.randn(B, S, K, dtype=dtype)
    lengths = torch.tensor([S, 2, 1][:B])
    mask = torch.arange(S).unsqueeze(0) < lengths.unsqueeze(1)  # (B, S)
    return query, keys, mask, lengths


def _sdpa(query, keys, mask):
    """PyTorch's attention with scale 1: softmax(q k^T) v, masked."""
    out = F.scaled_dot_product_attention(query.unsqueeze(1), keys, keys, attn_mask=mask.unsqueeze(1), scale=1.0)
    return out.squeeze(1)


def test_dot_equals_scaled_dot_product_attention():
    query, keys, mask, _ = _batch(Q=6, K=6)
    att = MultiplicativeAttention(6, 6, "dot")
    context, weights = att(query, keys, mask=mask)
    torch.testing.assert_close(context, _sdpa(query, keys, mask))
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    assert bool((weights[~mask] == 0).all())


def test_general_equals_scaled_dot_product_attention_on_projected_query():
    query, keys, mask, _ = _batch()
    att = MultiplicativeAttention(4, 6, "general")
    context, _ = att(query, keys, mask=mask)
    # q^T W k = (W^T q)^T k, with W the (Q, K) weight of the key projection
    torch.testing.assert_close(context, _sdpa(query @ att.key_proj.weight, keys, mask))


def test_additive_equals_formula_per_position():
    query, keys, mask, _ = _batch()
    att = AdditiveAttention(4, 6, attention_size=5)
    context, weights = att(query, keys, mask=mask)
    Wq, Wk, bk, v = att.query_proj.weight, att.key_proj.weight, att.key_proj.bias, att.v.weight[0]
    for b in range(3):
        n = int(mask[b].sum())
        scores = torch.stack([v @ torch.tanh(Wq @ query[b] + Wk @ keys[b, s] + bk) for s in range(n)])
        expected_w = scores.softmax(0)
        torch.testing.assert_close(weights[b, :n], expected_w)
        torch.testing.assert_close(context[b], expected_w @ keys[b, :n])


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_padding_does_not_change_the_result(kind):
    query, keys, _, _ = _batch(B=1, S=3, Q=6, K=6)
    att = make_attention(kind, 6, 6)
    padded = torch.cat([keys, torch.randn(1, 4, 6) * 100], dim=1)  # (1, 7, 6)
    mask = torch.tensor([[True] * 3 + [False] * 4])
    c1, w1 = att(query, keys)
    c2, w2 = att(query, padded, att.prepare(padded), mask)
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(w1, w2[:, :3])


@pytest.mark.parametrize("kind", ["additive", "dot", "general"])
def test_gradcheck_float64(kind):
    query, keys, mask, _ = _batch(B=2, S=3, Q=3, K=3, dtype=torch.float64)
    att = make_attention(kind, 3, 3).double()
    query.requires_grad_(True)
    keys.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda q, k: att(q, k, mask=mask)[0], (query, keys))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="query_size == key_size"):
        MultiplicativeAttention(4, 6, "dot")
    with pytest.raises(ValueError, match="score"):
        MultiplicativeAttention(4, 4, "cosine")
    with pytest.raises(ValueError, match="attention"):
        make_attention("none", 4, 4)


def test_masked_softmax_zeroes_masked_positions():
    w = masked_softmax(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[True, False, True]]))
    e1, e3 = torch.tensor(1.0).exp(), torch.tensor(3.0).exp()
    torch.testing.assert_close(w, torch.stack([e1, torch.tensor(0.0), e3]).unsqueeze(0) / (e1 + e3))
