"""Pull mode: `edgehook watch` polls W&B for where each watched alias points and commits
an event when it moves, through the same rules, argument defaults, loop guard, dedupe and
coalescing as a webhook delivery (core/admit.py). For plans without webhooks, and
devices without a tunnel; a fleet of devices watching one alias converges on it.

Each poll resolves `entity/project/name:alias` with the real wandb SDK
(`Api().artifact(...)`, one GraphQL request an alias), compares the version with the one
this device last acted on (the store's `watched` table) and, for a new one, commits an
`ADD_ARTIFACT_ALIAS` event naming the exact version (`name:v3`), so the job downloads what
the watcher saw even if the alias moves again. A version a webhook already queued is not
queued again, and the reverse (the store's dedupe key: rule, artifact id, alias).

Failures (W&B unreachable, 5xx, 429, auth) back off exponentially up to
`watch.backoff_max_s`; each change of an alias's state is logged and audited once, and
polls that change nothing are counted into a summary line.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from core import watched
from core.admit import IGNORED_TEXT, Admission, Source, Verdict, admit_now
from core.config import Config
from core.event import Event
from core.names import NAME_MAXLEN, text_problem
from core.store import (
    WATCH_CLIENT,
    Committed,
    Connection,
    Delivery,
    commit_deliveries,
    open_store,
)

log = structlog.get_logger("edgehook.watch")
Audit = Callable[..., None]  # (kind, **fields): a line in the watcher's audit chain
JITTER = 0.1  # each wait is up to 10% longer, so a fleet's polls spread out


@dataclass(frozen=True)
class Resolved:
    """Where a watched alias points now."""

    version: str  # "v3"
    artifact_id: str  # W&B's id of that version
    produced_by: str | None  # metadata `edgehook_device`: an edgehook device made it


class WatchError(Exception):
    """A poll that did not resolve an alias; `kind` is what the backoff and the state
    line say: unreachable, no_answer, bad_answer, server, rate_limited, auth, not_found."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


Resolver = Callable[[str], Resolved]


# What the SDK (its Go core) says when the answer is not W&B's JSON, or never comes, while
# "verifying credentials": it raises AuthenticationError for those too (wandb 0.31).
_NOT_WANDB = (
    "invalid character",
    "looking for beginning of value",
    "unexpected eof",
    "cannot unmarshal",
    "expecting value",
    "jsondecodeerror",
    "<html",
    "<!doctype",
)
_SILENT = ("did not respond in time", "timed out", "deadline exceeded")


def classify(exc: BaseException) -> WatchError:
    """The wandb SDK's errors, by what the operator should do about them. The SDK names a
    failure to reach the server while checking credentials an AuthenticationError, so the
    HTTP status it gave up on decides first."""
    text = " / ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    lowered = text.lower()
    if any(sign in lowered for sign in _NOT_WANDB):
        kind = "bad_answer"  # HTML from a portal or proxy, bad JSON, garbage: not the key
    elif any(sign in lowered for sign in _SILENT):
        kind = "no_answer"
    elif "http 429" in lowered:
        kind = "rate_limited"
    elif "http 401" in lowered or "http 403" in lowered or "no api key" in lowered:
        kind = "auth"
    elif re.search(r"http 5\d\d", lowered):
        kind = "server"
    elif "not found" in lowered or "http 404" in lowered:
        kind = "not_found"
    elif "connection refused" in lowered or "dial tcp" in lowered or "timeout" in lowered:
        kind = "unreachable"
    elif type(exc).__name__ == "AuthenticationError":
        kind = "auth"
    else:
        kind = "unreachable"
    return WatchError(kind, (text or type(exc).__name__)[:300])


