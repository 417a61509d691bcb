"""Reading event logs for recommendation: who touched which item, in order, and the leave-one-out split.

What is here: `Event` (one row: its group, item, time and place in the file), `read_events` (CSV/TSV with a
header, JSONL, or header-less `user item` lines as in SASRec's files; the format comes from the extension),
`histories` (each group's items in time order, file order breaking ties and standing in for a missing time
column), `leave_one_out` (each group's last event for test and the one before for validation, through
`hold_out(order="last-per-group")`), `ItemVocabulary` (opaque item ids to rows 1..V-1 of an embedding, with
their training counts) and `read_history_lines` (the inputs of `predict`: one history of item ids per line).
What is not: the model, the metrics or the batches (tasks/recommend.py).

Ids are opaque strings: "007" and "7" are different items. Times are numbers (e.g. Unix seconds) or dates
and times that pandas parses (ISO 8601 and the like); one column holds one kind.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rnnkit.config import UserError
from rnnkit.data.split import hold_out
from rnnkit.data.tabular import TABLE_SEPARATORS, _read_table, file_format
from rnnkit.data.text import json_objects, read_text
from rnnkit.io import read_json, write_json

ITEMS_FILE = "items.json"
PAD = 0  # row 0 of an item embedding is padding; items take rows 1..V-1


@dataclass(frozen=True)
class Event:
    """One interaction: the group (user, or session with --session-column), the item, the time (None without
    a time column), and where it was read ("row 3", "line 7")."""

    group: str
    item: str
    time: float | None
    where: str


# ------------------------------------------------------------------------------------------ reading


def _times(values: Sequence[str], path: Path, wheres: Sequence[str], column: str) -> list[float]:
    """A time column as floats: numbers as they are, else dates parsed by pandas (as seconds)."""
    series = pd.Series(list(values), dtype=object)
    numbers = pd.to_numeric(series, errors="coerce")
    if pd.notna(numbers.iloc[0]):  # the first row says which kind the column holds
        parsed, expected = numbers, "a number like the first row's"
    else:
        parsed = pd.to_datetime(series, errors="coerce", utc=True, format="mixed")
        expected = "a date/time such as 2018-05-01 12:00:00, like the first row's"
    bad = parsed.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise UserError(f"{path}: {wheres[i]}: time {values[i]!r} in column '{column}' (--time-column) does not "
                        f"parse; expected {expected}")
    if parsed is numbers:
        return numbers.astype(float).tolist()
    dates = parsed
    return (dates.astype("int64") / 1e9).tolist()


def _from_table(path: Path, sep: str, user_column: str, item_column: str, time_column: str | None,
                session_column: str | None) -> list[Event]:
    frame = _read_table(path, sep)
    group_column, group_option = ((session_column, "--session-column") if session_column
                                  else (user_column, "--user-column"))
    for name, option in ((group_column, group_option), (item_column, "--item-column"),
                         (time_column, "--time-column")):
        if name is not None and name not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise UserError(f"{path}: no column '{name}' ({option}); the header has: {found}")
    wheres = [f"row {i + 2}" for i in range(len(frame))]  # row 1 is the header
    groups, items = frame[group_column].tolist(), frame[item_column].tolist()
    times: list[float | None] = [None] * len(frame)
    if time_column is not None:
        for i, t in enumerate(frame[time_column].tolist()):
            if not t.strip():
                raise UserError(f"{path}: {wheres[i]}: no time in column '{time_column}' (--time-column)")
        times = list(_times(frame[time_column].tolist(), path, wheres, time_column))
    return [Event(str(g).strip(), str(it).strip(), t, w)
            for g, it, t, w in zip(groups, items, times, wheres, strict=True)]


def _from_jsonl(path: Path, user_column: str, item_column: str, time_column: str | None,
                session_column: str | None) -> list[Event]:
    group_column = session_column or user_column
    rows: list[tuple[str, str, str | None, str]] = []
    for number, obj in json_objects(path, f'{{"{group_column}": ..., "{item_column}": ...}}'):
        values = []
        for key, option in ((group_column, "--session-column" if session_column else "--user-column"),
                            (item_column, "--item-column"), (time_column, "--time-column")):
            if key is None:
                values.append(None)
                continue
            value = obj.get(key)
            if value is None or isinstance(value, bool | list | dict):
                what = "no key" if key not in obj else f"{type(value).__name__} under the key"
                raise UserError(f"{path}: line {number}: {what} '{key}' ({option}); expected a string or a number")
            values.append(str(value).strip())
        rows.append((values[0], values[1], values[2], f"line {number}"))
    times: list[float | None] = [None] * len(rows)
    if time_column is not None and rows:
        times = list(_times([r[2] for r in rows], path, [r[3] for r in rows], time_column))
    return [Event(g, it, t, w) for (g, it, _, w), t in zip(rows, times, strict=True)]


def _from_lines(path: Path) -> list[Event]:
    events = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            raise UserError(f"{path}: line {number}: found only {parts[0]!r}; expected 'user item' (a user id, a "
                            "space, an item id)")
        events.append(Event(parts[0], parts[1], None, f"line {number}"))
    return events


def read_events(path: str | Path, user_column: str = "user", item_column: str = "item",
                time_column: str | None = None, session_column: str | None = None) -> list[Event]:
    """The events of a file, in file order.

    `.csv`/`.tsv` files have a header row; `.jsonl` files hold one object per line; any other file holds
    header-less `user item` lines (further fields ignored). With `session_column` events are grouped by
    session rather than by user.

    Raises:
        UserError naming the file and row or line: a missing file, column or key, an empty item or group,
        a time that does not parse, a file without events.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected events: CSV/TSV with a header, JSONL, or 'user item' "
                        "lines)")
    kind = file_format(path)
    if kind in ("csv", "tsv"):
        events = _from_table(path, TABLE_SEPARATORS["." + kind], user_column, item_column, time_column,
                             session_column)
    elif kind == "jsonl":
        events = _from_jsonl(path, user_column, item_column, time_column, session_column)
    else:
        if time_column or session_column:
            option = "--time-column" if time_column else "--session-column"
            raise UserError(f"{path}: {option} needs a CSV, TSV or JSONL file; 'user item' lines have no columns")
        events = _from_lines(path)
    if not events:
        raise UserError(f"{path}: the file holds no events (expected one 'user item' per row or line)")
    for e in events:
        if not e.item:
            raise UserError(f"{path}: {e.where}: no item; expected an item id in column '{item_column}' "
                            "(--item-column)")
        if not e.group:
            column = session_column or user_column
            raise UserError(f"{path}: {e.where}: no user or session id in column '{column}'")
    return events


