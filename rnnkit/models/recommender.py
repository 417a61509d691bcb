"""Next-item recommendation: a recurrent network over the items a person touched, scoring every item.

What is here: the losses of sequential recommendation on scores (`full_softmax_loss`, `sampled_softmax_loss`,
`bpr_max_loss`, `top1_max_loss`, as GRU4Rec (Hidasi & Karatzoglou 2018) defines the last two) and
`Recommender`: an item embedding (row 0 is padding), dropout on it, a `Recurrent` stack of any cell,
dropout on its outputs, a projection to the embedding size, optionally the latest item's own embedding added
(a residual, item-to-item path), and scores against the item embeddings themselves (tied) plus a bias per item.
Its `loss` trains on every position of a batch of histories; its validation figures are hit@10 and NDCG@10
of a held-out next item over the whole catalogue.
What is not: reading event logs and item vocabularies (data/recommend.py), the metrics of `evaluate`
(metrics.py) and serving sessions (serve/).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.layers import Recurrent
from rnnkit.models.base import LossOutput, SequenceDropout, check_choice

LOSSES = ("ce", "sampled", "bpr-max", "top1-max")
PAD_ITEM = 0  # row 0 of the item embedding: padding, never scored as an answer
VALID_K = 10  # the cut-off of the validation figures


# ------------------------------------------------------------------------------------------- losses


def full_softmax_loss(scores: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy over the whole catalogue: scores (N, V), targets (N,) -> (N,) losses."""
    return F.cross_entropy(scores, targets, reduction="none")


SCORE_BLOCK = 1024  # items per block of the fused loss's score product


class TiedSoftmaxLoss(torch.autograd.Function):
    """`full_softmax_loss(queries @ weight.T + bias, targets)` in fewer passes over the (N, V) scores.

    The scores are the largest tensor of a training step by far; autograd's composition reads and writes them
    some eight times (the bias add, log-softmax and its backward, the zero-filled gradient of the target
    pick). Here the forward turns the scores into exp(score - row max) in place and keeps them with their row
    sums, and the backward scales them into the softmax times the incoming gradient in place, subtracts the
    gradient at the targets and multiplies the result into the three gradients. The kept tensor is
    overwritten, so the graph can be run backward once only.

    The scores live in blocks of `SCORE_BLOCK` items, each made with its bias added while it is in cache and
    kept as it is: one (N, E) x (E, V) product with V in the tens of thousands writes an output far larger than
    the cache, and BLAS runs it at about half the speed of the same work in blocks (single thread, AVX2: 40
    against 70 GFLOP/s for N=646, E=256, V=23,715). The target's own score and its part of the gradients are
    taken apart from the blocks, from its rows of the weight.

    forward(queries (N, E), weight (V, E), bias (V,), targets (N,) in [0, V)) -> (N,) losses.
    """

    @staticmethod
    def forward(ctx: Any, queries: Tensor, weight: Tensor, bias: Tensor, targets: Tensor) -> Tensor:
        V = weight.shape[0]
        blocks = [torch.addmm(bias[start:start + SCORE_BLOCK], queries, weight[start:start + SCORE_BLOCK].t())
                  for start in range(0, V, SCORE_BLOCK)]  # (N, <=SCORE_BLOCK) each
        target = (queries * weight[targets]).sum(dim=1) + bias[targets]  # (N,)
        top = torch.stack([block.amax(dim=1) for block in blocks], dim=1).amax(dim=1)  # (N,)
        total = sum(block.sub_(top.unsqueeze(1)).exp_().sum(dim=1) for block in blocks)  # (N,)
        ctx.save_for_backward(queries, weight, total, targets, *blocks)  # blocks: exp(score - max), in place
        return total.log() + top - target

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        queries, weight, total, targets, *blocks = ctx.saved_tensors
        scale = (grad / total).unsqueeze(1)  # (N, 1)
        d_queries = -grad.unsqueeze(1) * weight[targets]  # (N, E): the target's part, -grad * its row
        d_weight = torch.empty_like(weight)  # (V, E)
        d_bias = weight.new_empty(weight.shape[0])  # (V,)
        start = 0
        for block in blocks:
            end = start + block.shape[1]
            d = block.mul_(scale)  # (N, c) grad * softmax, in place
            d_queries.addmm_(d, weight[start:end])
            torch.mm(d.t(), queries, out=d_weight[start:end])
            torch.sum(d, dim=0, out=d_bias[start:end])
            start = end
        d_weight.index_add_(0, targets, -grad.unsqueeze(1) * queries)
        d_bias.index_add_(0, targets, -grad)
        return d_queries, d_weight, d_bias, None


