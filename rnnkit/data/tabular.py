"""Reading labelled text for classification: CSV, TSV, JSONL and SST-style `label sentence` lines.

What is here: `LabelledText` (one record with the place it came from), `read_labelled` (the format is
chosen by the file's extension), `read_texts` (the inputs of `predict`: the same formats with the label
optional, or plain lines), and `check_labels` (a validation or test label the training data never had).
What is not: tokenisation (tokenizers.py), audio manifests (audio.py) and anything about models.

Formats, by extension: `.csv` and `.tsv` have a header row and are read with pandas; `.jsonl` holds
one JSON object per line; every other file is SST-style, one `label sentence` per line (the label is
the first whitespace-separated field).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rnnkit.config import UserError
from rnnkit.data.text import json_objects, read_text

TABLE_SEPARATORS = {".csv": ",", ".tsv": "\t"}


@dataclass
class LabelledText:
    """One record: its text, its label (None where the input has none) and where it was read ("row 3")."""

    text: str
    label: str | None
    where: str


def file_format(path: str | Path) -> str:
    """`csv`, `tsv`, `jsonl` or `lines`, from the file's extension."""
    suffix = Path(path).suffix.lower()
    if suffix in TABLE_SEPARATORS:
        return suffix[1:]
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    return "lines"


def _read_table(path: Path, sep: str) -> pd.DataFrame:
    if not path.exists():
        raise UserError(f"{path}: no such file (expected a table with a header row)")
    try:
        # Every cell stays a string: labels such as "01" or "NA" are names, not numbers or missing values.
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8",
                           quoting=csv.QUOTE_MINIMAL)
    except pd.errors.EmptyDataError:
        raise UserError(f"{path}: the file is empty (expected a header row and one record per row)") from None
    except pd.errors.ParserError as e:
        raise UserError(f"{path}: not a valid {'TSV' if sep == chr(9) else 'CSV'} file: {e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 (byte offset {e.start}); expected a UTF-8 table") from None


def _column(frame: pd.DataFrame, name: str, path: Path, option: str) -> list[str]:
    if name not in frame.columns:
        found = ", ".join(repr(c) for c in frame.columns)
        raise UserError(f"{path}: no column '{name}' ({option}); the header has: {found}")
    return frame[name].tolist()


def _from_table(path: Path, sep: str, text_column: str, label_column: str | None,
                label_required: bool) -> list[LabelledText]:
    frame = _read_table(path, sep)
    texts = _column(frame, text_column, path, "--text-column")
    labels: list[str | None] = [None] * len(texts)
    if label_column is not None and (label_required or label_column in frame.columns):
        labels = list(_column(frame, label_column, path, "--label-column"))
    # Row 1 is the header, so record i sits on row i + 2 (as a spreadsheet numbers it).
    return [LabelledText(t, lab, f"row {i + 2}") for i, (t, lab) in enumerate(zip(texts, labels, strict=True))]


def _from_jsonl(path: Path, text_column: str, label_column: str | None, label_required: bool) -> list[LabelledText]:
    records = []
    for number, obj in json_objects(path, f'{{"{text_column}": ..., "{label_column}": ...}}'):
        if text_column not in obj:
            raise UserError(f"{path}: line {number}: no key '{text_column}' (--text-column); "
                            f"the object has: {', '.join(map(repr, obj)) or 'no keys'}")
        label = None
        if label_column is not None and (label_required or label_column in obj):
            if label_column not in obj:
                raise UserError(f"{path}: line {number}: no key '{label_column}' (--label-column); "
                                f"the object has: {', '.join(map(repr, obj))}")
            label = obj[label_column]
            if isinstance(label, bool) or not isinstance(label, str | int):
                raise UserError(f"{path}: line {number}: the label is {label!r}; expected a string or an integer")
            label = str(label)
        text = obj[text_column]
        if not isinstance(text, str):
            raise UserError(f"{path}: line {number}: '{text_column}' is {type(text).__name__}; expected a string")
        records.append(LabelledText(text, label, f"line {number}"))
    return records


def _from_lines(path: Path, with_labels: bool) -> list[LabelledText]:
    records = []
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        if with_labels:
            parts = line.strip().split(maxsplit=1)
            if len(parts) < 2:
                raise UserError(f"{path}: line {number}: found only {parts[0]!r}; expected 'label sentence' "
                                "(the label, a space, then the text)")
            records.append(LabelledText(parts[1], parts[0], f"line {number}"))
        else:
            records.append(LabelledText(line.strip(), None, f"line {number}"))
    return records


def _check_texts(records: list[LabelledText], path: Path, labelled: bool) -> list[LabelledText]:
    if not records:
        raise UserError(f"{path}: no records found (expected one text per row or line)")
    for r in records:
        if not r.text.strip():
            raise UserError(f"{path}: {r.where}: the text is empty; expected some text to classify")
        if labelled and (r.label is None or not r.label.strip()):
            raise UserError(f"{path}: {r.where}: the label is empty; expected a class name")
    return records


def _read(path: str | Path, text_column: str, label_column: str, labelled: bool) -> list[LabelledText]:
    """The records of a file in any format; `labelled` requires a label on every record."""
    path = Path(path)
    kind = file_format(path)
    if kind in ("csv", "tsv"):
        records = _from_table(path, TABLE_SEPARATORS["." + kind], text_column, label_column, labelled)
    elif kind == "jsonl":
        records = _from_jsonl(path, text_column, label_column, labelled)
    else:
        records = _from_lines(path, with_labels=labelled)
    return _check_texts(records, path, labelled=labelled)


def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[LabelledText]:
    """Read (text, label) records from a CSV, TSV, JSONL or SST-style file.

    Raises:
        UserError: a missing file or column (the columns found are listed), an empty text or label,
            malformed JSON; the message names the file and the row or line.
    """
    return _read(path, text_column, label_column, labelled=True)


def read_texts(path: str | Path, text_column: str = "text", label_column: str = "label") -> list[LabelledText]:
    """Texts to classify: CSV/TSV/JSONL with the text column (labels kept when present), else one per line."""
    return _read(path, text_column, label_column, labelled=False)


def texts_from_lines(lines: Iterable[str], source: str = "<stdin>") -> list[LabelledText]:
    """Texts given one per line (e.g. on standard input); blank lines are skipped."""
    records = [LabelledText(line.strip(), None, f"line {i}") for i, line in enumerate(lines, start=1) if line.strip()]
    if not records:
        raise UserError(f"{source}: no text found (expected one text per line)")
    return records


def check_labels(labels: Iterable[tuple[str, str]], known: list[str], path: str | Path) -> None:
    """Raise UserError for the first label (where, label) that is not among the training labels `known`."""
    allowed = set(known)
    for where, label in labels:
        if label not in allowed:
            shown = ", ".join(repr(k) for k in known[:20]) + (" ..." if len(known) > 20 else "")
            raise UserError(f"{path}: {where}: label {label!r} was not in the training data; "
                            f"the model knows: {shown}")
