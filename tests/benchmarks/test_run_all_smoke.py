"""All benchmarks in smoke mode through benchmarks/run_all.py, as CI runs them: each runs,
the combined report has the machine, every headline figure and each benchmark's own
section; and the behaviour under load holds (every signed delivery answered and committed
during the floods, no forgery answered 2xx, no torch or wandb in the receiver, every sampled
job started). The figures themselves are not asserted: smoke runs are too short."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

pytestmark = pytest.mark.slow  # every benchmark in smoke mode: minutes

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (shutil.which("wrk") and shutil.which("webhook")),
    reason="needs wrk and webhook (scripts/setup.sh installs them)",
)
def test_all_benchmarks_in_smoke_mode_write_one_report(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "run_all.py"),
            "--smoke",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((tmp_path / "report-smoke.json").read_text())
    assert report["smoke"] is True
    assert {"cpu", "cores", "python", "torch", "peer"} <= set(report["machine"])
    # 21, plus accuracy's 3 rows for digits (a smoke run trains on no other set and measures
    # no memory), the predictor's 3 and the console's 2
    assert len(report["headline"]) == 29
    assert all(isinstance(r["value"], (int, float)) for r in report["headline"])

    ours = [r for r in report["receiver"]["results"] if r["server"] == "edgehook"]
    assert [r["flood"] for r in ours] == ["one address", "10,000 addresses", "the genuine address"]
    for result in ours:
        assert result["signed_sent"] >= 1
        assert result["signed_ok"] == result["signed_sent"] == result["signed_committed"]
        assert result["flood_non_2xx"] == result["flood_requests"] > 0  # no forgery got 2xx
    assert "imports torch/wandb: no" in ours[-1]["notes"]
    # A stranger's and a leaked token's forgeries, at 1 and 2 wrk threads, on both servers.
    sides = report["receiver"]["threads"]
    assert [(r["server"], r["threads"], r["flood"]) for r in sides[:4]] == [
        ("edgehook", threads, flood)
        for threads in (1, 2)
        for flood in ("stranger's forgeries", "leaked token")
    ]
    assert [r["server"] for r in sides[4:]] == ["adnanh/webhook"] * 4
    for result in sides:
        assert result["flood_non_2xx"] == result["flood_requests"] > 0  # every forgery refused
    for result in sides[:4]:
        assert result["signed_ok"] == result["signed_sent"] == result["signed_committed"] >= 1
    # Genuine deliveries where they used to be lost: every one answered 202 and committed.
    for genuine in report["receiver"]["genuine"]:
        assert genuine["accepted"] == genuine["committed"] == genuine["sent"] > 0, genuine
    assert report["queue"]["throughput"]["committed_jobs"] > 0
    assert report["queue"]["latency"]["samples"] == 5
    # The predictor: no request failed while the model was swapped under load.
    swaps = report["predictor"]["swaps"]
    assert swaps["failed"] == 0 and swaps["requests"] > 0
    assert swaps["served_by"] == ["model-0", "model-1"]

    text = (tmp_path / "report-smoke.md").read_text()
    assert text.startswith("# edgehook benchmarks") and "SMOKE" in text
    for section in ("## Machine", "## Headline figures", "## receiver", "## queue", "## predictor"):
        assert section in text
    assert "adnanh/webhook" in text  # the peer's figures from the same run
