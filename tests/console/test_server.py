"""The console's verifying child ends with the console, even one killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT

PARENT = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from console.server import exit_with_parent
context = multiprocessing.get_context("spawn")
pool = ProcessPoolExecutor(1, mp_context=context, initializer=exit_with_parent,
                           initargs=(os.getpid(),))
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended; its reaper may be slow


def test_the_verifying_child_ends_when_the_console_is_killed() -> None:
    # stderr: the orphaned resource tracker's warning about the pool's semaphores
    with subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          text=True) as parent:  # fmt: skip
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    try:
        while _alive(child):
            assert time.monotonic() < deadline, f"child {child} outlived the console"
            time.sleep(0.05)
    finally:
        if _alive(child):  # the failing case: leave no orphan behind
            os.kill(child, signal.SIGKILL)
