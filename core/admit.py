"""Admitting one event: the single path from "this happened in W&B" to a queued job, for
the webhook (receiver/app.py, a delivery that proved itself) and the watcher
(pipeline/watch.py, an alias it saw move).

  produced here?  the device's own output: ignored (the loop guard)
  match           the first rule for the event: none, ignored
  args            the rule's declared arguments, validated (refused: 422 at the webhook)
  artifact        an artifact action needs the exact version string (refused: 422)
  delivery        the event, its job and its digests (core/deliveries.py)
  commit          durable, with the store's dedupe and coalescing (the caller's commit)
  interpret       queued, a duplicate of an earlier job, or produced here after all

The commit is the caller's: the receiver awaits its group committer, the watcher commits
on its own connection (`admit_now`). What each caller tells its client (an HTTP answer, an
audit line, a watched row) follows from the Admission.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from core.deliveries import delivery
from core.errors import Rejection
from core.event import Event
from core.rules import ARTIFACT_ACTIONS, Rule, match
from core.store import Committed, Delivery

Commit = Callable[[Delivery], Awaitable[Committed]]
# An ignored event's reason as the webhook's answer and the watcher's row tell it.
IGNORED_TEXT = {"produced_here": "produced here", "no_rule": "no rule matches"}


@dataclass(frozen=True, slots=True)
class Source:
    """Where the event came from, as the store keeps it with the event."""

    received_at: float
    request_id: str
    client: str
    body_sha256: str
    canonical_sha256: str | None = None


class Verdict(str, Enum):
    QUEUED = "queued"  # a new job
    DUPLICATE = "duplicate"  # an earlier job has it (the store's dedupe)
    IGNORED = "ignored"  # produced here, or no rule matches
    REFUSED = "refused"  # the rule's args do not validate, or no artifact to act on


@dataclass(frozen=True, slots=True)
class Admission:
    """What became of an event, and why: `reason` is queued, duplicate, produced_here,
    no_rule, or the refusal's reason."""

    outcome: Verdict
    reason: str
    rule: Rule | None = None
    job_id: int | None = None
    refusal: Rejection | None = None  # REFUSED: the rule's args, or no artifact


async def admit(
    rules: tuple[Rule, ...],
    device_id: str,
    event: Event,
    args: Mapping[str, Any],
    source: Source,
    commit: Commit,
) -> Admission:
    """Admit `event` carrying `args` (the webhook's, or none from the watcher). Raises what
    `commit` raises (StoreUnavailable from the receiver's committer)."""
    if event.produced_by is not None and event.produced_by == device_id:
        return Admission(Verdict.IGNORED, "produced_here")
    rule = match(rules, event)
    if rule is None:
        return Admission(Verdict.IGNORED, "no_rule")
    try:
        validated = rule.validate_args(args)
        if rule.action in ARTIFACT_ACTIONS and event.version_string is None:
            raise Rejection(
                422,
                "missing_artifact",
                f"rule '{rule.name}' needs "
                "artifact_version_string (or entity, project, collection and alias)",
            )
    except Rejection as exc:
        return Admission(Verdict.REFUSED, exc.reason, rule, refusal=exc)
    committed = await commit(
        delivery(
            event,
            rule,
            validated,
            received_at=source.received_at,
            request_id=source.request_id,
            client=source.client,
            body_sha256=source.body_sha256,
            canonical_sha256=source.canonical_sha256,
        )
    )
    if committed.produced_here:
        return Admission(Verdict.IGNORED, "produced_here", rule)
    if committed.duplicate:
        return Admission(Verdict.DUPLICATE, "duplicate", rule, committed.job_id)
    return Admission(Verdict.QUEUED, "queued", rule, committed.job_id)


def admit_now(
    rules: tuple[Rule, ...],
    device_id: str,
    event: Event,
    args: Mapping[str, Any],
    source: Source,
    commit: Callable[[Delivery], Committed],
) -> Admission:
    """`admit` for a caller that commits synchronously (the watcher, on its own thread)."""

    async def committing(item: Delivery) -> Committed:
        return commit(item)

    return asyncio.run(admit(rules, device_id, event, args, source, committing))
