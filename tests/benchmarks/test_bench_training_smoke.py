"""The training benchmark in smoke mode: it runs and reports every figure (none asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
FIGURES = (
    "qat_over_fp32_time",
    "int8_throughput_gain_b64",
    "int8_latency_ratio_b1",
    "int8_size_ratio",
    "accuracy_gap_points",
)


def test_training_benchmark_runs(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_training.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    report = json.loads((tmp_path / "training-smoke.json").read_text())
    assert all(isinstance(report[name], (int, float)) for name in FIGURES)
