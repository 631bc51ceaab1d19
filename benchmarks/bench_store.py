"""The store on SQLite beside PostgreSQL, in one run: committed deliveries a second through
the receiver's group committer with one and two receivers (two committers on one store, as
two receiver processes or hosts), and commit-to-claim latency (p50, p99) for a worker that
polls every worker.poll_s.

    nice -n 10 .venv/bin/python benchmarks/bench_store.py [--smoke]

PostgreSQL runs as a throwaway local cluster (tests/pg.py: Debian's postgresql, a unix
socket, fsync off as in the tests), so its figures are the protocol's and the locking's
cost, not a disk's; SQLite commits with synchronous=FULL on this machine's disk.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.store import Connection, Delivery, open_store
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    seconds, count = (0.5, 20) if args.smoke else (4.0, 200)
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
                results[name] = figures
    finally:
        cluster.stop("immediate")
        cluster.remove()
    lines = [
        f"{name:10}  1 receiver {figures['committed_per_s_1']:7.0f}/s  "
        f"2 receivers {figures['committed_per_s_2']:7.0f}/s  commit-to-claim "
        f"p50 {figures['commit_to_claim_p50_ms']:.1f} ms  "
        f"p99 {figures['commit_to_claim_p99_ms']:.1f} ms"
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
