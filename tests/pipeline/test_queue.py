"""The queue contract. Every implementation runs these: SQLite and PostgreSQL (the `queue`
fixture's params)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from core.store import Delivery, open_store
from pipeline.queue import JobState, SqliteQueue

LEASE = 30.0


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqliteQueue]:
    target = (
        tmp_path / "edgehook.db" if request.param == "sqlite" else request.getfixturevalue("pg_url")
    )
    conn = open_store(target)
    yield SqliteQueue(conn)
    conn.close()


def delivery(
    n: int, *, key: str | None = None, attempts: int = 3, at: float = 0.0, version: str = "e/p/c:v1"
) -> Delivery:
    return Delivery(
        received_at=at,
        request_id=f"r{n}",
        client="203.0.113.1",
        body_sha256=f"{n:064x}",
        event_type="ADD_ARTIFACT_ALIAS",
        version_string=version,
        event_json='{"alias": "retrain"}',
        rule="r",
        action="download",
        args_json=f'{{"n": {n}}}',
        coalesce_key=key,
        max_attempts=attempts,
    )


def test_enqueue_then_claim_oldest_first(queue: SqliteQueue) -> None:
    first = queue.enqueue(delivery(1), 60).job_id
    second = queue.enqueue(delivery(2), 60).job_id
    job = queue.claim("w1", LEASE, now=1.0)
    assert job is not None and job.id == first and job.attempt == 1
    assert job.args == {"n": 1} and job.event == {"alias": "retrain"}
    assert queue.claim("w1", LEASE, now=1.0).id == second  # type: ignore[union-attr]
    assert queue.claim("w1", LEASE, now=1.0) is None
    assert queue.get(first).state == JobState.RUNNING  # type: ignore[union-attr]


def test_duplicate_enqueue_within_window_returns_the_first_job(queue: SqliteQueue) -> None:
    first = queue.enqueue(delivery(1, at=100.0), 60)
    again = queue.enqueue(delivery(1, at=150.0), 60)
    later = queue.enqueue(delivery(1, at=170.0), 60)
    assert again.duplicate and again.job_id == first.job_id
    assert not later.duplicate and later.job_id != first.job_id


def test_complete_once_and_only_by_the_lease_holder(queue: SqliteQueue) -> None:
    job_id = queue.enqueue(delivery(1), 60).job_id
    assert job_id is not None
    queue.claim("w1", LEASE, now=1.0)
    assert not queue.complete(job_id, "w2", now=2.0)
    assert queue.complete(job_id, "w1", now=2.0, summary="ok")
    assert not queue.complete(job_id, "w1", now=3.0)
    row = queue.get(job_id)
    assert row is not None and row.state == JobState.SUCCEEDED and row.summary == "ok"
    assert [a.outcome for a in queue.attempts(job_id)] == ["succeeded"]


def test_heartbeat_extends_the_lease_and_reaper_requeues_a_dead_workers_job(
    queue: SqliteQueue,
) -> None:
    job_id = queue.enqueue(delivery(1, attempts=2), 60).job_id
    assert job_id is not None
    queue.claim("w1", LEASE, now=0.0)
    assert queue.heartbeat(job_id, "w1", LEASE, now=20.0)
    assert queue.reap_expired(now=40.0) == []  # lease now runs to 50
    assert queue.reap_expired(now=51.0) == [(job_id, JobState.QUEUED)]
    assert not queue.heartbeat(job_id, "w1", LEASE, now=52.0)  # w1 lost it
    assert not queue.complete(job_id, "w1", now=52.0)
    job = queue.claim("w2", LEASE, now=53.0)
    assert job is not None and job.attempt == 2
    assert queue.reap_expired(now=100.0) == [(job_id, JobState.FAILED)]  # no attempts left
    assert "lease expired" in (queue.get(job_id).reason or "")  # type: ignore[union-attr]
    assert [a.outcome for a in queue.attempts(job_id)] == ["lost", "lost"]


def test_transient_failure_retries_after_the_delay_then_fails(queue: SqliteQueue) -> None:
    job_id = queue.enqueue(delivery(1, attempts=2), 60).job_id
    assert job_id is not None
    queue.claim("w", LEASE, now=0.0)
    assert (
        queue.fail(job_id, "w", 1.0, "W&B unavailable", transient=True, retry_delay_s=10.0)
        == JobState.QUEUED
    )
    assert queue.claim("w", LEASE, now=5.0) is None  # backing off
    assert queue.claim("w", LEASE, now=11.0) is not None
    assert (
        queue.fail(job_id, "w", 12.0, "W&B unavailable", transient=True, retry_delay_s=20.0)
        == JobState.FAILED
    )
    row = queue.get(job_id)
    assert row is not None and row.attempts == 2 and row.reason == "W&B unavailable"


def test_permanent_failure_fails_at_once(queue: SqliteQueue) -> None:
    job_id = queue.enqueue(delivery(1, attempts=5), 60).job_id
    assert job_id is not None
    queue.claim("w", LEASE, now=0.0)
    assert (
        queue.fail(
            job_id, "w", 1.0, "digest mismatch", transient=False, retry_delay_s=10.0, exit_code=1
        )
        == JobState.FAILED
    )
    assert queue.attempts(job_id)[0].exit_code == 1


def test_coalescing_collapses_into_the_newest_and_records_the_rest(queue: SqliteQueue) -> None:
    ids = [queue.enqueue(delivery(n, key="retrain:e/p/c"), 60).job_id for n in range(3)]
    other = queue.enqueue(delivery(9, key="retrain:e/p/other"), 60).job_id
    job = queue.claim("w", LEASE, now=1.0)
    assert job is not None and job.id == ids[2]
    for old in ids[:2]:
        row = queue.get(old)  # type: ignore[arg-type]
        assert row is not None and row.state == JobState.SUPERSEDED and row.superseded_by == ids[2]
    assert queue.superseded_by(ids[2]) == ids[:2]
    assert queue.claim("w", LEASE, now=1.0).id == other  # type: ignore[union-attr]


def test_release_hands_back_without_counting_the_attempt(queue: SqliteQueue) -> None:
    job_id = queue.enqueue(delivery(1, attempts=1), 60).job_id
    assert job_id is not None
    queue.claim("w", LEASE, now=0.0)
    assert queue.release(job_id, "w", now=1.0)
    job = queue.claim("w", LEASE, now=1.0)
    assert job is not None and job.attempt == 1


def test_cancel_queued_and_running_and_retry(queue: SqliteQueue) -> None:
    queued = queue.enqueue(delivery(1), 60).job_id
    running = queue.enqueue(delivery(2), 60).job_id
    assert queued is not None and running is not None
    assert queue.request_cancel(queued, now=0.0) == JobState.CANCELLED
    queue.claim("w", LEASE, now=0.0)
    assert queue.request_cancel(running, now=1.0) == JobState.RUNNING
    assert queue.cancel_requested(running)
    assert queue.cancelled(running, "w", 2.0, "cancelled by operator")
    assert queue.get(running).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert queue.request_cancel(999, now=0.0) is None
    assert queue.retry(running, now=3.0) == JobState.QUEUED
    job = queue.claim("w", LEASE, now=3.0)
    assert job is not None and job.id == running and job.attempt == 1
    assert queue.retry(running, now=4.0) == JobState.RUNNING  # not retryable while running


def test_loop_guard_drops_events_about_produced_versions(queue: SqliteQueue) -> None:
    job_id = queue.enqueue(delivery(1), 60).job_id
    assert job_id is not None
    queue.claim("w", LEASE, now=0.0)
    queue.complete(
        job_id,
        "w",
        1.0,
        produced=[{"version_string": "e/p/model:v3", "artifact_id": "wandb-artifact://_id/x"}],
    )
    result = queue.enqueue(delivery(2, version="e/p/model:v3"), 60)
    assert result.produced_here and result.job_id is None
    assert not queue.runnable(now=10.0)
