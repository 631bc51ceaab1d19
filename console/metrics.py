"""GET /metrics (bearer token): Prometheus figures read from the store, the deliveries index
and the watcher's chain at scrape time, so they survive restarts and need no process of
ours to count them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from console import views
from core.auditread import records
from core.store import connect

if TYPE_CHECKING:
    from collections.abc import Iterable

    from console.app import Console

BUCKETS = (1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0)
DURATIONS = (
    "SELECT jobs.action, attempts.finished_at - attempts.started_at FROM attempts "
    "JOIN jobs ON jobs.id = attempts.job_id WHERE attempts.finished_at IS NOT NULL"
)
WAITS = (
    "SELECT jobs.action, attempts.started_at - jobs.created_at FROM attempts "
    "JOIN jobs ON jobs.id = attempts.job_id WHERE attempts.number = 1"
)


class Metrics:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def routes(self) -> list[Route]:
        def scrape(_request: Request) -> Response:
            return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

        return [Route("/metrics", scrape)]

    def collect(self) -> Iterable[Metric]:
        conn = connect(self.console.config.store_path)
        try:
            yield from self._jobs(conn)
        finally:
            conn.close()
        deliveries = CounterMetricFamily(
            "edgehook_deliveries", "Requests to the receiver by decision and reason "
            "(flood summaries' counts included)", labels=["decision", "reason"])  # fmt: skip
        self.console.index.refresh(wait=False)
        for decision, reason, n in self.console.index.counts():
            deliveries.add_metric([decision, reason], n)
        yield deliveries
        yield from self._watch()

    def _jobs(self, conn: Any) -> Iterable[Metric]:
        jobs = GaugeMetricFamily("edgehook_queue_jobs", "Jobs by state", labels=["state"])
        for state, n in views.queue_depth(conn).items():
            jobs.add_metric([state], n)
        yield jobs
        yield _histogram(
            "edgehook_job_duration_seconds", "Each finished attempt's run time, by action",
            conn.execute(DURATIONS))  # fmt: skip
        yield _histogram(
            "edgehook_job_queue_wait_seconds", "From a job's creation to its first start, "
            "by action", conn.execute(WAITS))  # fmt: skip
        outcomes = CounterMetricFamily(
            "edgehook_job_attempts", "Finished attempts by action and outcome",
            labels=["action", "outcome"])  # fmt: skip
        for action, outcome, n in conn.execute(
            "SELECT jobs.action, attempts.outcome, count(*) FROM attempts JOIN jobs ON "
            "jobs.id = attempts.job_id WHERE attempts.outcome IS NOT NULL GROUP BY 1, 2"
        ):
            outcomes.add_metric([str(action), str(outcome)], int(n))
        yield outcomes
        last = GaugeMetricFamily(
            "edgehook_last_success_timestamp_seconds",
            "When each part last succeeded (Unix time)",
            labels=["what"],
        )
        for what, sql in (
            ("job", "SELECT max(finished_at) FROM jobs WHERE state = 'succeeded'"),
            ("delivery", "SELECT max(received_at) FROM events WHERE client != 'watch'"),
            ("watch_poll", "SELECT max(last_ok_at) FROM watched"),
        ):
            value = conn.execute(sql).fetchone()[0]
            if value is not None:
                last.add_metric([what], float(value))
        yield last

    def _watch(self) -> Iterable[Metric]:
        """Polls by outcome, from the watcher's chain: its hourly summaries count the polls
        that changed nothing or failed; each move has a line of its own."""
        polls = CounterMetricFamily(
            "edgehook_watch_polls", "Aliases polled by the watcher, by outcome",
            labels=["outcome"])  # fmt: skip
        counts: dict[str, int] = {}
        for record in records(self.console.config.audit_dir / "watch"):
            kind = record.get("kind")
            if kind == "watch_summary":
                for key, outcome in (("unchanged", "unchanged"), ("errors", "error")):
                    value = record.get(key)
                    counts[outcome] = counts.get(outcome, 0) + (
                        value if isinstance(value, int) else 0
                    )
            elif kind == "watch":
                outcome = str(record.get("outcome"))
                counts[outcome] = counts.get(outcome, 0) + 1
        for outcome, n in sorted(counts.items()):
            polls.add_metric([outcome], n)
        yield polls


def _histogram(name: str, doc: str, rows: Iterable[tuple[str, float]]) -> Metric:
    by_action: dict[str, list[float]] = {}
    for action, seconds in rows:
        if seconds is not None:
            by_action.setdefault(str(action), []).append(max(0.0, float(seconds)))
    family = HistogramMetricFamily(name, doc, labels=["action"])
    for action, values in sorted(by_action.items()):
        buckets = [(str(b), sum(v <= b for v in values)) for b in BUCKETS]
        buckets.append(("+Inf", len(values)))
        family.add_metric([action], buckets, sum(values))
    return family
