"""The store on PostgreSQL: the duplicate rules of core.store on a shared database, exact
across receivers, migrations, and the URL's password kept out of every message. (The queue's
contract runs on both engines in tests/pipeline/test_queue.py.)"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import psycopg
import pytest

from core import pgstore
from core.config import load_config
from core.errors import ConfigError, StoreUnavailable
from core.store import (
    WATCH_CLIENT,
    Delivery,
    commit_deliveries,
    migrate_target,
    open_store,
)
from pipeline.queue import SqliteQueue
from pipeline.sandbox import job_environment


def delivery(
    body: str, *, at: float = 100.0, client: str = "203.0.113.1", **extra: object
) -> Delivery:
    values: dict[str, object] = dict(
        received_at=at,
        request_id=f"r-{body}-{at}",
        client=client,
        body_sha256=body,
        event_type="ADD_ARTIFACT_ALIAS",
        version_string="e/p/c:v1",
        event_json="{}",
        rule="r",
        action="download",
        args_json="{}",
    )
    values.update(extra)
    return Delivery(**values)  # type: ignore[arg-type]


def test_duplicates_by_bytes_and_canonical_json_within_the_window(pg_url: str) -> None:
    store = open_store(pg_url)
    first, again, canonical = commit_deliveries(
        store,
        [
            delivery("a", canonical_sha256="c"),
            delivery("a", at=150.0),
            delivery("b", at=160.0, canonical_sha256="c"),
        ],
        60,
    )
    later = commit_deliveries(store, [delivery("a", at=170.0)], 60)[0]
    assert first.job_id is not None and not first.duplicate
    assert (again.duplicate, again.job_id) == (True, first.job_id)
    assert (canonical.duplicate, canonical.job_id) == (True, first.job_id)
    assert not later.duplicate and later.job_id not in (None, first.job_id)
    assert store.execute("SELECT count(*) FROM events").fetchone()[0] == 2
    store.close()


def test_webhook_and_watcher_reaching_one_version_are_one_event(pg_url: str) -> None:
    store = open_store(pg_url)
    watched = commit_deliveries(store, [delivery("w", client=WATCH_CLIENT, dedupe_key="k")], 60)[0]
    hook = commit_deliveries(store, [delivery("h", at=120.0, dedupe_key="k")], 60)[0]
    other_hook = commit_deliveries(store, [delivery("h2", at=130.0, dedupe_key="k")], 60)[0]
    watched_again = commit_deliveries(
        store, [delivery("w2", at=10_000.0, client=WATCH_CLIENT, dedupe_key="k")], 60
    )[0]
    assert (hook.duplicate, hook.job_id) == (True, watched.job_id)
    assert (other_hook.duplicate, other_hook.job_id) == (True, watched.job_id)
    assert watched_again.duplicate  # the watcher: any event ever about that version
    store.close()


def test_two_receivers_committing_one_delivery_at_once_make_one_job(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(4)]
    start = threading.Barrier(len(stores))
    results: list[list[int | None]] = [[] for _ in stores]

    def receive(index: int) -> None:
        start.wait()
        for n in range(20):
            committed = commit_deliveries(stores[index], [delivery(f"d{n}", at=100.0 + n)], 60)
            results[index].append(committed[0].job_id)

    threads = [threading.Thread(target=receive, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for n in range(20):
        assert len({r[n] for r in results}) == 1  # every receiver answered with one job
    assert stores[0].execute("SELECT count(*) FROM jobs").fetchone()[0] == 20
    for store in stores:
        store.close()


def test_workers_on_two_hosts_claim_each_job_once(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(3)]
    queue = SqliteQueue(stores[0])
    for n in range(30):
        queue.enqueue(delivery(f"j{n}", coalesce_key=f"k{n % 3}" if n % 2 else None), 60)
    claimed: list[list[int]] = [[] for _ in stores]

    def work(index: int) -> None:
        worker = SqliteQueue(stores[index])
        while (job := worker.claim(f"w{index}", 30, now=200.0)) is not None:
            claimed[index].append(job.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job for jobs in claimed for job in jobs]
    assert len(every) == len(set(every))
    states = dict(stores[0].execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
    # 15 plain jobs, and each of the 3 keys' 5 jobs collapsed into its newest
    assert len(every) == 18
    assert states == {"running": 18, "superseded": 12}
    for store in stores:
        store.close()


def test_a_late_outcome_from_a_lost_lease_is_refused_on_another_host(pg_url: str) -> None:
    one, other = SqliteQueue(open_store(pg_url)), SqliteQueue(open_store(pg_url))
    job_id = one.enqueue(delivery("x"), 60).job_id
    assert one.claim("host-a", 30, now=101.0) is not None
    assert other.reap_expired(now=140.0) == [(job_id, "queued")]
    again = other.claim("host-b", 30, now=141.0)
    assert again is not None and again.id == job_id and again.attempt == 2
    assert one.complete(job_id, "host-a", now=142.0) is False
    assert one.heartbeat(job_id, "host-a", 30, now=142.0) is False
    assert other.complete(job_id, "host-b", now=143.0) is True


def test_a_queued_job_notifies_listeners(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {pgstore.CHANNEL}")
        SqliteQueue(open_store(pg_url)).enqueue(delivery("n"), 60)
        notes = list(listener.notifies(timeout=5.0, stop_after=1))
    assert [n.channel for n in notes] == [pgstore.CHANNEL]


def test_migrations_are_idempotent_and_counted(pg_url: str) -> None:
    before, after, where = migrate_target(pg_url)
    assert (before, after) == (pgstore.SCHEMA_VERSION, pgstore.SCHEMA_VERSION)
    assert where == pg_url
    store = pgstore.open_store(pg_url)
    assert pgstore.schema_version(store) == pgstore.SCHEMA_VERSION
    store.execute("UPDATE edgehook_schema SET version = 99")
    store.close()
    with pytest.raises(StoreUnavailable, match="version 99, newer than this edgehook"):
        open_store(pg_url)


PASSWORD = "s3cret-Pa55word-never-shown"


def test_the_password_stays_out_of_errors_logs_and_the_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"postgresql://edgehook:{PASSWORD}@127.0.0.1:9/edgehook?connect_timeout=1"
    secret = tmp_path / "store-url"
    secret.write_text(url + "\n")
    secret.chmod(0o600)
    env = {"EDGEHOOK_STORE_URL_FILE": str(secret)}
    config = load_config(None, env, cwd=tmp_path)
    assert config.store_target == url
    assert PASSWORD not in repr(config)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as caught:
        open_store(config.store_target, busy_timeout_s=1.0)
    assert (
        str(caught.value)
        == "cannot reach the store at postgresql://edgehook:***@127.0.0.1:9/edgehook?connect_timeout=1"
    )
    assert PASSWORD not in caplog.text


def test_a_store_url_file_others_may_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "store-url"
    secret.write_text("postgresql://u:p@db/edgehook\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"EDGEHOOK_STORE_URL_FILE": str(secret)}, cwd=tmp_path)
    assert caught.value.key == "EDGEHOOK_STORE_URL_FILE"
    assert "readable or writable by group or others" in str(caught.value)


def test_a_store_url_of_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"EDGEHOOK_STORE_URL": "mysql://db/x"}, cwd=tmp_path)
    assert "neither `sqlite` nor a postgresql:// URL" in str(caught.value)


def test_a_rule_cannot_pass_the_store_url_to_a_job(tmp_path: Path) -> None:
    url = f"postgresql://edgehook:{PASSWORD}@db/edgehook"
    worker_env = {"EDGEHOOK_STORE_URL": url, "EDGEHOOK_STORE_URL_FILE": "/run/x", "LAB": "1"}
    allow = ["EDGEHOOK_STORE_URL", "EDGEHOOK_STORE_URL_FILE", "LAB"]
    env = job_environment(allow, worker_env, None, tmp_path, {})
    assert env["LAB"] == "1"
    assert "EDGEHOOK_STORE_URL" not in env and "EDGEHOOK_STORE_URL_FILE" not in env
    assert PASSWORD not in repr(env)
