"""The queue end to end: durable accepted-delivery throughput, commit-to-child-start
latency, and the worker's idle memory.

1. wrk replays 30,000 pre-signed, distinct deliveries (one address, rate limits raised)
   against `edgehook serve`: deliveries committed per second, each with an fsync'd commit.
2. With `edgehook worker` running, signed deliveries arrive one at a time; each queues a
   job whose command is `/bin/date +%s.%N`, so the child stamps the moment it started.
   Latency = child start - the delivery's receive time (an upper bound on commit->start).
3. The worker's RSS while idle (it imports neither torch nor wandb).

  .venv/bin/python benchmarks/bench_queue.py            # full
  .venv/bin/python benchmarks/bench_queue.py --smoke    # quick (CI)
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.deliveries import memory, percentile  # noqa: E402
from benchmarks.floods import free_port, wait_http  # noqa: E402
from edgehook.init import run_init  # noqa: E402
from edgehook.template import sample_body  # noqa: E402
from receiver.signatures import sign  # noqa: E402

REPLAY_LUA = """
local requests = {}
local n = 0
init = function(args)
  for line in io.lines(args[1]) do
    local sig, body = line:match("([^\\t]+)\\t(.*)")
    n = n + 1
    requests[n] = wrk.format("POST", "/webhook", {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer " .. args[2],
      ["X-Wandb-Signature"] = sig}, body)
  end
end
local i = 0
request = function()
  i = i + 1
  return requests[((i - 1) % n) + 1]
end
"""
CONFIG_EXTRA = """
[[rules]]
name = "stamp"
event = "ADD_ARTIFACT_ALIAS"
action = "command"
command = ["/bin/date", "+%s.%N"]
env_allow = []
coalesce = false
"""


def setup(home: Path) -> tuple[str, bytes]:
    run_init(home)
    config = home / "edgehook.toml"
    text = config.read_text()
    text = text.replace("requests_per_second = 5.0", "requests_per_second = 1000000.0")
    text = text.replace("burst = 30", "burst = 1000000")
    config.write_text(text + CONFIG_EXTRA)
    token = (home / "secrets" / "access_token").read_text().strip()
    secret = (home / "secrets" / "signing_secret").read_text().strip().encode()
    return token, secret


def start(home: Path, *args: str, port: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **({"EDGEHOOK_PORT": str(port)} if port else {})}
    log = (home / f"{args[0]}.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "edgehook", *args],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def throughput(home: Path, token: str, secret: bytes, duration: int) -> dict[str, Any]:
    requests = home / "requests.tsv"
    with requests.open("w") as handle:
        for i in range(30_000):
            body = sample_body(event_author=f"load{i}")
            handle.write(f"{sign(body, secret)}\t{body.decode()}\n")
    lua = home / "replay.lua"
    lua.write_text(REPLAY_LUA)
    port = free_port()
    server = start(home, "serve", port=port)
    try:
        wait_http(port, "/healthz", server)
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                "-c16",
                f"-d{duration}s",
                "-s",
                str(lua),
                f"http://127.0.0.1:{port}",
                "--",
                str(requests),
                token,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        server.terminate()
        server.wait(timeout=10)
    total = int(re.search(r"(\d+) requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    seconds = float(re.search(r"requests in ([\d.]+)s", out).group(1))  # type: ignore[union-attr]
    with sqlite3.connect(home / "data" / "edgehook.db") as conn:
        committed = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    return {
        "requests": total,
        "seconds": seconds,
        "committed_jobs": committed,
        "committed_per_s": round(committed / seconds, 1),
        "note": "wrapped around the 30,000 distinct bodies" if total > 30_000 else "",
    }


def latency(home: Path, token: str, secret: bytes, samples: int) -> dict[str, Any]:
    port = free_port()
    server = start(home, "serve", port=port)
    worker = start(home, "worker")
    try:
        wait_http(port, "/healthz", server)
        time.sleep(1.0)
        rss_idle, _ = memory(worker.pid)
        before = max_job(home)
        for i in range(samples):
            body = sample_body(
                alias="stamp",
                event_author=f"lat{i}",
                artifact_version_string=f"my-team/edge-demo/cifar10-subset:v{i}",
            )
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request(
                "POST",
                "/webhook",
                body=body,
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {token}",
                    "X-Wandb-Signature": sign(body, secret),
                },
            )
            assert conn.getresponse().status == 202
            conn.close()
            time.sleep(0.3)
        time.sleep(1.0)
        rss_after, peak = memory(worker.pid)
    finally:
        worker.terminate()
        server.terminate()
        worker.wait(timeout=30)
        server.wait(timeout=10)
    delays = []
    with sqlite3.connect(home / "data" / "edgehook.db") as db:
        rows = db.execute(
            "SELECT id, created_at FROM jobs WHERE id > ? AND rule = 'stamp'", (before,)
        ).fetchall()
    for job_id, created in rows:
        log = home / "data" / "jobs" / str(job_id) / "attempt-1.log"
        delays.append((float(log.read_text().strip()) - created) * 1000)
    return {
        "samples": len(delays),
        "p50_ms": round(statistics.median(delays), 1),
        "p99_ms": round(percentile(delays, 0.99), 1),
        "max_ms": round(max(delays), 1),
        "worker_rss_idle_mb": round(rss_idle, 1),
        "worker_rss_after_mb": round(rss_after, 1),
        "worker_peak_rss_mb": round(peak, 1),
    }


def max_job(home: Path) -> int:
    with sqlite3.connect(home / "data" / "edgehook.db") as conn:
        return int(conn.execute("SELECT coalesce(max(id), 0) FROM jobs").fetchone()[0])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench_queue: needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgehook-bench-") as tmp:
        # Separate homes: the load phase leaves thousands of queued jobs behind.
        home = Path(tmp) / "load"
        token, secret = setup(home)
        load = throughput(home, token, secret, 2 if args.smoke else 10)
        home = Path(tmp) / "latency"
        token, secret = setup(home)
        lat = latency(home, token, secret, 5 if args.smoke else 40)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"# Queue: durable throughput and pick-up latency ({when})\n\n"
        "| figure | value | target |\n| --- | ---: | --- |\n"
        f"| signed deliveries committed per second (fsync'd, wrk -c16) | "
        f"{load['committed_per_s']:,} | >= 1,000 |\n"
        f"| commit -> child start p50 | {lat['p50_ms']} ms | <= 100 ms |\n"
        f"| commit -> child start p99 ({lat['samples']} jobs) | {lat['p99_ms']} ms | <= 250 ms |\n"
        f"| worker RSS idle | {lat['worker_rss_idle_mb']} MB | <= 60 MB |\n"
        f"| worker RSS after the jobs (peak) | {lat['worker_rss_after_mb']} MB "
        f"({lat['worker_peak_rss_mb']} MB) | |\n"
    )
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "queue-smoke" if args.smoke else f"queue-{when[:10]}"
    (args.out / f"{stem}.json").write_text(
        json.dumps({"when": when, "throughput": load, "latency": lat}, indent=2)
    )
    (args.out / f"{stem}.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
