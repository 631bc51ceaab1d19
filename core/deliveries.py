"""An accepted event as the store commits it: one function for the receiver (a webhook
delivery) and the watcher (an alias it saw move), so both queue the same job for the same
event, with the same coalescing and the same key for finding each other's duplicates."""

from __future__ import annotations

import json

from core.event import Event
from core.rules import ArgValue, Rule
from core.store import Delivery


def delivery(
    event: Event,
    rule: Rule,
    args: dict[str, ArgValue],
    *,
    received_at: float,
    request_id: str,
    client: str,
    body_sha256: str,
    canonical_sha256: str | None,
) -> Delivery:
    """The event, its job and its digests; `args` are the rule's validated arguments."""
    coalesce_key = None
    if rule.coalesce and event.collection is not None:
        coalesce_key = f"{rule.name}:{event.entity}/{event.project}/{event.collection}"
    dedupe_key = None
    if event.artifact_id is not None:
        dedupe_key = f"{rule.name}|{event.event_type}|{event.artifact_id}|{event.alias or ''}"
    return Delivery(
        received_at=received_at,
        request_id=request_id,
        client=client,
        body_sha256=body_sha256,
        event_type=event.event_type,
        version_string=event.version_string,
        event_json=json.dumps({**event.as_dict(), "args": args}, sort_keys=True),
        rule=rule.name,
        action=rule.action,
        args_json=json.dumps(args, sort_keys=True),
        artifact_id=event.artifact_id,
        coalesce_key=coalesce_key,
        max_attempts=rule.max_retries + 1,
        canonical_sha256=canonical_sha256,
        dedupe_key=dedupe_key,
    )