def tied_softmax_loss(queries: Tensor, weight: Tensor, bias: Tensor, targets: Tensor,
                      label_smoothing: float = 0.0) -> Tensor:
    """`F.cross_entropy(queries @ weight.T + bias, targets, label_smoothing=...)` per row, (N,) losses, made
    through `TiedSoftmaxLoss`.

    Smoothing takes share `label_smoothing` of the target's mass and spreads it evenly over the V items, which
    adds `label_smoothing * (s_target - mean_j s_j)` to the plain cross-entropy; the mean score of a row is its
    query against the mean item vector plus the mean bias, so the term costs one (N, E) product.
    """
    loss = TiedSoftmaxLoss.apply(queries, weight, bias, targets)  # (N,)
    if not label_smoothing:
        return loss
    target = (queries * weight[targets]).sum(dim=1) + bias[targets]  # (N,)
    mean = queries @ weight.mean(dim=0) + bias.mean()  # (N,)
    return loss + label_smoothing * (target - mean)


def sampled_softmax_loss(positive: Tensor, negative: Tensor, log_q_positive: Tensor, log_q_negative: Tensor,
                         collision: Tensor) -> Tensor:
    """Softmax over the target and a sample of negatives, with the logQ correction (Bengio & Senecal 2008;
    Yi et al. 2019): every candidate's score minus the log of its probability of being drawn.

    Args:
        positive: (N,) the target's score.
        negative: (N, S) the negatives' scores.
        log_q_positive: (N,) log sampling probability of each target.
        log_q_negative: (S,) log sampling probability of each negative.
        collision: (N, S) True where a negative is the row's own target (left out).
    Returns:
        (N,) losses.
    """
    logits = torch.cat([(positive - log_q_positive).unsqueeze(1), negative - log_q_negative], dim=1)  # (N, 1+S)
    logits = logits.masked_fill(F.pad(collision, (1, 0)), float("-inf"))
    return -logits.log_softmax(dim=1)[:, 0]


def _negative_weights(negative: Tensor, collision: Tensor) -> Tensor:
    """GRU4Rec's softmax over the negative scores (collisions get no weight): (N, S)."""
    return negative.masked_fill(collision, float("-inf")).softmax(dim=1)


def bpr_max_loss(positive: Tensor, negative: Tensor, collision: Tensor, score_reg: float = 1.0) -> Tensor:
    """BPR-max (Hidasi & Karatzoglou 2018, eq. 10 with the score regularisation of eq. 11):
    -log sum_j s_j sigmoid(r_i - r_j) + lambda sum_j s_j r_j^2, with s = softmax over the negatives' scores.

    Args: positive (N,), negative (N, S), collision (N, S) as in `sampled_softmax_loss`; score_reg: lambda.
    Returns: (N,) losses.
    """
    weights = _negative_weights(negative, collision)  # (N, S)
    ranked = (weights * torch.sigmoid(positive.unsqueeze(1) - negative)).sum(dim=1)  # (N,)
    return -torch.log(ranked + 1e-24) + score_reg * (weights * negative.pow(2)).sum(dim=1)


def top1_max_loss(positive: Tensor, negative: Tensor, collision: Tensor) -> Tensor:
    """TOP1-max (Hidasi & Karatzoglou 2018, eq. 9): sum_j s_j (sigmoid(r_j - r_i) + sigmoid(r_j^2)).

    Args: positive (N,), negative (N, S), collision (N, S) as in `sampled_softmax_loss`.
    Returns: (N,) losses.
    """
    weights = _negative_weights(negative, collision)  # (N, S)
    return (weights * (torch.sigmoid(negative - positive.unsqueeze(1)) + torch.sigmoid(negative.pow(2)))).sum(dim=1)


