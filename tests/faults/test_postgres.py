"""PostgreSQL faults (rows of tests/faults/README.md): the database out of reach mid-burst,
a worker SIGKILLed mid-job, and a worker cut off past its lease on another host."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import http.client
import itertools
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core.store import Committed, Delivery, open_store
from edgehook.template import sample_body
from pipeline.queue import SqliteQueue
from receiver.committer import Committer
from tests.conftest import (
    Workspace,
    free_port,
    make_workspace,
    signed,
    start_server,
    stop_server,
    wait_for,
)
from tests.pg import Cluster
from tests.pipeline.conftest import (
    add_rules,
    command_rule,
    edgehook,
    marking_job,
    processes_with,
)


def delivery(body: str) -> Delivery:
    return Delivery(
        received_at=100.0,
        request_id=body,
        client="203.0.113.1",
        body_sha256=body,
        event_type="ADD_ARTIFACT_ALIAS",
        version_string="e/p/c:v1",
        event_json="{}",
        rule="r",
        action="download",
        args_json="{}",
    )


def burst(committer: Committer, prefix: str, count: int) -> list[Committed | BaseException]:
    async def send() -> list[Committed | BaseException]:
        sent = [committer.commit(delivery(f"{prefix}{n}")) for n in range(count)]
        return await asyncio.gather(*sent, return_exceptions=True)

    return asyncio.run(send())


def test_database_out_of_reach_mid_burst_commits_nothing_then_recovers(
    pg_cluster: Cluster,
) -> None:
    url = pg_cluster.fresh_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    committer = Committer(url, 60.0, busy_timeout_s=1.0)
    committer.start()
    try:
        before = burst(committer, "a", 20)
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        pg_cluster.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608
        )
        during = burst(committer, "b", 20)
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        after = burst(committer, "c", 20)
    finally:
        committer.stop()
    assert all(isinstance(r, Committed) and not r.duplicate for r in before + after)
    # every one refused (the receiver answers 503 for these), none committed
    assert {type(r).__name__ for r in during} == {"StoreUnavailable"}
    store = open_store(url)
    bodies = {r[0] for r in store.execute("SELECT body_sha256 FROM events").fetchall()}
    store.close()
    assert len(bodies) == 40 and not any(b.startswith("b") for b in bodies)


def test_database_restart_while_workers_hold_leases(pg_cluster: Cluster, pg_url: str) -> None:
    """The whole server restarts: leases live in the database, so they survive; the worker's
    pool reconnects and its heartbeat and completion go through (no process restarted)."""
    worker = SqliteQueue(open_store(pg_url))
    job_id = worker.enqueue(delivery("r"), 60).job_id
    assert worker.claim("host-a", 30, now=101.0) is not None
    pg_cluster.stop("fast")
    pg_cluster.start()
    assert worker.heartbeat(job_id, "host-a", 30, now=110.0) is True  # type: ignore[arg-type]
    assert worker.reap_expired(now=130.0) == []
    assert worker.complete(job_id, "host-a", now=131.0) is True  # type: ignore[arg-type]
    assert worker.get(job_id).state == "succeeded"  # type: ignore[arg-type,union-attr]
    worker.conn.close()  # not left to the pool's __del__ (an unraisable warning in a later test)


def test_worker_sigkilled_mid_job_another_data_dir_completes_it_once(
    tmp_path: Path, pg_url: str
) -> None:
    """Two hosts (two data dirs) share the database: the first worker dies mid-job, its child
    with it; once the lease runs out, the other worker runs the job, and it runs once."""
    runs, argv = marking_job(tmp_path, 1.0)
    hosts = [make_workspace(tmp_path / name) for name in ("a", "b")]
    for host in hosts:
        add_rules(host, command_rule("once", argv), worker="lease_s = 2\n")
    queue = SqliteQueue(open_store(pg_url))
    d = dataclasses.replace(delivery("k"), rule="once", action="command", received_at=time.time())
    job_id = queue.enqueue(d, 60).job_id
    assert job_id is not None
    env = {"EDGEHOOK_STORE_URL": pg_url}
    first = edgehook(hosts[0], "worker", env=env)
    wait_for(lambda: processes_with(argv[1]) != [])  # the child is running
    first.send_signal(signal.SIGKILL)
    first.wait()
    wait_for(lambda: processes_with(argv[1]) == [], timeout=5)
    assert not (runs / f"done-{job_id}").exists()
    sql = "SELECT lease_expires FROM jobs WHERE id = ?"
    (expires,) = queue.conn.execute(sql, (job_id,)).fetchone()
    wait_for(lambda: time.time() > expires)  # the dead worker's lease has run out
    second = edgehook(hosts[1], "worker", "--once", env=env)
    assert second.wait(timeout=60) == 0
    assert queue.get(job_id).state == "succeeded"  # type: ignore[union-attr]
    assert (runs / f"done-{job_id}").read_text() == "x"
    assert [a.outcome for a in queue.attempts(job_id)] == ["lost", "succeeded"]
    queue.conn.close()


@pytest.mark.slow  # ~9 s: a receiver process, a burst through an outage
def test_receiver_on_postgres_stopped_mid_burst_503s_audits_lost_and_recovers(
    pg_cluster: Cluster, workspace: Workspace
) -> None:
    """Through HTTP against a real `edgehook serve` on a PostgreSQL store: 4 senders keep
    posting while the database stops taking connections. Every 202 is in the store, every
    other answer is a 503 whose delivery `audit show --lost` lists, and once the database is
    back the same receiver process commits again."""
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 100000.0")
    workspace.edit("burst = 30", "burst = 100000")
    url = pg_cluster.fresh_database()
    name = url.split("?")[0].rsplit("/", 1)[1]
    server = start_server(workspace, free_port(), ("EDGEHOOK_STORE_URL", url))
    port = int(server.url.rsplit(":", 1)[1])
    accepted: dict[int, str] = {}  # job id -> body sha256
    refused: dict[str, str] = {}  # request id -> body sha256
    others: list[object] = []  # any other answer
    lock = threading.Lock()
    stop = threading.Event()

    def post(tag: str) -> tuple[int, dict[str, object], str]:
        body = sample_body(event_author=tag)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("POST", "/webhook", body=body, headers=signed(workspace, body))
            reply = conn.getresponse()
            answer = json.loads(reply.read())
        finally:
            conn.close()
        with lock:
            if reply.status == 202:
                accepted[int(str(answer["job_id"]))] = hashlib.sha256(body).hexdigest()
            elif reply.status == 503:
                if answer != {"error": "store_unavailable", "detail": "try again later"}:
                    others.append((503, answer))
                if not reply.getheader("retry-after", "").isdigit():
                    others.append((503, "no retry-after"))
                refused[reply.getheader("x-request-id", "")] = hashlib.sha256(body).hexdigest()
            else:
                others.append((reply.status, answer))
        return reply.status, answer, reply.getheader("x-request-id", "")

    def sender(n: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            post(f"burst{n}x{i}")

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: len(accepted) >= 20, what="the burst to get going")
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        pg_cluster.admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"  # noqa: S608
        )
        wait_for(lambda: len(refused) >= 8, what="503s while the database is out of reach")
        pg_cluster.admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        during = len(accepted)
        wait_for(lambda: len(accepted) >= during + 10, what="202s once the database is back")
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        # a new delivery after the burst: 202 from the same process, committed
        status, answer, _ = post("after")
        assert status == 202, answer
        assert server.process.poll() is None
    finally:
        stop.set()
        stop_server(server)
    assert others == []
    store = open_store(url)
    rows = store.execute(
        "SELECT e.body_sha256, j.id FROM events e JOIN jobs j ON j.event_id = e.id"
    )
    committed = {job_id: digest for digest, job_id in rows.fetchall()}
    store.close()
    assert {j: committed.get(j) for j in accepted} == accepted  # every 202 is in the store
    assert not set(refused.values()) & set(committed.values())  # no 503 was committed
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgehook",
            "--config",
            str(workspace.config_path),
            "audit",
            "show",
            "--lost",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=workspace.dir,
    )
    assert shown.returncode == 0, shown.stderr
    lost = [json.loads(line) for line in shown.stdout.splitlines()]
    assert {r["request_id"]: r["body_sha256"] for r in lost} == refused
    for record in lost:
        assert (record["kind"], record["status"], record["decision"], record["reason"]) == (
            "request",
            503,
            "unavailable",
            "store_unavailable",
        )
        assert record["proven"] is True and record["chain"] == "receiver"
        assert (
            record["event"]
            == "ADD_ARTIFACT_ALIAS my-team/edge-demo/cifar10-subset:retrain +retrain"
        )


@pytest.mark.slow  # ~7 s: a worker process, a job through a database restart
def test_database_restart_under_a_running_worker_process(
    pg_cluster: Cluster, tmp_path: Path, pg_url: str
) -> None:
    """`edgehook worker` holds a lease on a running job while the whole server restarts: the
    job runs once and succeeds, the worker process lives on, and its LISTEN reconnects (a job
    queued afterwards starts too)."""
    runs, argv = marking_job(tmp_path, 2.0)
    host = make_workspace(tmp_path / "host")
    add_rules(host, command_rule("held", argv), worker="lease_s = 10\n")

    def enqueue(tag: str) -> int:
        queue = SqliteQueue(open_store(pg_url))
        d = dataclasses.replace(
            delivery(tag), rule="held", action="command", received_at=time.time()
        )
        job_id = queue.enqueue(d, 60).job_id
        queue.conn.close()
        assert job_id is not None
        return job_id

    def outcomes(job_id: int) -> tuple[str, list[str | None]]:
        queue = SqliteQueue(open_store(pg_url))
        try:
            job = queue.get(job_id)
            assert job is not None
            return job.state, [a.outcome for a in queue.attempts(job_id)]
        finally:
            queue.conn.close()

    worker = edgehook(host, "worker", env={"EDGEHOOK_STORE_URL": pg_url})
    try:
        first = enqueue("r1")
        wait_for(lambda: processes_with(argv[1]) != [], what="the child")
        pg_cluster.stop("fast")
        pg_cluster.start()
        wait_for(lambda: outcomes(first)[0] == "succeeded", what="the held job's success")
        assert outcomes(first) == ("succeeded", ["succeeded"])
        assert (runs / f"done-{first}").read_text() == "x"
        second = enqueue("r2")
        wait_for(lambda: outcomes(second)[0] == "succeeded", what="a job after the restart")
        assert worker.poll() is None
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=15) == 0
