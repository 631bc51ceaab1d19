"""Query parameters, read the same way for a page and its JSON twin; a bad one is a 400
that names the parameter and what it accepts."""

from __future__ import annotations

import time
from collections.abc import Mapping

from starlette.exceptions import HTTPException

from console.deliveryindex import Filters
from console.views import STATES
from core.auditread import parse_time

MAX_LIMIT = 500


def bad(name: str, accepts: str) -> HTTPException:
    return HTTPException(400, f"bad parameter {name}: {accepts}")


def integer(
    query: Mapping[str, str], name: str, default: int | None, low: int, high: int
) -> int | None:
    text = query.get(name, "")
    if text == "":
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise bad(name, f"an integer from {low} to {high}")
    return int(text)


def limit(query: Mapping[str, str]) -> int:
    value = integer(query, "limit", 50, 1, MAX_LIMIT)
    assert value is not None
    return value


def state(query: Mapping[str, str]) -> str | None:
    value = query.get("state") or None
    if value is not None and value not in STATES:
        raise bad("state", "one of " + ", ".join(STATES))
    return value


def text(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name, "").strip()
    if len(value) > 200:
        raise bad(name, "at most 200 characters")
    return value or None


def when(query: Mapping[str, str], name: str) -> float | None:
    value = text(query, name)
    if value is None:
        return None
    try:
        return parse_time(value, time.time())
    except ValueError:
        raise bad(name, "a time like 2026-11-25T08:00, 2026-11-25, or 30m, 2h, 7d ago") from None


def filters(query: Mapping[str, str]) -> Filters:
    lost = query.get("lost", "")
    if lost not in ("", "0", "1", "true", "false"):
        raise bad("lost", "1 or 0")
    return Filters(
        decision=text(query, "decision"),
        status=integer(query, "status", None, 100, 599),
        reason=text(query, "reason"),
        client=text(query, "client"),
        event_type=text(query, "event_type"),
        since=when(query, "since"),
        until=when(query, "until"),
        lost=lost in ("1", "true"),
    )


def cursor(query: Mapping[str, str]) -> tuple[float, int] | None:
    """`after=TS:ID`, the last row of the previous page (keyset paging)."""
    value = query.get("after", "")
    if not value:
        return None
    ts, _, row = value.partition(":")
    try:
        return float(ts), int(row)
    except ValueError:
        raise bad("after", "the next page's cursor, as the previous page gave it") from None
