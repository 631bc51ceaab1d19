"""The receiver benchmark in smoke mode: it still runs, and under a forged flood every
signed delivery is answered and committed (the figures themselves are not asserted)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("webhook")),
    reason="needs wrk and webhook (scripts/setup.sh installs them)",
)
def test_signed_deliveries_survive_the_flood(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_receiver.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    report = json.loads((tmp_path / "receiver-smoke.json").read_text())
    ours = [r for r in report["results"] if r["server"] == "edgehook"]
    assert len(ours) == 2
    for result in ours:
        assert result["signed_sent"] >= 1
        assert result["signed_ok"] == result["signed_sent"] == result["signed_committed"]
        assert result["flood_non_2xx"] == result["flood_requests"] > 0  # no forgery got 2xx
    assert "imports torch/wandb: no" in ours[-1]["notes"]
    assert (tmp_path / "receiver-smoke.md").read_text().startswith("# Receiver under")