# -------------------------------------------------------------------------------------------- model


class Recommender(nn.Module):
    """A history of item ids in, a score for every item as the next one out.

    Args:
        num_items: V, the catalogue size including the padding row 0 (items are 1..V-1).
        embedding_size: E.
        hidden_size: H.
        num_layers: L.
        cell: any cell name `Recurrent` takes.
        dropout: between recurrent layers.
        embedding_dropout: on the item embeddings read as inputs.
        output_dropout: on the recurrent outputs before scoring.
        loss: `ce` (softmax over every item), `sampled` (softmax over the batch's targets and popularity-drawn
            negatives, with the logQ correction), `bpr-max` or `top1-max` (over the same negatives).
        num_negatives: S, the popularity-drawn negatives of the sampled losses (besides the batch's own targets).
        popularity: (V,) item counts in the training data; they drive the sampling (and the logQ correction).
        sample_alpha: the negatives are drawn with probability proportional to count ** alpha.
        batch_negatives: the batch's distinct targets join the drawn negatives (False: the drawn ones alone,
            as SASRec's uniform negatives with `sample_alpha=0`).
        score_reg: BPR-max's score regularisation lambda.
        residual: the query after each event is the projected recurrent output plus that event's own item
            embedding (as it was read, dropout included), so an item scores by its likeness to the latest item
            as well as by the state. The state's projection is then always a learnt map, whatever the sizes.
        label_smoothing: `ce` only: this share of each target's mass is spread evenly over the catalogue (as
            `F.cross_entropy`'s option), so an item the training data holds rarely or never is not driven
            without bound below the rest. Validation losses are not smoothed.
        monitor: the validation figure that keeps the best weights: `full` (NDCG@10 over the catalogue) or
            `sampled` (NDCG@10 against the validation batches' `negatives`, SASRec's protocol).
        fused, recurrent_options: passed to `Recurrent`.
    """

    def __init__(
        self,
        num_items: int,
        embedding_size: int = 64,
        hidden_size: int = 64,
        num_layers: int = 1,
        cell: str = "gru",
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
        output_dropout: float = 0.0,
        loss: str = "ce",
        num_negatives: int = 1024,
        popularity: Tensor | None = None,
        sample_alpha: float = 0.75,
        batch_negatives: bool = True,
        score_reg: float = 1.0,
        residual: bool = False,
        label_smoothing: float = 0.0,
        monitor: str = "full",
        fused: bool | None = None,
        recurrent_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_choice("loss", loss, LOSSES)
        if num_items < 2:
            raise ValueError(f"num_items: expected at least 2 (padding and one item); got {num_items}")
        if num_negatives < 1:
            raise ValueError(f"num_negatives: expected an integer >= 1; got {num_negatives}")
        self.num_items = num_items
        self.loss_name = loss
        self.num_negatives = num_negatives
        self.sample_alpha = float(sample_alpha)
        self.batch_negatives = bool(batch_negatives)
        check_choice("monitor", monitor, ("full", "sampled"))
        self.monitor = ("ndcg@10", "max") if monitor == "full" else ("sampled_ndcg@10", "max")
        self.score_reg = float(score_reg)
        if not 0 <= label_smoothing < 1:
            raise ValueError(f"label_smoothing: expected a number in [0, 1); got {label_smoothing}")
        if label_smoothing and loss != "ce":
            raise ValueError(f"label_smoothing: smooths the full softmax (loss 'ce'); got loss {loss!r}")
        self.label_smoothing = float(label_smoothing)
        self.item_embedding = nn.Embedding(num_items, embedding_size, padding_idx=PAD_ITEM)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / math.sqrt(embedding_size))
        with torch.no_grad():
            self.item_embedding.weight[PAD_ITEM].zero_()
        self.input_dropout = SequenceDropout(embedding_dropout)
        self.rnn = Recurrent(cell, embedding_size, hidden_size, num_layers=num_layers, dropout=dropout, fused=fused,
                             **(recurrent_options or {}))
        self.output_dropout = SequenceDropout(output_dropout)
        self.residual = bool(residual)
        # A residual model's scores need the latest item as well as the state (`logits_from_state`).
        self.logits_need_last_input = self.residual
        self.projection = (nn.Linear(hidden_size, embedding_size) if hidden_size != embedding_size or self.residual
                           else nn.Identity())
        self.item_bias = nn.Parameter(torch.zeros(num_items))
        counts = torch.ones(num_items) if popularity is None else torch.as_tensor(popularity, dtype=torch.float32)
        if counts.shape != (num_items,):
            raise ValueError(f"popularity: expected shape ({num_items},); got {tuple(counts.shape)}")
        # Sampling distribution of the negatives (a buffer: it travels with the model and its weights).
        q = counts.clamp(min=0).pow(self.sample_alpha)
        q[PAD_ITEM] = 0
        self.register_buffer("sample_probs", q / q.sum())
        pad = torch.zeros(num_items, dtype=torch.bool)
        pad[PAD_ITEM] = True
        self.register_buffer("pad_mask", pad, persistent=False)

    # ----------------------------------------------------------------------------------- forward

    def encode(self, items: Tensor, lengths: Tensor | None = None, state: Any = None) -> tuple[Tensor, Any]:
        """The query vector after every step: items (B, T) -> (B, T, E), and the recurrent state."""
        x = self.input_dropout(self.item_embedding(items))  # (B, T, E)
        outputs, state = self.rnn(x, state, lengths)  # (B, T, H)
        queries = self.projection(self.output_dropout(outputs))  # (B, T, E)
        return (queries + x if self.residual else queries), state

    def score(self, queries: Tensor) -> Tensor:
        """Scores of every item for query vectors (..., E) -> (..., V); the padding row scores -inf."""
        scores = queries @ self.item_embedding.weight.t() + self.item_bias  # (..., V)
        return scores.masked_fill(self.pad_mask, float("-inf"))

    def forward(self, items: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Scores of every item after each row's last step: items (B, T), lengths (B,) -> (B, V)."""
        queries, _ = self.encode(items, lengths)  # (B, T, E)
        B, T = items.shape
        last = (lengths.to(items.device) - 1) if lengths is not None else torch.full((B,), T - 1, device=items.device)
        return self.score(queries[torch.arange(B, device=items.device), last])  # (B, V)

    def step(self, items: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """One event per row: items (B,) and the state -> scores (B, V) and the new state (serving sessions)."""
        x = self.item_embedding(items)  # (B, E)
        h, state = self.rnn.step(x, state)  # (B, H)
        query = self.projection(h)  # (B, E)
        return self.score(query + x if self.residual else query), state

    def prefill(self, items: Tensor, state: Any = None) -> tuple[Tensor, Any]:
        """Several events per row at once: items (B, T) and the state -> scores after the last (B, V) and the
        new state (a session reading a long history)."""
        queries, state = self.encode(items, None, state)  # (B, T, E)
        return self.score(queries[:, -1]), state

    def logits_from_state(self, state: Any, last_input: Tensor | None = None) -> Tensor:
        """The scores (B, V) a state gives: from the last layer's output, which is its hidden state, and for a
        residual model the item last read (`last_input` (B,), required then)."""
        h = state if isinstance(state, Tensor) else state[0]  # (L, B, H)
        query = self.projection(h[-1])  # (B, E)
        if self.residual:
            if last_input is None:
                raise ValueError("logits_from_state: a residual recommender needs the item last read (last_input)")
            query = query + self.item_embedding(last_input)
        return self.score(query)

    # ------------------------------------------------------------------------------------ losses

    def _negatives(self, targets: Tensor) -> Tensor:
        """The negatives of a batch: its distinct targets (unless `batch_negatives` is off) and S items drawn by
        popularity ** alpha."""
        drawn = torch.multinomial(self.sample_probs, self.num_negatives, replacement=True)  # (S,)
        return torch.cat([torch.unique(targets), drawn]) if self.batch_negatives else drawn

    def sequence_loss(self, queries: Tensor, targets: Tensor) -> Tensor:
        """The training loss of query vectors (N, E) against their target items (N,): (N,) losses."""
        if self.loss_name == "ce":  # over the items alone: the padding row never enters the softmax
            return tied_softmax_loss(queries, self.item_embedding.weight[1:], self.item_bias[1:], targets - 1,
                                     self.label_smoothing)
        negatives = self._negatives(targets)  # (S,)
        weights = self.item_embedding.weight
        positive = (queries * weights[targets]).sum(dim=1) + self.item_bias[targets]  # (N,)
        negative = queries @ weights[negatives].t() + self.item_bias[negatives]  # (N, S)
        collision = targets.unsqueeze(1) == negatives.unsqueeze(0)  # (N, S)
        if self.loss_name == "sampled":
            log_q = self.sample_probs.clamp(min=1e-12).log()
            return sampled_softmax_loss(positive, negative, log_q[targets], log_q[negatives], collision)
        if self.loss_name == "bpr-max":
            return bpr_max_loss(positive, negative, collision, self.score_reg)
        return top1_max_loss(positive, negative, collision)

    def loss(self, batch: dict[str, Tensor], state: Any = None) -> LossOutput:
        """Training: the loss of the next item at every position. Validation (a batch with `valid_targets`):
        cross-entropy of the held-out next item and its rank over the catalogue, seen items excluded.

        Args:
            batch: `items` (B, T), `lengths` (B,), and either `targets` (B, T) (the next item at each step,
                0 past a row's end) or `valid_targets` (B,) with `seen` (B, T2) (items to exclude, 0 padded).
            state: unused (every history starts from a zero state).
        """
        items, lengths = batch["items"], batch["lengths"]
        queries, _ = self.encode(items, lengths)  # (B, T, E)
        if "valid_targets" in batch:
            return self._validation(queries, lengths, batch["valid_targets"], batch["seen"], batch.get("negatives"))
        targets = batch["targets"]  # (B, T)
        mask = targets != PAD_ITEM  # (B, T)
        losses = self.sequence_loss(queries[mask], targets[mask])  # (N,)
        loss = losses.mean()
        return LossOutput(loss=loss, count=int(mask.sum()), stats={"loss_sum": float(losses.detach().sum())})

    def _validation(self, queries: Tensor, lengths: Tensor, targets: Tensor, seen: Tensor,
                    negatives: Tensor | None = None) -> LossOutput:
        B = queries.shape[0]
        rows = torch.arange(B, device=queries.device)
        scores = self.score(queries[rows, lengths.to(queries.device) - 1])  # (B, V)
        loss_sum = float(F.cross_entropy(scores, targets, reduction="sum"))
        target_scores = scores[rows, targets].clone()  # (B,)
        stats: dict[str, float] = {}
        if negatives is not None:  # SASRec's protocol: the target against its row's sample of untouched items
            sampled_rank = (scores.gather(1, negatives) > target_scores.unsqueeze(1)).sum(dim=1)  # (B,)
            stats.update(_hits_and_ndcg(sampled_rank, "sampled_"))
        scores.scatter_(1, seen, float("-inf"))
        scores[rows, targets] = target_scores
        rank = (scores > target_scores.unsqueeze(1)).sum(dim=1)  # (B,) items ranked above the target
        return LossOutput(loss=torch.tensor(loss_sum / B), count=B,
                          stats={"loss_sum": loss_sum, **_hits_and_ndcg(rank), **stats})

    @staticmethod
    def metrics(stats: dict[str, float], count: int) -> dict[str, float]:
        """Mean loss; with validation batches, hit@10 and NDCG@10 over the whole catalogue."""
        n = max(count, 1)
        figures = {"loss": stats["loss_sum"] / n}
        for prefix in ("", "sampled_"):
            if f"{prefix}hits" in stats:
                figures.update({f"{prefix}hit@10": stats[f"{prefix}hits"] / n,
                                f"{prefix}ndcg@10": stats[f"{prefix}ndcg"] / n})
        return figures


def _hits_and_ndcg(rank: Tensor, prefix: str = "") -> dict[str, float]:
    """Sums of hit@10 and NDCG@10 over a batch, given each case's count of items ranked above its target."""
    hits = rank < VALID_K
    ndcg = torch.where(hits, 1.0 / torch.log2(rank.double() + 2), torch.zeros_like(rank, dtype=torch.float64))
    return {f"{prefix}hits": float(hits.sum()), f"{prefix}ndcg": float(ndcg.sum())}
