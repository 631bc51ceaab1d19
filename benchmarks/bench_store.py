"""The store on SQLite beside PostgreSQL, in one run: committed deliveries a second through
the receiver's group committer with one and two receivers (two committers on one store, as
two receiver processes or hosts), commit-to-claim latency (p50, p99) for a claimer that
polls every worker.poll_s (woken by NOTIFY on PostgreSQL), and commit-to-child-start latency
(p50, p99) through a real `edgehook worker` whose job is `/bin/date +%s.%N` (the child stamps
the moment it started).

    nice -n 10 .venv/bin/python benchmarks/bench_store.py [--smoke]

PostgreSQL runs as a throwaway local cluster (tests/pg.py: Debian's postgresql, a unix
socket, fsync off as in the tests), so its figures are the protocol's and the locking's
cost, not a disk's; SQLite commits with synchronous=FULL on this machine's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_queue import CONFIG_EXTRA
from core.store import Connection, Delivery, open_store
from edgehook.init import run_init
from pipeline.listen import JobListener
from pipeline.queue import SqliteQueue
from receiver.committer import Committer
from tests.pg import TEMPLATE, Cluster, binaries

IN_FLIGHT = 64  # deliveries each receiver has waiting at once
POLL_S = 0.05  # worker.poll_s's default


def delivery(tag: str, at: float) -> Delivery:
    return Delivery(
        received_at=at,
        request_id=tag,
        client="203.0.113.1",
        body_sha256=tag,
        event_type="ADD_ARTIFACT_ALIAS",
        version_string="e/p/c:v1",
        event_json="{}",
        rule="r",
        action="download",
        args_json="{}",
    )


def throughput(target: Path | str, receivers: int, seconds: float) -> float:
    committers = [Committer(target, 86400.0) for _ in range(receivers)]
    for committer in committers:
        committer.start()
    done = 0

    async def feed(index: int, committer: Committer, deadline: float) -> None:
        nonlocal done
        n = 0
        while time.monotonic() < deadline:
            n += 1
            await committer.commit(delivery(f"t{receivers}-{index}-{n}", time.time()))
            done += 1

    async def run() -> float:
        start = time.monotonic()
        deadline = start + seconds
        await asyncio.gather(
            *(
                feed(r * IN_FLIGHT + i, c, deadline)
                for r, c in enumerate(committers)
                for i in range(IN_FLIGHT)
            )
        )
        return time.monotonic() - start

    elapsed = asyncio.run(run())
    for committer in committers:
        committer.stop()
    return done / elapsed


def latency(target: Path | str, count: int) -> tuple[float, float]:
    """Commit one delivery at a time; a polling claimer takes it: ms from commit to claim."""
    committer = Committer(target, 86400.0)
    committer.start()
    committed_at: dict[int, float] = {}
    claimed_at: dict[int, float] = {}
    stop = threading.Event()

    def claim() -> None:
        claimer: Connection = open_store(target)  # SQLite: a connection per thread
        queue = SqliteQueue(claimer)
        while not stop.is_set():
            job = queue.claim("bench", 30.0, time.time())
            if job is None:
                if listener is None:
                    stop.wait(POLL_S)
                elif select.select([listener.fileno()], [], [], POLL_S)[0]:
                    os.read(listener.fileno(), 4096)  # the worker's wake-up: NOTIFY
                continue
            claimed_at[job.id] = time.monotonic()
            queue.complete(job.id, "bench", time.time())
        claimer.close()

    # PostgreSQL: wake on NOTIFY like `edgehook worker` (pipeline/listen.py), POLL_S fallback
    listener = JobListener(target).start() if isinstance(target, str) else None
    if listener is not None:
        listener.listening.wait(10)
    worker = threading.Thread(target=claim)

    async def send() -> None:
        for n in range(count):
            result = await committer.commit(delivery(f"l{n}", time.time()))
            assert result.job_id is not None
            committed_at[result.job_id] = time.monotonic()
            await asyncio.sleep(POLL_S * 0.37)  # not in step with the poll

    worker.start()
    asyncio.run(send())
    deadline = time.monotonic() + 30
    while len(claimed_at) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    worker.join()
    committer.stop()
    if listener is not None:
        listener.close()
    # NOTIFY can wake the claimer before the committer's answer reaches the sender: 0 ms then
    ordered = sorted(max(0.0, (claimed_at[j] - committed_at[j]) * 1000) for j in claimed_at)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


# The stamping rule bench_queue.py times commit -> child start with.
STAMP_RULE = CONFIG_EXTRA


def child_start(home: Path, url: str | None, count: int) -> tuple[float, float]:
    """Commit one delivery at a time with `edgehook worker` running (on the workspace's SQLite
    store, or on `url`): ms from the commit's return to the child's own start stamp."""
    run_init(home)
    config = home / "edgehook.toml"
    config.write_text(config.read_text() + STAMP_RULE)
    target: Path | str = url if url is not None else home / "data" / "edgehook.db"
    open_store(target).close()
    env = {**os.environ, **({"EDGEHOOK_STORE_URL": url} if url else {})}
    with (home / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "edgehook", "--config", str(config), "worker"],
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    committer = Committer(target, 86400.0)
    committer.start()
    committed: dict[int, float] = {}

    def stamp(job_id: int) -> float | None:
        path = home / "data" / "jobs" / str(job_id) / "attempt-1.log"
        text = path.read_text().strip() if path.exists() else ""
        return float(text) if text else None

    def started(job_id: int, timeout: float = 30.0) -> float:
        deadline = time.monotonic() + timeout
        while (found := stamp(job_id)) is None:
            if time.monotonic() > deadline or worker.poll() is not None:
                raise SystemExit(f"bench_store: job {job_id} never started ({home}/worker.log)")
            time.sleep(0.01)
        return found

    async def send(tag: str) -> int:
        d = dataclasses.replace(delivery(tag, time.time()), rule="stamp", action="command")
        result = await committer.commit(d)
        committed_at = time.time()
        assert result.job_id is not None
        committed[result.job_id] = committed_at
        return result.job_id

    try:
        started(asyncio.run(send("warm-up")), timeout=60)  # the worker is up and idle
        committed.clear()
        for n in range(count):
            job_id = asyncio.run(send(f"c{n}"))
            started(job_id)
            time.sleep(POLL_S * 1.37)  # idle again, and not in step with the poll
    finally:
        committer.stop()
        worker.terminate()
        worker.wait(timeout=30)
    # the child can stamp before the committer's answer reaches the sender: 0 ms then
    ordered = sorted(max(0.0, (stamp(j) or 0.0) - at) * 1000 for j, at in committed.items())
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seconds, count = (0.5, 20) if args.smoke else (4.0, 200)
    starts = 10 if args.smoke else 100
    bin_dir = binaries()
    if bin_dir is None:
        raise SystemExit("bench_store: PostgreSQL is not installed (scripts/setup.sh)")
    cluster = Cluster(bin_dir)
    cluster.start()
    results: dict[str, dict[str, float]] = {}
    try:
        cluster.admin(f"CREATE DATABASE {TEMPLATE}")
        open_store(cluster.url(TEMPLATE)).close()
        with tempfile.TemporaryDirectory() as tmp:
            for name in ("sqlite", "postgresql"):
                figures: dict[str, float] = {}
                for receivers in (1, 2):
                    target: Path | str = (
                        Path(tmp) / f"s{receivers}.db"
                        if name == "sqlite"
                        else cluster.fresh_database()
                    )
                    open_store(target).close()
                    figures[f"committed_per_s_{receivers}"] = throughput(target, receivers, seconds)
                target = Path(tmp) / "lat.db" if name == "sqlite" else cluster.fresh_database()
                open_store(target).close()
                p50, p99 = latency(target, count)
                figures.update(commit_to_claim_p50_ms=p50, commit_to_claim_p99_ms=p99)
                url = None if name == "sqlite" else cluster.fresh_database()
                p50, p99 = child_start(Path(tmp) / f"home-{name}", url, starts)
                figures.update(commit_to_child_start_p50_ms=p50, commit_to_child_start_p99_ms=p99)
                results[name] = figures
    finally:
        cluster.stop("immediate")
        cluster.remove()
    lines = [
        f"{name:10}  1 receiver {figures['committed_per_s_1']:7.0f}/s  "
        f"2 receivers {figures['committed_per_s_2']:7.0f}/s  commit-to-claim "
        f"p50 {figures['commit_to_claim_p50_ms']:.1f} ms  "
        f"p99 {figures['commit_to_claim_p99_ms']:.1f} ms  commit-to-child-start "
        f"p50 {figures['commit_to_child_start_p50_ms']:.1f} ms  "
        f"p99 {figures['commit_to_child_start_p99_ms']:.1f} ms"
        for name, figures in results.items()
    ]
    print("\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d")  # run_all.py collects store-*.json and store-*.md
        (args.out / f"store-{stamp}.json").write_text(json.dumps(results, indent=2))
        (args.out / f"store-{stamp}.md").write_text("\n".join(["```", *lines, "```", ""]))


if __name__ == "__main__":
    main()
