"""Reading text corpora.

What is here: `read_text` (strict UTF-8 reading with precise error messages). What is not: holding out
validation text (split.py), tokenization (tokenizers.py), batching (batching.py) and writing files (rnnkit.io).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

from rnnkit.config import UserError

_BOM = b"\xef\xbb\xbf"


def read_text(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file, strip a byte-order mark and turn "\\r\\n" into "\\n".

    Args:
        path: the file to read.

    Returns:
        The decoded text, never empty or whitespace-only.

    Raises:
        UserError: the path is missing or a directory, the file is empty or whitespace-only, or its
            bytes are not valid UTF-8 (the message gives byte offset, line, column and the byte).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file (expected a UTF-8 text file)")
    if p.is_dir():
        raise UserError(f"{p}: is a directory (expected a UTF-8 text file)")
    try:
        raw = p.read_bytes()
    except OSError as err:
        reason = err.strerror or err
        raise UserError(f"{p}: cannot be read ({reason}); expected a readable UTF-8 text file") from err
    start = len(_BOM) if raw.startswith(_BOM) else 0
    try:
        text = raw[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        raise UserError(_utf8_error_message(p, raw, start + err.start)) from None
    if not text:
        raise UserError(f"{p}: the file is empty (expected UTF-8 text)")
    if not text.strip():
        raise UserError(f"{p}: the file is empty: it holds only whitespace (expected UTF-8 text)")
    return text.replace("\r\n", "\n")


def _utf8_error_message(path: Path, raw: bytes, offset: int) -> str:
    """Describe the first invalid UTF-8 byte at `offset` of `raw` by byte offset, line and column."""
    before = raw[:offset]
    line_start = before.rfind(b"\n") + 1
    line = before.count(b"\n") + 1
    # Everything before the first invalid byte decodes, so the column can be counted in characters.
    column = len(before[line_start:].decode("utf-8", errors="replace").lstrip("\ufeff")) + 1
    return (
        f"{path}: invalid UTF-8 at byte offset {offset} (line {line}, column {column}): "
        f"found byte 0x{raw[offset]:02x}; expected UTF-8 text"
    )


def json_objects(path: str | os.PathLike[str], example: str) -> Iterator[tuple[int, dict]]:
    """The JSON objects of a JSONL file with their 1-based line numbers, blank lines skipped.

    A line that is not valid JSON, or not an object, is a UserError naming the file and line; `example` shows
    the object expected (e.g. '{"text": ..., "label": ...}').
    """
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number}: not valid JSON (column {e.colno}): {e.msg}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}: line {number}: expected a JSON object like {example}; "
                            f"found {type(obj).__name__}")
        yield number, obj
