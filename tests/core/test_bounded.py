"""core/bounded.py: files read with bounds, JSON with depth and finite numbers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core import bounded
from core.names import label_problem, printable


def test_only_regular_files_within_their_size_are_read(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"1234")
    assert bounded.read_bytes(tmp_path / "ok", 4) == b"1234"
    with pytest.raises(bounded.Unreadable, match=r"^ok is larger than 3 bytes$"):
        bounded.read_bytes(tmp_path / "ok", 3)
    os.mkfifo(tmp_path / "fifo")  # a plain open() would wait for a writer forever
    with pytest.raises(bounded.Unreadable, match=r"^fifo is not a regular file$"):
        bounded.read_bytes(tmp_path / "fifo", 10)
    (tmp_path / "dir").mkdir()
    with pytest.raises(bounded.Unreadable, match=r"^dir is a directory$"):
        bounded.read_bytes(tmp_path / "dir", 10)
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(bounded.Unreadable, match=r"^zero is not a regular file$"):
        bounded.read_bytes(tmp_path / "zero", 10)


def test_links_out_of_the_directory_are_refused(tmp_path: Path) -> None:
    (tmp_path / "outside").write_text("x")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "in").write_text("y")
    (tmp_path / "model" / "link").symlink_to(tmp_path / "outside")
    (tmp_path / "model" / "near").symlink_to("in")
    inside = tmp_path / "model"
    assert bounded.read_bytes(inside / "near", 10, inside=inside) == b"y"
    with pytest.raises(bounded.Unreadable, match="link is a link to somewhere outside model"):
        bounded.read_bytes(inside / "link", 10, inside=inside)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (b"[" * 65 + b"]" * 65, "x nests deeper than 64 levels"),
        (b'{"a": NaN}', "x holds NaN, which is not a JSON number"),
        (b'{"a": -Infinity}', "x holds -Infinity, which is not a JSON number"),
        (b'{"a": 1e999}', "x holds the number 1e999, out of range"),
        (b"{", "x is not JSON"),
    ],
)
def test_json_is_bounded_and_finite(text: bytes, problem: str) -> None:
    with pytest.raises(bounded.Unreadable) as refused:
        bounded.loads(text, "x")
    assert str(refused.value) == problem


def test_brackets_inside_strings_do_not_count() -> None:
    assert bounded.loads(b'["' + b"[" * 1000 + b'\\"["]', "x") == ["[" * 1000 + '"[']


def test_names_are_text_and_printed_escaped() -> None:
    assert label_problem("cat") is None
    assert label_problem("caf\udce9") == "contains a lone surrogate (not valid Unicode text)"
    assert label_problem("a\u2028b") == "contains a line separator"
    assert label_problem("x" * 201) == "is longer than 200 characters"
    assert printable("red\x1b[31m\udce9") == "red\\x1b[31m\\udce9"
