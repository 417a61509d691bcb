"""Tests for rnnkit.data.text: strict UTF-8 reading, holdout split, atomic writes."""

import pytest

from rnnkit.config import UserError
from rnnkit.data.split import hold_out
from rnnkit.data.text import read_text
from rnnkit.io import atomic_write_text


def test_read_text_roundtrip_strips_bom_and_crlf(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfhello\r\nw\xc3\xb6rld\r\n")
    assert read_text(path) == "hello\nwörld\n"


def test_read_text_keeps_unicode_and_lone_newlines(tmp_path):
    path = tmp_path / "u.txt"
    text = "日本語\n\nemoji 🙂 tab\tend"
    path.write_text(text, encoding="utf-8")
    assert read_text(str(path)) == text


def test_read_text_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(UserError, match="nope.txt: no such file"):
        read_text(path)


def test_read_text_directory(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        read_text(tmp_path)


@pytest.mark.parametrize("content", [b"", b"   \n\t\r\n  "])
def test_read_text_empty_or_whitespace(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=r"empty\.txt: the file is empty.*expected UTF-8 text"):
        read_text(path)


@pytest.mark.parametrize(
    ("content", "offset", "line", "column", "byte"),
    [
        (b"ab\xffcd", 2, 1, 3, "0xff"),
        (b"first line\nsecond\n\xc3\xa9x\x80 tail", 21, 3, 3, "0x80"),
        (b"\xef\xbb\xbfok\n\xfe", 6, 2, 1, "0xfe"),
        # A truncated multi-byte sequence is reported at its lead byte.
        (b"line\n\xe6\x97", 5, 2, 1, "0xe6"),
    ],
)
def test_read_text_invalid_utf8_names_offset_line_column(tmp_path, content, offset, line, column, byte):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        read_text(path)
    message = str(info.value)
    assert "bad.txt" in message
    assert f"byte offset {offset} " in message
    assert f"line {line}, column {column}" in message
    assert f"found byte {byte}" in message


@pytest.mark.parametrize(("fraction", "holdout_len"), [(0.05, 5), (0.1, 10), (0.001, 1), (0.5, 50)])
def test_hold_out_tail_of_text(fraction, holdout_len):
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    train, holdout = hold_out(text, fraction, "tail")
    assert len(holdout) == holdout_len
    assert train + holdout == text
    assert holdout == text[len(text) - holdout_len :]


@pytest.mark.parametrize("fraction", [-0.1, 0.0, 1.0, 1.5])
def test_hold_out_rejects_bad_fraction(fraction):
    with pytest.raises(UserError, match="fraction"):
        hold_out("some text", fraction)


def test_hold_out_random_is_seeded_and_keeps_order():
    items = list(range(40))
    keep, held = hold_out(items, 0.25, "random", seed=3)
    assert len(held) == 10 and sorted(keep + held) == items
    assert keep == sorted(keep) and held == sorted(held)
    assert hold_out(items, 0.25, "random", seed=3) == (keep, held)
    assert hold_out(items, 0.25, "random", seed=4)[1] != held


def test_hold_out_minimum_and_too_few():
    assert len(hold_out(list(range(100)), 0.05, "tail", minimum=12)[1]) == 12
    with pytest.raises(UserError, match=r"pairs\.tsv: 2 pairs cannot spare 1"):
        hold_out([1, 2], 0.4, "random", source="pairs.tsv", unit="pairs")


def test_hold_out_last_per_group_leaves_one_out():
    events = [("ann", 1), ("bob", 2), ("ann", 3), ("cid", 4), ("bob", 5), ("ann", 6)]
    keep, held = hold_out(events, 0.1, "last-per-group", group=lambda e: e[0])
    assert held == [("bob", 5), ("ann", 6)]  # cid has one event: nothing to hold out
    assert keep == [("ann", 1), ("bob", 2), ("ann", 3), ("cid", 4)]


def test_atomic_write_text_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old", encoding="utf-8")
    atomic_write_text(path, "new ✓\n")
    assert path.read_text(encoding="utf-8") == "new ✓\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