def histories(events: Iterable[Event]) -> dict[str, list[Event]]:
    """Each group's events in time order (file order breaks ties, and is the order without times), groups in
    the order they first appear."""
    groups: dict[str, list[Event]] = {}
    for e in events:
        groups.setdefault(e.group, []).append(e)
    for g, evs in groups.items():
        if evs[0].time is not None:
            groups[g] = sorted(evs, key=lambda e: e.time)  # stable: file order among equal times
    return groups


def leave_one_out(groups: dict[str, list[Event]], source: str = "the training data"
                  ) -> tuple[dict[str, list[Event]], dict[str, list[Event]], dict[str, list[Event]]]:
    """Split histories leave-one-out: (train, valid, test), each group -> its events.

    A group's last event is the test, given every earlier one; with that removed, the new last event is
    the validation, given every earlier one. A group of two events gives a test only, a group of one
    trains only. `valid` and `test` hold whole histories (the scored event last), as `evaluate` reads them.
    """
    flat = [e for evs in groups.values() for e in evs]
    key = {id(e): g for g, evs in groups.items() for e in evs}
    rest, tests = hold_out(flat, 0.5, "last-per-group", group=lambda e: key[id(e)], source=source, unit="events")
    try:
        train, valids = hold_out(rest, 0.5, "last-per-group", group=lambda e: key[id(e)], source=source,
                                 unit="events")
    except UserError:
        raise UserError(f"{source}: no user has three or more events, so none can spare one for validation "
                        "and one for test; give --valid") from None

    def grouped(events: Sequence[Event]) -> dict[str, list[Event]]:
        out: dict[str, list[Event]] = {}
        for e in events:
            out.setdefault(key[id(e)], []).append(e)
        return out

    train_groups = grouped(train)
    # The scored event comes last and every earlier event of the group before it.
    valid_groups = {g: groups[g][:-1] for g in grouped(valids)}
    test_groups = {g: groups[g] for g in grouped(tests)}
    return train_groups, valid_groups, test_groups


# --------------------------------------------------------------------------------------- vocabulary


class ItemVocabulary:
    """Item ids to embedding rows 1..V-1 (row 0 is padding), and each item's count in the training data.

    Args:
        items: the item ids in row order (row i + 1 holds items[i]).
        counts: how often each item occurs in the training histories (the popularity baseline, negative
            sampling); zeros when not given.
    """

    def __init__(self, items: Sequence[str], counts: Sequence[int] | None = None) -> None:
        self.items = list(items)
        self.index = {item: i + 1 for i, item in enumerate(self.items)}
        if len(self.index) != len(self.items):
            raise ValueError("items: every item id must be distinct")
        self.counts = np.zeros(len(self.items) + 1, dtype=np.int64)
        if counts is not None:
            self.counts[1:] = np.asarray(counts, dtype=np.int64)

    @classmethod
    def fit(cls, groups: dict[str, list[Event]], counted: dict[str, list[Event]]) -> ItemVocabulary:
        """Every item of `groups` (most frequent in `counted` first, then by first appearance), with its
        count in `counted` (the training part)."""
        order: dict[str, int] = {}
        for evs in groups.values():
            for e in evs:
                order.setdefault(e.item, len(order))
        counts: dict[str, int] = dict.fromkeys(order, 0)
        for evs in counted.values():
            for e in evs:
                counts[e.item] += 1
        items = sorted(order, key=lambda it: (-counts[it], order[it]))
        return cls(items, [counts[it] for it in items])

    @property
    def size(self) -> int:
        """V: the rows of an item embedding, padding included."""
        return len(self.items) + 1

    def ids(self, items: Iterable[str]) -> tuple[list[int], int]:
        """The rows of known items, in order, and how many unknown ones were skipped."""
        found, unknown = [], 0
        for it in items:
            row = self.index.get(it)
            if row is None:
                unknown += 1
            else:
                found.append(row)
        return found, unknown

    def save(self, run_dir: Path) -> None:
        write_json(run_dir / ITEMS_FILE, {"items": self.items, "counts": self.counts[1:].tolist()})

    @classmethod
    def load(cls, run_dir: Path) -> ItemVocabulary:
        path = run_dir / ITEMS_FILE
        if not path.is_file():
            raise UserError(f"{run_dir}: no {ITEMS_FILE}; the run directory is incomplete")
        data = read_json(path)
        return cls(data["items"], data["counts"])


def read_history_lines(lines: Iterable[str]) -> list[list[str]]:
    """The inputs of `predict`: one history of item ids per line, separated by spaces (blank lines give
    empty histories, which the most popular items answer)."""
    return [line.split() for line in lines]