def wandb_resolver(api_key: str | None, timeout_s: int = 20) -> Resolver:
    """Resolve aliases with the wandb SDK (WANDB_BASE_URL honoured, as the SDK reads it)."""
    import os

    # The SDK's own retries would hold a poll for minutes; the watcher backs off instead.
    os.environ.setdefault("WANDB__GRAPHQL_RETRY_MAX", "1")
    os.environ.setdefault("WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS", "2")
    os.environ.setdefault("WANDB_SILENT", "true")
    api: list[Any] = []

    def resolve(name: str) -> Resolved:
        import wandb

        try:
            if not api:
                api.append(wandb.Api(api_key=api_key, timeout=timeout_s))
            artifact = api[0].artifact(name)
            metadata = artifact.metadata if isinstance(artifact.metadata, dict) else {}
            device = metadata.get("edgehook_device")
            version, artifact_id = str(artifact.version), str(artifact.id)
        except Exception as exc:  # the SDK raises many kinds; each becomes a WatchError
            api.clear()  # a fresh client next time (credentials, connections)
            raise classify(exc) from exc
        return checked(version, artifact_id, device if isinstance(device, str) else None)

    return resolve


MAX_ID = 128  # W&B's artifact ids are short base64 strings (about 30 characters)


def checked(version: str, artifact_id: str, device: str | None) -> Resolved:
    """What the server said, if it is what W&B says: a version vN, an id of at most MAX_ID
    printable ASCII characters; a device name within NAME_MAXLEN (else not ours)."""
    if re.fullmatch(r"v[0-9]{1,9}", version) is None:
        raise WatchError("bad_answer", f"W&B answered a version that is not vN ({version[:40]!r})")
    if len(artifact_id) > MAX_ID or re.fullmatch(r"[!-~]+", artifact_id) is None:
        raise WatchError(
            "bad_answer", f"W&B answered an artifact id of {len(artifact_id)} characters"
        )
    if device is not None and (len(device) > NAME_MAXLEN or text_problem(device)):
        device = None
    return Resolved(version, artifact_id, device)


@dataclass(frozen=True)
class Outcome:
    artifact: str
    outcome: str  # queued, duplicate, recorded, ignored, unchanged, error
    detail: str = ""
    version: str | None = None
    job_id: int | None = None


