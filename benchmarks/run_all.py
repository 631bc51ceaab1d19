"""Run every benchmark in one go and write one dated report: JSON plus a Markdown table of
the headline figures against their targets, the machine they ran on, and each benchmark's
own report (with the peer's figures from the same run).

    .venv/bin/python benchmarks/run_all.py            # full run, ~3 min on 2 cores;
                                                       # writes benchmarks/reports/report-DATE.*
    .venv/bin/python benchmarks/run_all.py --smoke    # what CI runs: short, to benchmarks/results

Targets come from the issues; a ratio is measured against its peer in the same run, since
these machines are shared and absolute numbers move.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("receiver", "queue", "training", "accuracy", "predictor", "console", "store")


def machine() -> dict[str, Any]:
    def first(path: str, key: str) -> str:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return "unknown"

    def version(argv: list[str]) -> str:
        if shutil.which(argv[0]) is None:
            return "not installed"
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return (
            (done.stdout or done.stderr).strip().splitlines()[0]
            if done.stdout or done.stderr
            else "?"
        )

    def package(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    gpu = "none"
    if shutil.which("nvidia-smi"):
        gpu = version(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"])
    return {
        "cpu": first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory": first("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": package("torch"),
        "wandb": package("wandb"),
        "gpu": gpu,
        "peer": version(["webhook", "-version"]),
        "wrk": version(["wrk", "--version"]),
    }


def run(name: str, smoke: bool, out: Path) -> dict[str, Any]:
    argv = [sys.executable, str(ROOT / "benchmarks" / f"bench_{name}.py"), "--out", str(out)]
    started = time.monotonic()
    done = subprocess.run([*argv, *(["--smoke"] if smoke else [])], capture_output=True, text=True)
    seconds = round(time.monotonic() - started, 1)
    if done.returncode != 0:
        raise SystemExit(f"bench_{name}.py failed ({done.returncode}):\n{done.stderr[-3000:]}")
    (report,) = out.glob(f"{name}-*.json")
    (markdown,) = out.glob(f"{name}-*.md")
    return {"seconds": seconds, "figures": json.loads(report.read_text()), "md": markdown}


def headline(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """(figure, value, target, met) rows for the table."""
    rows: list[dict[str, Any]] = []

    def row(figure: str, value: float | None, target: str, met: bool | None) -> None:
        rows.append({"figure": figure, "value": value, "target": target, "met": met})

    receiver = results["receiver"]["figures"]["results"]
    by = {(r["server"], r["flood"]): r for r in receiver}
    for flood in ("one address", "10,000 addresses", "the genuine address"):
        ours = by.get(("edgehook", flood))
        peer = by.get(("adnanh/webhook", flood))
        if ours and peer:
            ratio = round(ours["rejections_per_s"] / peer["rejections_per_s"], 2)
            row(f"forged rejections/s vs adnanh/webhook ({flood})", ratio, ">= 0.5x", ratio >= 0.5)
    ours_all = [r for r in receiver if r["server"] == "edgehook"]
    ok = sum(r["signed_ok"] for r in ours_all)
    sent = sum(r["signed_sent"] for r in ours_all)
    committed = sum(r["signed_committed"] or 0 for r in ours_all)
    row(
        "signed deliveries answered 202 and committed during floods",
        committed,
        f"{sent}/{sent}",
        ok == sent == committed,
    )
    p99 = max(r["latency_p99_ms"] for r in ours_all)
    row("signed delivery p99 under flood (ms)", p99, "<= 50", p99 <= 50)
    rss = max(r["peak_rss_mb"] for r in ours_all)
    row("receiver RSS (MB)", rss, "<= 60", rss <= 60)
    _baseline, burst, held = results["receiver"]["figures"]["genuine"]
    row(
        "genuine burst from one address at 30/s: 202 and committed",
        burst["committed"],
        f"{burst['sent']}/{burst['sent']}",
        burst["accepted"] == burst["committed"] == burst["sent"],
    )
    row(
        "genuine deliveries with 1,000 connections held: 202 and committed",
        held["committed"],
        f"{held['sent']}/{held['sent']}",
        held["accepted"] == held["committed"] == held["sent"],
    )
    row(
        "genuine delivery with 1,000 connections held, max (ms)",
        held["latency_max_ms"],
        "<= 2000",
        held["latency_max_ms"] <= 2000,
    )
    row("receiver RSS with 1,000 connections (MB)", held["rss_mb"], "< 80", held["rss_mb"] < 80)

    queue = results["queue"]["figures"]
    rate = queue["throughput"]["committed_per_s"]
    row("durable deliveries committed/s", rate, ">= 1000", rate >= 1000)
    row(
        "commit -> child start p50 (ms)",
        queue["latency"]["p50_ms"],
        "<= 100",
        queue["latency"]["p50_ms"] <= 100,
    )
    row(
        "commit -> child start p99 (ms)",
        queue["latency"]["p99_ms"],
        "<= 250",
        queue["latency"]["p99_ms"] <= 250,
    )
    worker = queue["latency"]["worker_rss_idle_mb"]
    row("worker RSS idle (MB)", worker, "<= 60", worker <= 60)

    training = results["training"]["figures"]
    t = training
    row(
        "QAT / fp32 training time",
        t["qat_over_fp32_time"],
        "<= 1.5",
        t["qat_over_fp32_time"] <= 1.5,
    )
    row(
        "int8 / fp32 throughput, batch 64",
        t["int8_throughput_gain_b64"],
        ">= 2",
        t["int8_throughput_gain_b64"] >= 2,
    )
    row(
        "int8 / fp32 latency, batch 1",
        t["int8_latency_ratio_b1"],
        "<= 1.0",
        t["int8_latency_ratio_b1"] <= 1.0,
    )
    row("int8 / fp32 model size", t["int8_size_ratio"], "<= 0.3", t["int8_size_ratio"] <= 0.3)
    row(
        "int8 accuracy gap (points)",
        t["accuracy_gap_points"],
        "<= 1",
        t["accuracy_gap_points"] <= 1,
    )
    row(
        "int8 accuracy gap, hard set, worst of seeds (points)",
        t["hard_gap_points"],
        "<= 1",
        t["hard_gap_points"] <= 1,
    )
    accuracy = results["accuracy"]["figures"]
    for name, floor in (("digits", 0.98), ("photos", 0.95)):
        if name not in accuracy:  # a smoke run trains on digits only
            continue
        f = accuracy[name]
        ours = f["edgehook"]["test_accuracy_int8"]
        row(f"{name}: int8 test accuracy (real digits)", ours, f">= {floor}", ours >= floor)
        row(
            f"{name}: points below the fp32 reference",
            f["gap_points"],
            "<= 1",
            f["gap_points"] <= 1,
        )
        row(f"{name}: wall time / reference", f["time_ratio"], "<= 2", f["time_ratio"] <= 2)
    if "memory" in accuracy:  # not in a smoke run
        ratio = accuracy["memory"]["ratio"]
        row("training peak RSS at 4x the images", ratio, "<= 1.2x", ratio <= 1.2)
    predictor = results["predictor"]["figures"]
    overhead = predictor["overhead_p50_ms"]
    row("predictor HTTP overhead at p50, batch 1 (ms)", overhead, "<= 1", overhead <= 1)
    swaps = predictor["swaps"]
    row(
        f"predictor requests failed during {swaps['swaps']} swaps under load",
        swaps["failed"],
        "0",
        swaps["failed"] == 0,
    )
    slowest = swaps["install_to_serving_ms"]["max_ms"]
    row(
        "predictor: install -> serving the new model, max (ms)", slowest, "<= 2000", slowest <= 2000
    )
    console = results["console"]["figures"]
    worst = console["worst_p95_ms"]
    row("console: first page of each list and filter, worst p95 (ms)", worst, "<= 150",
        worst <= 150)  # fmt: skip
    row("console RSS (MB)", console["peak_rss_mb"], "< 80", console["peak_rss_mb"] < 80)
    claim = results["store"]["figures"]["postgresql"]["commit_to_claim_p99_ms"]
    row("store: PostgreSQL commit -> claim p99, NOTIFY (ms)", claim, "<= 100", claim <= 100)
    return rows


def markdown(
    when: str,
    smoke: bool,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    results: dict[str, dict[str, Any]],
) -> str:
    lines = [
        f"# edgehook benchmarks, {when}"
        + (" (SMOKE: short runs, figures not meaningful)" if smoke else ""),
        "",
        "Reproduce: `.venv/bin/python benchmarks/run_all.py`" + (" --smoke" if smoke else ""),
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *[f"| {k} | {v} |" for k, v in info.items()],
        "",
        "## Headline figures",
        "",
        "| figure | value | target | met |",
        "| --- | ---: | --- | --- |",
    ]
    for r in rows:
        met = "yes" if r["met"] else "**NO**"
        lines.append(f"| {r['figure']} | {r['value']} | {r['target']} | {met} |")
    for name in BENCHMARKS:
        body = results[name]["md"].read_text().strip().splitlines()
        lines += ["", f"## {name} ({results[name]['seconds']} s)", ""]
        lines += [("#" + line) if line.startswith("#") else line for line in body]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="short runs (CI)")
    parser.add_argument("--out", type=Path, help="default: benchmarks/reports (smoke: results)")
    args = parser.parse_args()
    out = args.out or ROOT / "benchmarks" / ("results" if args.smoke else "reports")
    out.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    info = machine()
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="edgehook-bench-") as tmp:
        for name in BENCHMARKS:
            print(f"== bench_{name}.py{' --smoke' if args.smoke else ''}", flush=True)
            results[name] = run(name, args.smoke, Path(tmp) / name)
        rows = headline(results)
        stem = "report-smoke" if args.smoke else f"report-{when[:10]}"
        report = {
            "when": when,
            "smoke": args.smoke,
            "machine": info,
            "headline": rows,
            **{name: results[name]["figures"] for name in BENCHMARKS},
            "seconds": {name: results[name]["seconds"] for name in BENCHMARKS},
        }
        (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{stem}.md").write_text(markdown(when, args.smoke, info, rows, results))
    for r in rows:
        print(
            f"{'ok  ' if r['met'] else 'MISS'} {r['figure']}: {r['value']} (target {r['target']})"
        )
    print(f"wrote {out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
