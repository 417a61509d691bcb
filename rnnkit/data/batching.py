"""Turning token ids into batches: a continuous stream for language models, padded buckets for sequences.

What is here: `stream_layout` and `StreamBatches` (the batch layout truncated BPTT needs: row b of every
chunk continues row b of the chunk before), `pad_sequences` and `bucket_batches` (length-bucketed
batches of separate sequences). What is not: tokenization (tokenizers.py), moving tensors to a device,
and anything about models or training.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from rnnkit.config import UserError


def stream_layout(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a token stream into `batch_size` contiguous rows, dropping the tail.

    Args:
        ids: (N,) token ids.
        batch_size: number of rows B.

    Returns:
        (B, M) with M = N // B; row b is ids[b*M:(b+1)*M].
    """
    ids = torch.as_tensor(ids)
    if ids.dim() != 1:
        raise ValueError(f"stream_layout expects a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
    if batch_size < 1:
        raise UserError(f"batch_size: found {batch_size}; expected an integer >= 1")
    row_len = ids.numel() // batch_size
    if row_len == 0:
        raise UserError(
            f"the text is too short: {ids.numel()} tokens cannot fill {batch_size} rows; "
            f"need at least {batch_size} tokens"
        )
    return ids[: batch_size * row_len].view(batch_size, row_len)  # (B, M)


class StreamBatches:
    """(inputs, targets) chunks of a token stream for truncated backpropagation through time.

    The stream is laid out as (B, M) by `stream_layout`; chunk k holds columns [k*bptt, k*bptt + t) as
    inputs and the same columns shifted by one as targets, with t = bptt except possibly in the last
    chunk. Positions 0..M-2 are inputs, so every one of the B*(M-1) targets is predicted once per epoch.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, bptt: int):
        """Lay out the stream.

        Args:
            ids: (N,) token ids.
            batch_size: rows per chunk (B).
            bptt: time steps per chunk (T).
        """
        if bptt < 1:
            raise UserError(f"bptt: found {bptt}; expected an integer >= 1")
        ids = torch.as_tensor(ids)
        if ids.dim() != 1:
            raise ValueError(f"StreamBatches expects a 1-D tensor of token ids, got shape {tuple(ids.shape)}")
        if batch_size < 1:
            raise UserError(f"batch_size: found {batch_size}; expected an integer >= 1")
        steps = ids.numel() // batch_size - 1
        if steps < bptt:
            raise UserError(
                f"the text is too short: {ids.numel()} tokens give {max(steps, 0)} steps per row with "
                f"batch_size {batch_size}, fewer than bptt {bptt}; need at least "
                f"{batch_size * (bptt + 1)} tokens (batch_size * (bptt + 1))"
            )
        self.data = stream_layout(ids.to(torch.long), batch_size)  # (B, M)
        self.batch_size = batch_size
        self.bptt = bptt
        self._steps = steps

    @property
    def num_tokens(self) -> int:
        """Targets predicted per epoch: B * (M - 1)."""
        return self.batch_size * self._steps

    def __len__(self) -> int:
        return -(-self._steps // self.bptt)

    def chunk(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One chunk.

        Args:
            index: chunk number in [0, len(self)).

        Returns:
            inputs (B, t) and targets (B, t), int64 and contiguous.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"chunk {index} is out of range for {len(self)} chunks")
        start = index * self.bptt
        t = min(self.bptt, self._steps - start)
        inputs = self.data[:, start : start + t].contiguous()  # (B, t)
        targets = self.data[:, start + 1 : start + 1 + t].contiguous()  # (B, t)
        return inputs, targets

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate from chunk `start` to the end (to resume an epoch part-way)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start chunk {start} is out of range for {len(self)} chunks")
        for index in range(start, len(self)):
            yield self.chunk(index)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)


def pad_sequences(
    seqs: Sequence[Sequence[int]] | Sequence[torch.Tensor], pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sequences of different lengths into one right-padded tensor.

    Args:
        seqs: B lists of ints, or B tensors of shape (T_b, *) sharing dtype and trailing shape.
        pad_id: value written after each sequence's end.

    Returns:
        padded (B, T, *) with T = max T_b (int64 for lists, the tensors' dtype otherwise), and
        lengths (B,) int64.
    """
    if len(seqs) == 0:
        raise ValueError("pad_sequences needs at least one sequence")
    tensors = [torch.as_tensor(s, dtype=None if isinstance(s, torch.Tensor) else torch.long) for s in seqs]
    lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64)
    return pad_sequence(tensors, batch_first=True, padding_value=pad_id), lengths  # (B, T, *)


def bucket_batches(
    lengths: Sequence[int],
    batch_size: int,
    shuffle: bool,
    generator: torch.Generator | None = None,
) -> list[list[int]]:
    """Group sequence indices into batches of similar length.

    Without shuffling, indices are sorted by length (ties by index) and cut into batches. With
    shuffling, a random permutation is cut into pools of 50 * batch_size, each pool is sorted by length
    and cut into batches, and the batch order is shuffled: batches stay tight in length while an epoch
    still varies.

    Args:
        lengths: length of each sequence (N entries).
        batch_size: indices per batch (the last batch of a pool may hold fewer).
        shuffle: randomise pools and batch order.
        generator: torch random generator; the same seed gives the same batches.

    Returns:
        Batches of indices; every index in [0, N) appears exactly once.
    """
    if batch_size < 1:
        raise UserError(f"batch_size: found {batch_size}; expected an integer >= 1")
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: (lengths[i], i))
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    perm = torch.randperm(n, generator=generator).tolist()
    pool_size = 50 * batch_size
    batches: list[list[int]] = []
    for p in range(0, n, pool_size):
        pool = sorted(perm[p : p + pool_size], key=lambda i: lengths[i])
        batches.extend(pool[i : i + batch_size] for i in range(0, len(pool), batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The random generator of one epoch's batch order: fixed by the run's seed and the epoch, so that a
    resumed run draws the same batches as an uninterrupted one."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


class BucketedSource:
    """Base of the batch sources over whole sequences (full BPTT): `lengths` (N,), batches of similar
    length in an order fixed by seed and epoch. Subclasses turn `order(epoch)` into tensors in `batches`."""

    stateful = False

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, seed: int = 0) -> None:
        self.lengths = list(lengths)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def order(self, epoch: int) -> list[list[int]]:
        """The epoch's batches as lists of sequence indices."""
        return bucket_batches(self.lengths, self.batch_size, self.shuffle, epoch_generator(self.seed, epoch))

