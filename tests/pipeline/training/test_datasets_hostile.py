"""Datasets as a hostile artifact would shape them (issue 21): labels bounded before any
class name is made, class names that are text, a .npz given directly."""

from __future__ import annotations

import os
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from core.errors import JobError
from pipeline.training.datasets import scan


def test_huge_labels_are_refused_in_one_line_without_allocating(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 10**9]))
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(JobError) as refused:
        scan(tmp_path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert str(refused.value) == (
        "d.npz: labels run from 0 to 1000000000; they must be 0..999 (the most classes)"
    )
    assert peak < 5 << 20 and time.perf_counter() - started < 5


def test_labels_beyond_the_listed_classes_are_refused(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz", x=np.zeros((2, 8, 8), np.uint8), y=np.array([0, 5]), classes=["a", "b"]
    )
    with pytest.raises(JobError, match=r"must be 0\.\.1 \(one per listed class\)"):
        scan(tmp_path)


def test_a_npz_file_is_a_dataset(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.array([0, 1, 0, 1]))
    source = scan(tmp_path / "d.npz")
    assert (source.layout, source.classes) == ("npz", ("0", "1"))


def test_a_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=f"^{tmp_path / 'nope'} does not exist$"):
        scan(tmp_path / "nope")


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        (b"caf\xe9", "contains a lone surrogate"),  # Latin-1, not UTF-8
        (b"red\x1b[31m", "contains the control character U+001B"),
    ],
)
def test_class_folders_must_be_text(name: bytes, problem: str, tmp_path: Path) -> None:
    from PIL import Image

    for folder in (b"ok", name):
        path = os.path.join(os.fsencode(tmp_path), folder)
        os.mkdir(path)
        Image.new("L", (8, 8)).save(os.fsdecode(os.path.join(path, b"a.png")))
    with pytest.raises(JobError) as refused:
        scan(tmp_path)
    assert str(refused.value).startswith("image-folder: the class folder ")
    assert problem in str(refused.value) and "rename it" in str(refused.value)


def test_npz_class_names_must_be_text(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "d.npz",
        x=np.zeros((2, 8, 8), np.uint8),
        y=np.array([0, 1]),
        classes=np.array(["a", "b\x07"]),
    )
    with pytest.raises(JobError, match=r"d\.npz: the class 'b\\x07' contains the control"):
        scan(tmp_path)


def test_a_fifo_among_the_images_is_passed_over_not_waited_on(tmp_path: Path) -> None:
    from PIL import Image

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.new("L", (8, 8)).save(tmp_path / folder / "1.png")
    os.mkfifo(tmp_path / "a" / "2.png")
    source = scan(tmp_path)
    assert source.classes == ("a", "b") and len(source.labels) == 2
