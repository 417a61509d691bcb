"""Files: atomic writes and the run directory's small JSON helpers.

What is here: `atomic_write` and `atomic_write_text` (temporary file in the same folder, then a rename, so a
crash or a full disk never leaves half a file), `write_json` and `read_json` (with messages that say what is
wrong with a file), `write_output` (standard output or an atomic file). What is not: what a run directory
holds and the checks done when loading one (checkpoint.py), readers of data files (data/).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from rnnkit.config import UserError


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write bytes (or text as UTF-8) through a temporary file in the same folder, then rename it in place.

    A crash or a full disk never leaves a half-written file, and what was there stays until the new
    file is complete. Creates the parent folder if needed.

    Returns:
        The destination path.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write text as UTF-8 atomically (see `atomic_write`)."""
    return atomic_write(path, text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file rnnkit wrote; a missing, damaged or non-UTF-8 file raises UserError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                        "expected the JSON file rnnkit wrote") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory; expected a JSON file") from None


def write_output(path: str | os.PathLike[str], text: str) -> None:
    """Write answers to standard output ("-") or atomically to a file."""
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        atomic_write_text(path, text)
