"""Tests for rnnkit.data.batching: stream layout, BPTT chunks, padding and length buckets."""

import pytest
import torch

from rnnkit.config import UserError
from rnnkit.data.batching import StreamBatches, bucket_batches, pad_sequences, stream_layout


@pytest.mark.parametrize(("n", "batch_size"), [(10, 1), (10, 3), (23, 4), (100, 7)])
def test_stream_layout_rows_are_contiguous_slices(n, batch_size):
    ids = torch.arange(100, 100 + n)
    grid = stream_layout(ids, batch_size)
    row_len = n // batch_size
    assert grid.shape == (batch_size, row_len)
    for b in range(batch_size):
        torch.testing.assert_close(grid[b], ids[b * row_len : (b + 1) * row_len])


def test_stream_layout_too_short():
    with pytest.raises(UserError, match="too short"):
        stream_layout(torch.arange(3), 4)


@pytest.mark.parametrize(("n", "batch_size", "bptt"), [(50, 2, 5), (103, 4, 7), (40, 3, 12), (9, 1, 8)])
def test_stream_batches_reproduce_rows_with_shifted_targets(n, batch_size, bptt):
    ids = torch.randint(0, 50, (n,), generator=torch.Generator().manual_seed(n))
    batches = StreamBatches(ids, batch_size, bptt)
    grid = stream_layout(ids, batch_size)
    row_len = n // batch_size
    chunks = list(batches)
    assert len(chunks) == len(batches) == -(-(row_len - 1) // bptt)
    for k, (inputs, targets) in enumerate(chunks):
        assert inputs.dtype == targets.dtype == torch.long
        assert inputs.shape == targets.shape
        assert inputs.shape[0] == batch_size
        if k < len(chunks) - 1:
            assert inputs.shape[1] == bptt
    all_inputs = torch.cat([x for x, _ in chunks], dim=1)  # (B, M-1)
    all_targets = torch.cat([y for _, y in chunks], dim=1)  # (B, M-1)
    torch.testing.assert_close(all_inputs, grid[:, :-1])
    torch.testing.assert_close(all_targets, grid[:, 1:])
    assert batches.num_tokens == all_targets.numel() == batch_size * (row_len - 1)


@pytest.mark.parametrize("start", [0, 1, 3, 5])
def test_iter_from_is_the_tail_of_full_iteration(start):
    batches = StreamBatches(torch.arange(200), 3, 13)
    full = list(batches)
    tail = list(batches.iter_from(start))
    assert len(tail) == len(full) - start
    for (x, y), (tx, ty) in zip(full[start:], tail, strict=True):
        torch.testing.assert_close(x, tx)
        torch.testing.assert_close(y, ty)


def test_stream_batches_too_short_names_needed_tokens():
    # batch_size 4, bptt 10 needs 4 * 11 = 44 tokens; 43 gives only 9 steps per row.
    with pytest.raises(UserError, match=r"too short.*need at least 44 tokens"):
        StreamBatches(torch.arange(43), 4, 10)
    assert len(StreamBatches(torch.arange(44), 4, 10)) == 1


def test_pad_sequences_lists():
    padded, lengths = pad_sequences([[5, 6, 7], [8], [], [1, 2]], pad_id=9)
    assert padded.dtype == torch.long and lengths.dtype == torch.int64
    torch.testing.assert_close(padded, torch.tensor([[5, 6, 7], [8, 9, 9], [9, 9, 9], [1, 2, 9]]))
    torch.testing.assert_close(lengths, torch.tensor([3, 1, 0, 2]))


def test_pad_sequences_feature_tensors():
    seqs = [torch.ones(2, 3), torch.full((4, 3), 2.0)]
    padded, lengths = pad_sequences(seqs)
    assert padded.shape == (2, 4, 3) and padded.dtype == torch.float32
    torch.testing.assert_close(padded[0, 2:], torch.zeros(2, 3))
    torch.testing.assert_close(padded[1], torch.full((4, 3), 2.0))
    torch.testing.assert_close(lengths, torch.tensor([2, 4]))


@pytest.mark.parametrize("dtype", [torch.long, torch.float64, torch.bool])
def test_pad_sequences_keeps_dtype_and_pads_after_each_end(dtype):
    gen = torch.Generator().manual_seed(0)
    seqs = [(torch.randn(T, 2, generator=gen) * 10).to(dtype) for T in (3, 0, 5, 1)]
    pad = False if dtype == torch.bool else -100
    padded, lengths = pad_sequences(seqs, pad_id=pad)
    assert padded.shape == (4, 5, 2) and padded.dtype == dtype
    torch.testing.assert_close(lengths, torch.tensor([3, 0, 5, 1]))
    for b, seq in enumerate(seqs):
        torch.testing.assert_close(padded[b, : len(seq)], seq)
        assert (padded[b, len(seq) :] == pad).all()


def _lengths(n, seed=0):
    return torch.randint(1, 60, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize(("n", "batch_size"), [(1, 4), (37, 4), (1000, 8), (513, 1)])
def test_bucket_batches_cover_every_index_once(n, batch_size, shuffle):
    lengths = _lengths(n)
    batches = bucket_batches(lengths, batch_size, shuffle, torch.Generator().manual_seed(1))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_bucket_batches_unshuffled_is_sorted_by_length():
    lengths = _lengths(50)
    batches = bucket_batches(lengths, 6, shuffle=False)
    flat = [i for batch in batches for i in batch]
    assert flat == sorted(range(50), key=lambda i: (lengths[i], i))
    assert [len(b) for b in batches] == [6] * 8 + [2]


def test_bucket_batches_deterministic_by_seed_and_tight():
    lengths = _lengths(2000)
    first = bucket_batches(lengths, 8, True, torch.Generator().manual_seed(7))
    again = bucket_batches(lengths, 8, True, torch.Generator().manual_seed(7))
    other = bucket_batches(lengths, 8, True, torch.Generator().manual_seed(8))
    assert first == again
    assert first != other
    # Buckets group similar lengths: the mean spread within a batch is far below a random batch's.
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in first) / len(first)
    assert spread < 5


def test_bucket_batches_rejects_bad_batch_size():
    with pytest.raises(UserError, match="batch_size"):
        bucket_batches([1, 2, 3], 0, shuffle=False)