class Watcher:
    def __init__(
        self,
        config: Config,
        resolve: Resolver,
        audit: Audit,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.resolve = resolve
        self.audit = audit
        self.clock = clock
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self.failed_polls = 0  # consecutive polls in which every alias failed
        self._unchanged = 0
        self._errors = 0
        self._polls = 0
        self._summary_at = clock()

    # -- one poll -------------------------------------------------------------------------

    def poll(self) -> list[Outcome]:
        """Resolve every watched alias once; returns what became of each."""
        conn = open_store(self.config.store_target)
        try:
            outcomes = [self._one(conn, name) for name in self.config.watch.artifacts]
        finally:
            conn.close()
        self._polls += 1
        failed = [o for o in outcomes if o.outcome == "error"]
        self.failed_polls = (
            self.failed_polls + 1 if outcomes and len(failed) == len(outcomes) else 0
        )
        self._unchanged += sum(o.outcome == "unchanged" for o in outcomes)
        self._errors += len(failed)
        now = self.clock()
        if now - self._summary_at >= self.config.watch.summary_interval_s:
            self.flush_summary(now)
        return outcomes

    def flush_summary(self, now: float | None = None) -> None:
        """One audit line for the polls since the last: how many, how many unchanged."""
        if self._polls:
            self.audit(
                "watch_summary",
                source="watch",
                polls=self._polls,
                unchanged=self._unchanged,
                errors=self._errors,
            )
        self._polls = self._unchanged = self._errors = 0
        self._summary_at = self.clock() if now is None else now

    def _one(self, conn: Connection, name: str) -> Outcome:
        now = self.clock()
        row = watched.row(conn, name)
        try:
            found = self.resolve(name)
        except WatchError as exc:
            watched.poll_failed(conn, name, f"{exc.kind}: {exc}", now)
            previous = row.get("last_error") if row else None
            if previous is None or not str(previous).startswith(exc.kind + ":"):
                log.warning("watch_failed", artifact=name, error=exc.kind, detail=str(exc))
                self.audit("watch_error", source="watch", artifact=name, error=exc.kind,
                           detail=str(exc))  # fmt: skip
            return Outcome(name, "error", f"{exc.kind}: {exc}")
        if row and row.get("last_error"):
            log.info("watch_recovered", artifact=name)
            self.audit("watch_recovered", source="watch", artifact=name)
        if row and row.get("artifact_id") == found.artifact_id:
            watched.polled_ok(conn, name, now)
            return Outcome(name, "unchanged", version=found.version)
        outcome = self._act(conn, name, found, first_sight=not (row and row.get("artifact_id")))
        watched.acted(
            conn,
            name,
            artifact_id=found.artifact_id,
            version_string=_exact(name, found.version),
            job_id=outcome.job_id,
            outcome=f"{outcome.outcome}: {outcome.detail}",
            now=now,
        )
        log.info("watch_moved", artifact=name, version=found.version, outcome=outcome.outcome,
                 detail=outcome.detail, job_id=outcome.job_id)  # fmt: skip
        self.audit(
            "watch",
            source="watch",
            artifact=name,
            version=found.version,
            outcome=outcome.outcome,
            detail=outcome.detail,
            job_id=outcome.job_id,
        )
        return outcome

    def _act(self, conn: Connection, name: str, found: Resolved, first_sight: bool) -> Outcome:
        """Commit the event for a version seen for the first time, as a webhook would."""
        version = found.version
        if first_sight and self.config.watch.on_first_sight == "record":
            return Outcome(name, "recorded", "first sight (watch.on_first_sight = record)", version)
        entity, project, rest = name.split("/", 2)
        collection, _, alias = rest.partition(":")
        event = Event(
            event_type="ADD_ARTIFACT_ALIAS",
            entity=entity,
            project=project,
            collection=collection,
            version=version,
            alias=alias,
            artifact_id=f"wandb-artifact://_id/{found.artifact_id}",
            produced_by=found.produced_by,
        )
        body = _event_bytes(event)
        source = Source(
            received_at=self.clock(),
            request_id=f"watch-{uuid.uuid4().hex[:16]}",
            client=WATCH_CLIENT,
            body_sha256=hashlib.sha256(body).hexdigest(),
        )
        window = self.config.duplicate_window_s

        def commit(item: Delivery) -> Committed:
            return commit_deliveries(conn, [item], window)[0]

        # A watched event carries no args: a rule that requires one is never satisfied.
        admitted = admit_now(self.config.rules, self.config.device_id, event, {}, source, commit)
        return _outcome(name, version, admitted)

    # -- the loop -------------------------------------------------------------------------

    def next_wait(self) -> float:
        """The interval with jitter; doubled for each poll in a row that failed entirely."""
        base = self.config.watch.interval_s * (2 ** min(self.failed_polls, 16))
        capped = min(base, max(self.config.watch.backoff_max_s, self.config.watch.interval_s))
        return float(capped * (1 + self.rng.uniform(0, JITTER)))

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; a poll that raises is logged and the loop goes on."""
        while not stop.is_set():
            try:
                self.poll()
            except Exception:  # the loop outlives a bad poll (the store locked, a bug)
                log.exception("watch_poll_failed")
                self.failed_polls += 1
            stop.wait(self.next_wait())
        self.flush_summary()


def _outcome(name: str, version: str, admitted: Admission) -> Outcome:
    """What the watcher records of an admission (its `watched` row and audit line)."""
    rule = admitted.rule
    if admitted.refusal is not None and rule is not None:  # a required argument
        return Outcome(name, "ignored", f"rule {rule.name}: {admitted.refusal.detail}", version)
    if admitted.outcome is Verdict.IGNORED:
        return Outcome(name, "ignored", IGNORED_TEXT[admitted.reason], version)
    if admitted.outcome is Verdict.DUPLICATE:
        return Outcome(name, "duplicate", f"job {admitted.job_id} has it", version,
                       admitted.job_id)  # fmt: skip
    assert rule is not None  # queued by a rule
    return Outcome(name, "queued", f"rule {rule.name}", version, admitted.job_id)


def _exact(name: str, version: str) -> str:
    return f"{name.rpartition(':')[0]}:{version}"


def _event_bytes(event: Event) -> bytes:
    import json

    return json.dumps(event.as_dict(), sort_keys=True).encode()
