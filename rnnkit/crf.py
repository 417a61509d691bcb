"""A linear-chain conditional random field over per-token scores, batched with masks.

What is here: `CRF`, which holds the transition scores between K tags (and from the start and to the
end of a sequence), and computes the log-partition with the forward algorithm, the score of a given
tag path, the negative log-likelihood to train on, and the best path with Viterbi; and
`allowed_transitions`, the moves a BIO or BIOES tag set permits. What is not: the emission scores
(the tagger in models/tagger.py computes them) and anything about tag names in files.

Shapes: emissions (B, T, K), tags (B, T), mask (B, T) bool with each row's true steps first (a
row's length is its count of True; every row has at least one).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# A transition the tag scheme forbids gets this score instead of -inf, so that sums stay finite.
FORBIDDEN = -1e4


def allowed_transitions(tags: list[str], scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """The transitions a BIO or BIOES tag set allows.

    Args:
        tags: the K tag names (`O`, `B-PER`, ...).
        scheme: `bio` or `bioes`.
    Returns:
        allowed (K, K) bool (from row tag to column tag), allowed_start (K,), allowed_end (K,).
    """
    if scheme not in ("bio", "bioes"):
        raise ValueError(f"scheme: expected 'bio' or 'bioes'; got {scheme!r}")

    def split(tag: str) -> tuple[str, str]:
        return ("O", "") if tag == "O" or "-" not in tag else (tag[0], tag[2:])

    parts = [split(t) for t in tags]
    K = len(tags)
    allowed = torch.zeros(K, K, dtype=torch.bool)
    start = torch.zeros(K, dtype=torch.bool)
    end = torch.zeros(K, dtype=torch.bool)
    inside = ("I", "E") if scheme == "bioes" else ("I",)
    for j, (p, kind) in enumerate(parts):
        start[j] = p in (("O", "B") if scheme == "bio" else ("O", "B", "S"))
        end[j] = scheme == "bio" or p in ("O", "E", "S")
        for i, (q, prev_kind) in enumerate(parts):
            if p in inside:
                # An inside (or end) tag continues an open entity of its own type.
                allowed[i, j] = q in ("B", "I") and prev_kind == kind
            else:
                # O, B and S begin afresh: under BIOES the previous entity must have been closed.
                allowed[i, j] = scheme == "bio" or q in ("O", "E", "S")
    return allowed, start, end


class CRF(nn.Module):
    """Linear-chain CRF: score(y) = start[y_1] + sum_t emit[t, y_t] + sum_t trans[y_{t-1}, y_t] + end[y_T].

    Args:
        num_tags: K.
        allowed: optional (K, K) bool; transitions marked False are scored FORBIDDEN (fixed, not learned).
        allowed_start, allowed_end: optional (K,) bool, the same for the first and the last tag.
    """

    def __init__(
        self,
        num_tags: int,
        allowed: Tensor | None = None,
        allowed_start: Tensor | None = None,
        allowed_end: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_tags, int) or num_tags < 1:
            raise ValueError(f"num_tags: expected an integer >= 1; got {num_tags!r}")
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))  # (K from, K to)
        self.start_transitions = nn.Parameter(torch.empty(num_tags))
        self.end_transitions = nn.Parameter(torch.empty(num_tags))
        for p in (self.transitions, self.start_transitions, self.end_transitions):
            nn.init.uniform_(p, -0.1, 0.1)
        K = num_tags
        for name, value, shape in (("allowed", allowed, (K, K)), ("allowed_start", allowed_start, (K,)),
                                   ("allowed_end", allowed_end, (K,))):
            if value is None:
                value = torch.ones(shape, dtype=torch.bool)
            elif tuple(value.shape) != shape:
                raise ValueError(f"{name}: expected shape {shape}; got {tuple(value.shape)}")
            # Buffers follow the module to its device; they are rebuilt from the tag set, not saved.
            self.register_buffer(f"_{name}", value.to(torch.bool), persistent=False)

    def extra_repr(self) -> str:
        return f"num_tags={self.num_tags}"

    def _scores(self) -> tuple[Tensor, Tensor, Tensor]:
        """Transition, start and end scores with the forbidden moves pinned to FORBIDDEN."""
        trans = self.transitions.masked_fill(~self._allowed, FORBIDDEN)
        start = self.start_transitions.masked_fill(~self._allowed_start, FORBIDDEN)
        end = self.end_transitions.masked_fill(~self._allowed_end, FORBIDDEN)
        return trans, start, end

    @staticmethod
    def _check(emissions: Tensor, mask: Tensor | None) -> Tensor:
        if emissions.dim() != 3:
            raise ValueError(f"emissions: expected shape (B, T, K); got {tuple(emissions.shape)}")
        B, T, _ = emissions.shape
        if mask is None:
            return torch.ones(B, T, dtype=torch.bool, device=emissions.device)
        if tuple(mask.shape) != (B, T):
            raise ValueError(f"mask: expected shape (B, T) = {(B, T)}; got {tuple(mask.shape)}")
        mask = mask.to(torch.bool)
        if T and not bool(mask[:, 0].all()):
            raise ValueError("mask: every row needs at least its first step (lengths >= 1)")
        return mask

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """log Z per row by the forward algorithm: (B,)."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        alpha = start + emissions[:, 0]  # (B, K)
        for t in range(1, emissions.shape[1]):
            # alpha'[j] = logsumexp_i(alpha[i] + trans[i, j]) + emit[t, j]
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans.unsqueeze(0), dim=1) + emissions[:, t]  # (B, K)
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    def path_score(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """The unnormalised score of the tag paths `tags` (B, T): (B,). Padding tags may hold any valid id."""
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        tags = tags.clamp(0, self.num_tags - 1)
        m = mask.to(emissions.dtype)
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)  # (B, T)
        score = start[tags[:, 0]] + (emit * m).sum(1)
        score = score + (trans[tags[:, :-1], tags[:, 1:]] * m[:, 1:]).sum(1)
        last = mask.sum(1) - 1  # (B,)
        return score + end[tags.gather(1, last.unsqueeze(1)).squeeze(1)]

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """Negative log-likelihood of `tags` per row: log Z - score(tags), (B,)."""
        return self.log_partition(emissions, mask) - self.path_score(emissions, tags, mask)

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None) -> Tensor:
        """The negative log-likelihood per row (B,), as `nll`."""
        return self.nll(emissions, tags, mask)

    @torch.no_grad()
    def viterbi(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The best tag path of each row.

        Returns:
            paths (B, T) int64 (0 past each row's end) and their scores (B,).
        """
        mask = self._check(emissions, mask)
        trans, start, end = self._scores()
        B, T, K = emissions.shape
        score = start + emissions[:, 0]  # (B, K)
        pointers = []
        for t in range(1, T):
            best, arg = (score.unsqueeze(2) + trans.unsqueeze(0)).max(dim=1)  # (B, K) each
            keep = mask[:, t].unsqueeze(1)
            score = torch.where(keep, best + emissions[:, t], score)
            # Past a row's end, each tag points to itself so that backtracking passes through unchanged.
            same = torch.arange(K, device=emissions.device).expand(B, K)
            pointers.append(torch.where(keep, arg, same))
        total, last = (score + end).max(dim=1)  # (B,)
        paths = [last]
        for ptr in reversed(pointers):
            last = ptr.gather(1, last.unsqueeze(1)).squeeze(1)
            paths.append(last)
        out = torch.stack(paths[::-1], dim=1)  # (B, T)
        return out.masked_fill(~mask, 0), total
