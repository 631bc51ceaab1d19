"""Runs each atheris target (tests/fuzz/atheris_targets.py) for a bounded time: CI gives
each EDGEHOOK_ATHERIS_SECONDS (default 10); a longer local run is the documented command
in the targets' docstring. A crash or a broken property fails the test with libFuzzer's
report."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("atheris")

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # coverage-guided fuzzing for a fixed time

SECONDS = int(os.environ.get("EDGEHOOK_ATHERIS_SECONDS", "10"))
LEAST, LEAST_FILES = 1000, 200  # executions a target must reach in SECONDS


TARGETS = [
    ("atheris_targets", "payload"),
    ("atheris_targets", "args"),
    ("atheris_targets", "signature"),
    ("atheris_files", "model_dir"),
    ("atheris_files", "dataset"),
]


@pytest.fixture(scope="module")
def fuzzing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.Popen[str]]]:
    """Every target started at once: each runs for its fixed wall time, so together they
    take SECONDS rather than five times it (each gets a share of the cores: fewer runs)."""
    started = {}
    for module, target in TARGETS:
        corpus = tmp_path_factory.mktemp(target) / "corpus"
        # Through a shell that forks: Linux carries a process's peak RSS across exec, so a
        # child exec'd straight from this (torch-laden) pytest process starts with
        # pytest's peak and libFuzzer's -rss_limit_mb fires at once; a fork does not.
        started[target] = subprocess.Popen(
            [
                "/bin/sh",
                "-c",
                '"$@"; exit $?',
                "sh",
                sys.executable,
                "-m",
                f"tests.fuzz.{module}",
                target,
                str(corpus),
                f"-max_total_time={SECONDS}",
                "-rss_limit_mb=1024",
                "-print_final_stats=1",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    yield started
    for process in started.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize(("module", "target"), TARGETS)
def test_fuzz_target_runs_clean_for_a_bounded_time(
    module: str, target: str, fuzzing: dict[str, subprocess.Popen[str]]
) -> None:
    output, _ = fuzzing[target].communicate(timeout=SECONDS + 120)
    assert fuzzing[target].returncode == 0, output[-4000:]
    runs = [
        line for line in output.splitlines() if line.startswith("stat::number_of_executed_units")
    ]
    # the file targets make a directory tree per run: fewer runs, each deeper
    least = LEAST_FILES if module == "atheris_files" else LEAST
    assert runs and int(runs[0].split(":")[-1]) > least, output[-2000:]
