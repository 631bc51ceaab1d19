"""Pull mode's cost and speed: the time from an alias move in W&B to the job's child
starting on the device (a real `edgehook worker`, the watcher polling the W&B-compatible
fake with the real wandb SDK), and the W&B requests a device makes per hour for 10
watched aliases.

    .venv/bin/python benchmarks/bench_watch.py            # 10 s interval, 5 moves (~1 min)
    .venv/bin/python benchmarks/bench_watch.py --smoke    # 1 s interval, 2 moves

The move-to-start time is the wait until the next poll (uniform over the interval plus
its 0-10% jitter) plus the processing after it (resolve, commit, the worker's pick-up,
the child's start), measured here; at the default 60 s interval the wait dominates, and
the figure for it is that wait plus the processing measured.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import arguments, write  # noqa: E402

RULE = """
[artifacts]
source = "wandb"

[worker]
poll_s = 0.05

[[rules]]
name = "on-move"
event = "ADD_ARTIFACT_ALIAS"
alias = "production"
action = "command"
command = [{python}, "-c", "import time; print('started', time.time())"]
"""


def main() -> int:
    args = arguments(__doc__)
    interval, moves = (1.0, 2) if args.smoke else (10.0, 5)

    from core.config import load_config
    from core.store import open_store
    from edgehook.init import run_init
    from pipeline.watch import Watcher, wandb_resolver
    from tests.fakes.wandb_server import FakeWandb

    tmp = Path(tempfile.mkdtemp(prefix="bench-watch-"))
    figures: dict[str, Any] = {"interval_s": interval, "moves": moves}
    try:
        with FakeWandb() as fake:
            for i in range(10):
                fake.add(f"ds{i}", {"a.txt": b"0"}, ["production"])
            os.environ.update(
                {
                    "WANDB_BASE_URL": fake.url,
                    "WANDB_SILENT": "true",
                    "WANDB_ERROR_REPORTING": "false",
                    "WANDB_CACHE_DIR": str(tmp / "wandb-cache"),
                }
            )
            run_init(tmp / "device")
            config_path = tmp / "device" / "edgehook.toml"
            watched = ", ".join(f'"team/proj/ds{i}:production"' for i in range(10))
            config_path.write_text(
                config_path.read_text()
                + RULE.format(python=json.dumps(sys.executable))
                + f'\n[watch]\nartifacts = [{watched}]\non_first_sight = "record"\n'
            )
            config = load_config(config_path, {}, cwd=tmp / "device")
            # The benchmark's own interval (the config's minimum is 10 s; --smoke goes below).
            config = replace(config, watch=replace(config.watch, interval_s=interval))
            lines: list[tuple[str, dict[str, Any]]] = []
            watcher = Watcher(config, wandb_resolver("k" * 40), lambda k, **f: lines.append((k, f)))
            watcher.poll()  # first sight: recorded, nothing queued
            fake.operations.clear()
            polls_before = 3
            for _ in range(polls_before):
                watcher.poll()
            figures["graphql_requests_per_poll_10_aliases"] = len(fake.operations) / polls_before
            worker_log = (tmp / "worker.log").open("wb")
            worker = subprocess.Popen(
                [sys.executable, "-m", "edgehook", "--config", str(config_path), "worker"],
                cwd=tmp / "device", stdout=worker_log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )  # fmt: skip
            stop = threading.Event()
            loop = threading.Thread(target=watcher.run, args=(stop,))
            loop.start()
            samples = []
            rng = random.Random(0)
            try:
                for n in range(moves):
                    time.sleep(interval * rng.uniform(0.1, 1.0))  # anywhere in the interval
                    moved_at = time.time()
                    fake.add("ds0", {"a.txt": str(n + 1).encode()}, ["production"])
                    samples.append(_await_start(config, moved_at, n + 1, interval))
            finally:
                stop.set()
                loop.join()
                worker.terminate()
                worker.wait(timeout=30)
                worker_log.close()
            conn = open_store(config.store_path)
            jobs = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
            conn.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    figures["jobs"] = jobs
    figures["samples"] = samples
    total = [s["total_s"] for s in samples]
    processing = [s["processing_s"] for s in samples]
    figures["move_to_start_s"] = {
        "mean": round(statistics.mean(total), 2),
        "max": round(max(total), 2),
    }
    figures["processing_s"] = {
        "median": round(statistics.median(processing), 3),
        "max": round(max(processing), 3),
    }
    default = 60.0
    figures["at_default_interval_s"] = {
        "mean": round(default * 1.05 / 2 + statistics.median(processing), 1),
        "max": round(default * 1.1 + max(processing), 1),
    }
    per_poll = figures["graphql_requests_per_poll_10_aliases"]
    figures["requests_per_hour_10_aliases"] = round(per_poll * 3600 / (default * 1.05))
    return report(figures, args)


def _await_start(config: Any, moved_at: float, n: int, interval: float) -> dict[str, float]:
    """Wait for the job the move queued to start its child; the move-to-start split."""
    from core.store import open_store

    deadline = time.monotonic() + interval * 3 + 60
    while time.monotonic() < deadline:
        conn = open_store(config.store_path)
        row = conn.execute(
            "SELECT jobs.id, events.received_at FROM jobs JOIN events ON events.id = "
            "jobs.event_id WHERE events.version_string = ?",
            (f"team/proj/ds0:v{n}",),
        ).fetchone()
        conn.close()
        if row is not None:
            log = config.jobs_dir / str(row[0]) / "attempt-1.log"
            text = log.read_text() if log.exists() else ""
            if "started" in text:
                started = float(text.split("started", 1)[1].split()[0])
                return {
                    "total_s": round(started - moved_at, 3),
                    "wait_s": round(row[1] - moved_at, 3),
                    "processing_s": round(started - row[1], 3),
                }
        time.sleep(0.02)
    raise SystemExit(f"move {n}: no job started")


def report(figures: dict[str, Any], args: argparse.Namespace) -> int:
    f = figures
    rows = [
        (
            f"alias move -> job's child started, {f['interval_s']:g} s interval, mean / max",
            f"{f['move_to_start_s']['mean']} / {f['move_to_start_s']['max']} s "
            f"({f['moves']} moves)",
        ),
        (
            "of which after the poll that saw it (resolve, commit, pick-up, child start), "
            "median / max",
            f"{f['processing_s']['median']} / {f['processing_s']['max']} s",
        ),
        (
            "alias move -> job start at the default 60 s interval, mean / max",
            f"{f['at_default_interval_s']['mean']} / {f['at_default_interval_s']['max']} s",
        ),
        (
            "W&B GraphQL requests a poll, 10 aliases",
            f"{f['graphql_requests_per_poll_10_aliases']:g}",
        ),
        (
            "W&B requests an hour, 10 aliases, default interval",
            str(f["requests_per_hour_10_aliases"]),
        ),
    ]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Pull mode ({when})\n\nthe real wandb SDK against the W&B-compatible fake on "
        "loopback; a real `edgehook worker`\n\n| figure | value |\n| --- | ---: |\n"
        + "".join(f"| {a} | {b} |\n" for a, b in rows)
    )
    return write(args, "watch", when, figures, text)


if __name__ == "__main__":
    raise SystemExit(main())
