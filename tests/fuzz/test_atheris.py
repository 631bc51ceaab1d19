"""Runs each atheris target (tests/fuzz/atheris_targets.py) for a bounded time: CI gives
each EDGEHOOK_ATHERIS_SECONDS (default 10); a longer local run is the documented command
in the targets' docstring. A crash or a broken property fails the test with libFuzzer's
report."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # coverage-guided fuzzing for a fixed time

SECONDS = int(os.environ.get("EDGEHOOK_ATHERIS_SECONDS", "10"))


@pytest.mark.parametrize(
    ("module", "target"),
    [
        ("atheris_targets", "payload"),
        ("atheris_targets", "args"),
        ("atheris_targets", "signature"),
        ("atheris_files", "model_dir"),
        ("atheris_files", "dataset"),
    ],
)
def test_fuzz_target_runs_clean_for_a_bounded_time(
    module: str, target: str, tmp_path: Path
) -> None:
    # Through a shell that forks: Linux carries a process's peak RSS across exec, so a
    # child exec'd straight from this (torch-laden) pytest process starts with pytest's
    # peak and libFuzzer's -rss_limit_mb fires at once; a fork of the small shell does not.
    result = subprocess.run(
        [
            "/bin/sh",
            "-c",
            '"$@"; exit $?',
            "sh",
            sys.executable,
            "-m",
            f"tests.fuzz.{module}",
            target,
            str(tmp_path / "corpus"),
            f"-max_total_time={SECONDS}",
            "-rss_limit_mb=1024",
            "-print_final_stats=1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    runs = [
        line for line in output.splitlines() if line.startswith("stat::number_of_executed_units")
    ]
    # the file targets make a directory tree per run: fewer runs, each deeper
    least = 200 if module == "atheris_files" else 1000
    assert runs and int(runs[0].split(":")[-1]) > least, output[-2000:]
