"""The recommender's fused softmax loss: its score product made whole against made in blocks of items.

One (N, E) x (E, V) product with V in the tens of thousands writes an output far larger than the cache;
`TiedSoftmaxLoss` makes it in blocks of `SCORE_BLOCK` items instead. This prints, on one thread, the product
both ways (medians and min-max over repeats, GFLOP/s) and a whole training step of the loss (forward and
backward) at Games' sizes.

    python benchmarks/tied_softmax.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_common import cpu_name, repeat_seconds

from rnnkit.models.recommender import SCORE_BLOCK, TiedSoftmaxLoss


def timed(fn, repeats: int) -> list[float]:
    return repeat_seconds(fn, repeats)[1]


def show(name: str, seconds: list[float], flop: float) -> None:
    med = statistics.median(seconds)
    print(f"{name:<34} {med * 1000:8.1f} ms ({min(seconds) * 1000:.1f}-{max(seconds) * 1000:.1f})  "
          f"{flop / med / 1e9:6.1f} GFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--positions", type=int, default=646, help="N: positions in a batch (Games: about 646)")
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--items", type=int, default=23_715)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    N, E, V = args.positions, args.embed, args.items
    q, w, b = torch.randn(N, E), torch.randn(V, E) * 0.1, torch.randn(V)
    targets = torch.randint(0, V, (N,))
    flop = 2.0 * N * E * V

    def blocked() -> None:
        for s in range(0, V, SCORE_BLOCK):
            torch.addmm(b[s:s + SCORE_BLOCK], q, w[s:s + SCORE_BLOCK].t())

    print(f"{cpu_name()}, {args.threads} thread(s); N={N} E={E} V={V}, blocks of {SCORE_BLOCK}")
    show("scores, one product", timed(lambda: torch.addmm(b, q, w.t()), args.repeats), flop)
    show("scores, in blocks", timed(blocked, args.repeats), flop)
    qg, wg, bg = (t.clone().requires_grad_() for t in (q, w, b))
    show("loss forward + backward", timed(lambda: TiedSoftmaxLoss.apply(qg, wg, bg, targets).sum().backward(),
                                          args.repeats), 3 * flop)


if __name__ == "__main__":
    main()
