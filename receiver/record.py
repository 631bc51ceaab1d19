"""What the receiver learns and decides about one request, and the audit line it makes.

One record per request, made when its head is screened (gate.py's `early_verdict`, for the
protocol's fast path or the Gate) and carried in the ASGI scope under SCOPE_KEY. Each
layer fills in what it learns (the body's digest, the event, the rule, the job), and every
verdict is recorded through `decide`: the HTTP answer (answers.py) only formats, so what
the audit line says and what the caller is told cannot drift apart. `audit_request` writes the line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import structlog

from core.errors import Rejection
from receiver.services import Services

log = structlog.get_logger("edgehook.receiver")
SCOPE_KEY = "edgehook"


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    client: str  # as clients.py resolved it: the rate limiter's key and the audit's
    received_at: float  # wall clock: the event's time, the duplicate window
    started: float  # monotonic: the latency in the audit line
    decision: str = "rejected"
    reason: str = "http_error"  # a refusal below the app's routes (404, 405)
    # Token and signature both checked: never sampled away in the audit log, never
    # refused for rate.
    authenticated: bool = False
    body_sha256: str | None = None
    body_len: int | None = None
    event: str | None = None  # Event.summary(): type and artifact, never args
    rule: str | None = None
    job_id: int | None = None

    def decide(self, decision: str, reason: str) -> None:
        """The verdict: what the audit line records (answers.py tells the caller)."""
        self.decision, self.reason = decision, reason

    def refuse(self, exc: Rejection, decision: str = "rejected") -> Rejection:
        self.decide(decision, exc.reason)
        return exc

    def audit_fields(self, method: str, path: str, status: int, now: float) -> dict[str, Any]:
        """The request's audit line; `proven` only on one that proved itself, so a refused
        genuine delivery can be found (`audit show --lost`) and sent again."""
        fields: dict[str, Any] = {
            "request_id": self.request_id,
            "client": self.client,
            "method": method,
            "path": path[:128],
            "status": status,
            "decision": self.decision,
            "reason": self.reason,
        }
        if self.body_sha256 is not None:
            fields["body_sha256"], fields["body_len"] = self.body_sha256, self.body_len
        for key, value in (("event", self.event), ("rule", self.rule), ("job_id", self.job_id)):
            if value is not None:
                fields[key] = value
        fields["latency_ms"] = round((now - self.started) * 1000, 2)
        if self.authenticated:
            fields["proven"] = True
        return fields


def audit_request(
    svc: Services, record: RequestRecord, method: str, path: str, status: int
) -> None:
    """The request's audit line. Unproven rejections are sampled (flood summaries)."""
    now = svc.monotonic()
    fields = record.audit_fields(method, path, status, now)
    _write(svc, fields, now, sampled=record.decision == "rejected" and not record.authenticated)


def audit_connection_refusal(svc: Services, peer: str, status: int, reason: str) -> None:
    """A refusal made below the app (protocol.py: over capacity, head timeout or too large,
    unparsable request): no request line or headers to record, only who and why."""
    fields = {
        "request_id": new_request_id(),
        "client": peer,
        "method": "-",
        "path": "-",
        "status": status,
        "decision": "rejected",
        "reason": reason,
    }
    _write(svc, fields, svc.monotonic(), sampled=True)


def new_request_id() -> str:
    return os.urandom(8).hex()


def _write(svc: Services, fields: dict[str, Any], now: float, *, sampled: bool) -> None:
    """Unproven rejections are sampled (flood summaries count the rest); the others always
    get their own line."""
    try:
        if sampled:
            svc.audit.record_rejection(fields, now)
        else:
            svc.audit.record("request", **fields)
    except OSError as exc:
        # Disk full or the log directory gone: the answer (maybe a committed 202) still goes
        # out; the operator log says the audit line is missing.
        log.error("audit_write_failed", request_id=fields["request_id"], error=str(exc))
