"""Holding out validation data when no --valid file is given: one function, three named orders.

What is here: `hold_out`, which every task calls to split its training records. What is not: reading
the records (the readers beside this file) or deciding how much to hold out (`--valid-fraction`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

from rnnkit.config import UserError

T = TypeVar("T")

HOLDOUT_ORDERS = ("tail", "random", "last-per-group")


def hold_out(
    items: Sequence[T],
    fraction: float,
    order: str = "tail",
    *,
    seed: int = 0,
    minimum: int = 1,
    group: Callable[[T], Hashable] | None = None,
    source: str = "the training data",
    unit: str = "records",
) -> tuple[Sequence[T], Sequence[T]]:
    """Split `items` into (kept for training, held out for validation).

    Orders:
        tail: the last max(minimum, round(fraction * n)) items (text, sentences, time series: the end is
            what comes after the rest).
        random: as many items, chosen by a generator seeded with `seed`; both parts keep the input order.
        last-per-group: the last item of every group (`group(item)` names it) that has two or more items:
            leave-one-out, as for the histories of users.

    A string is split as a sequence of characters, and the parts are strings again.

    Raises:
        UserError naming `source` when too few items would be left to train on (fewer than two).
    """
    if not 0.0 < fraction < 1.0:
        raise UserError(f"--valid-fraction: found {fraction}; expected a number in (0, 1)")
    n = len(items)
    if order == "last-per-group":
        if group is None:
            raise ValueError("hold_out(order='last-per-group') needs `group`")
        last: dict[Hashable, int] = {}
        size: dict[Hashable, int] = {}
        for i, item in enumerate(items):
            key = group(item)
            last[key] = i
            size[key] = size.get(key, 0) + 1
        held_index = sorted(i for key, i in last.items() if size[key] >= 2)
        if not held_index:
            raise UserError(f"{source}: no group has two or more {unit}, so none can spare one for validation; "
                            "give --valid")
        chosen = set(held_index)
        return ([x for i, x in enumerate(items) if i not in chosen], [items[i] for i in held_index])
    if order not in HOLDOUT_ORDERS:
        raise ValueError(f"hold-out order {order!r}: expected one of {', '.join(HOLDOUT_ORDERS)}")
    count = max(minimum, round(n * fraction))
    if n - count < 2:
        raise UserError(f"{source}: {n} {unit} cannot spare {count} for validation and keep two or more to train "
                        "on; give --valid or more data")
    if order == "tail":
        return items[:n - count], items[n - count:]
    index = list(range(n))
    random.Random(seed).shuffle(index)
    chosen = set(index[:count])
    return _pick(items, [i for i in range(n) if i not in chosen]), _pick(items, sorted(chosen))


def _pick(items: Sequence[Any], index: list[int]) -> Any:
    if isinstance(items, str):
        return "".join(items[i] for i in index)
    return [items[i] for i in index]
