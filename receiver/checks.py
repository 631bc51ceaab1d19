"""The checks every request to /webhook passes, in their one order, and the two steps that
decide who sent it: the head (checks 1-4, screen.py) and the signature (check 6).

The order is README's ("How a delivery is handled"); CHECKS declares it, and
tests/receiver/test_checks.py holds README's list, these names and the code's behaviour to
it. Before check 1, the HTTP protocol bounds connections and request heads (protocol.py).

   1 single_credentials  one Authorization, one X-Wandb-Signature     400
   2 token               the bearer token; right: no rate budget spent, on to 5
   3 rate_limit          only requests without the right token        429
   4 content             Content-Type, declared Content-Length, and   415 / 413 / 401
                         then the wrong token's refusal
   5 body                read, capped while reading                   413 / 408 / 499
   6 signature           HMAC-SHA256 of the body                      401 (as 4: no oracle)
   7 json                UTF-8 JSON object, bounded depth             400
   8 rule                a rule matches; its args validate            200 ignored / 422
   9 duplicate           the same delivery within the window          200 duplicate
  10 commit              event and job committed                      202 / 503

Checks 1-6 are decided in the HTTP protocol (fastpath.py) whenever it can, without an ASGI
task; the Gate (gate.py) and the app (app.py) decide the same way for the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from core.errors import Rejection
from receiver.record import RequestRecord, audit_request, new_request_id
from receiver.screen import Screened, screen
from receiver.services import Services
from receiver.signatures import signature_valid

CHECKS = (
    "single_credentials",
    "token",
    "rate_limit",
    "content",
    "body",
    "signature",
    "json",
    "rule",
    "duplicate",
    "commit",
)

# Verdicts, never raised: one instance each serves every request.
MISSING_SIGNATURE = Rejection(401, "missing_signature", "unauthorized")
BAD_SIGNATURE = Rejection(401, "bad_signature", "unauthorized")


def early_verdict(
    svc: Services, method: str, path: str, headers: Sequence[tuple[bytes, bytes]], peer: str
) -> tuple[RequestRecord, Screened]:
    """Checks 1-4 on a request's head (screen.py): its record, and the verdict (a refusal is
    decided and audited already). Called once a request, by the protocol's fast path or by
    the Gate."""
    started = svc.monotonic()
    record = RequestRecord(
        request_id=new_request_id(),
        client=svc.resolver.resolve(peer, headers),
        received_at=svc.clock(),
        started=started,
    )
    screened = screen(
        method,
        path,
        headers,
        client=record.client,
        now=started,
        limiter=svc.limiter,
        tokens=svc.secrets.access_tokens,
        max_body_bytes=svc.config.server.max_body_bytes,
    )
    if screened.refusal is not None:
        record.decide("rejected", screened.refusal.reason)
        audit_request(svc, record, method, path, screened.refusal.status)
    return record, screened


def prove(
    svc: Services, record: RequestRecord, body: bytes, signature: str | None
) -> Rejection | None:
    """Check 6, the signature over the whole body: the refusal (401, told apart from a bad
    token only in the audit log), or None once the request has proved itself. One function
    for the protocol's fast path and the app, so both decide and record alike."""
    record.body_sha256, record.body_len = hashlib.sha256(body).hexdigest(), len(body)
    if not signature_valid(body, signature, svc.secrets.signing_secrets):
        svc.limiter.auth_failed(record.client, svc.monotonic())
        return MISSING_SIGNATURE if signature is None else BAD_SIGNATURE
    record.authenticated = True
    return None
