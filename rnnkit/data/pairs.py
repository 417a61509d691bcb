"""Reading parallel text: one `source<TAB>target` pair per line, as translation corpora are shipped.

What is here: `Pair` and `read_pairs` (strict UTF-8 through `read_text`; columns after the second are
ignored, e.g. Tatoeba's attribution; blank lines are skipped) and `read_sources` (the inputs of
`predict`: one source per line, the first column when a line holds tabs). What is not: tokenization
(tokenizers.py) and batching (batching.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from rnnkit.config import UserError
from rnnkit.data.text import read_text


@dataclass(frozen=True)
class Pair:
    """A source text, its target text and the line they came from (1-based)."""

    source: str
    target: str
    line: int


def read_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Read `source<TAB>target` lines.

    Raises:
        UserError: the file cannot be read as UTF-8, a non-blank line has no tab, or a source or target
            is empty (the message names the file, the line and the column).
    """
    pairs = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        columns = line.split("\t")
        if len(columns) < 2:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise UserError(f"{path}, line {number}: found no tab in {shown!r}; expected source<TAB>target")
        source, target = columns[0].strip(), columns[1].strip()
        for column, (name, text) in enumerate((("source", source), ("target", target)), start=1):
            if not text:
                raise UserError(f"{path}, line {number}, column {column}: the {name} is empty; expected some text")
        pairs.append(Pair(source, target, number))
    if not pairs:
        raise UserError(f"{path}: no pairs found; expected lines of source<TAB>target")
    return pairs


def read_sources(text: str) -> list[str]:
    """The inputs of `predict`: one per line (first column of a tabbed line); blank lines stay blank."""
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line opens no new input
    return [line.split("\t")[0].strip() for line in lines]
