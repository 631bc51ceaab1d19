"""The queue benchmark in smoke mode: it runs, deliveries are committed and every sampled
job's child started (the figures themselves are not asserted)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (scripts/setup.sh installs it)")
def test_queue_benchmark_runs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_queue.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    report = json.loads((tmp_path / "queue-smoke.json").read_text())
    assert report["throughput"]["committed_jobs"] > 0
    assert report["latency"]["samples"] == 5
    assert (tmp_path / "queue-smoke.md").read_text().startswith("# Queue:")
