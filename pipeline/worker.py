"""`edgehook worker`: claims jobs under a lease and runs each in an isolated child process.

One process, single-threaded: a loop that claims jobs while slots are free, reads the
children's output, heartbeats their leases, enforces timeouts and cancellations, records
each outcome in the store (then the audit log), and reaps leases of workers that died.
rq's work-horse pattern: the child runs the job, the parent owns its outcome.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from core.audit import AuditLog
from core.config import Config
from core.credentials import load_audit_key, load_wandb_key
from core.errors import EXIT_TRANSIENT, EdgehookError, StoreUnavailable
from core.rules import Rule
from core.store import open_store
from pipeline.jobs import JobResult, prepare
from pipeline.outcomes import PUBLISH_RULE, Outcomes
from pipeline.queue import Job, JobState, SqliteQueue
from pipeline.sandbox import (
    CappedLog,
    Limits,
    OutputPump,
    job_environment,
    make_job_dir,
    signal_group,
    spawn,
)
from pipeline.workerlock import WorkerLock

log = structlog.get_logger("edgehook.worker")
REAP_EVERY_S = 1.0
STORE_RETRY_S = 0.5  # between tries while the store is unavailable
CANCEL_CHECK_EVERY_S = 0.5


@dataclass
class Running:
    job: Job
    rule: Rule
    process: subprocess.Popen[bytes]
    job_dir: Path
    log: CappedLog
    # Monotonic seconds: durations and deadlines must not move when the wall clock does
    # (NTP stepping the clock of a Jetson that booted without an RTC, an operator's date).
    started: float
    last_heartbeat: float
    kill_at: float | None = None  # SIGKILL deadline once SIGTERM was sent
    stop_reason: str | None = None  # why we are stopping it (timeout, cancel, lost lease)
    stop_state: JobState | None = None


class Worker:
    def __init__(
        self,
        config: Config,
        queue: SqliteQueue,
        audit: AuditLog,
        env: Mapping[str, str],
        wandb_key: str | None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        worker_id: str | None = None,
    ) -> None:
        self.config = config
        self.settings = config.worker
        self.queue = queue
        self.audit = audit
        self.env = env
        self.wandb_key = wandb_key
        self.clock = clock  # wall time: what the store records (leases, run_after)
        self.monotonic = monotonic  # intervals, timeouts and deadlines here
        self.id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.publish_rule = dataclasses.replace(
            PUBLISH_RULE, max_retries=config.models.publish_retries
        )
        self.rules = {rule.name: rule for rule in (*config.rules, self.publish_rule)}
        self.outcomes = Outcomes(config, queue, self._audit_job, clock, self.publish_rule)
        self.limits = Limits.from_config(self.settings)
        self.running: dict[int, Running] = {}
        self.outputs = OutputPump()
        self.stopping = False
        self._wake_fd = -1  # written by the signal handler: ends the loop's wait at once
        self._stop_deadline = 0.0
        self._last_reap = float("-inf")
        self._last_cancel_check = float("-inf")

    # -- the loop ----------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> int:
        """Work until SIGTERM/SIGINT (or, with once, until nothing is runnable)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        # A signal handler that returns lets select() resume its wait (PEP 475), so an idle
        # worker would stop only after poll_s; the handler writes to this pipe instead.
        wake_read, self._wake_fd = os.pipe()
        for fd in (wake_read, self._wake_fd):
            os.set_blocking(fd, False)
        self.outputs.add_wakeup(wake_read)
        self.audit.record("worker_start", worker=self.id, pid=os.getpid())
        try:
            while True:
                try:
                    if self._step(once):
                        break
                except StoreUnavailable as exc:
                    # PostgreSQL restarting or out of reach: jobs keep running; the next step
                    # heartbeats, and a lease lost meanwhile stops its job (heartbeat False)
                    log.warning("worker_store_unavailable", error=str(exc))
                    self.outputs.wait(STORE_RETRY_S)
                    continue
                self.outputs.wait(self.settings.poll_s)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.outputs.remove_wakeup(wake_read)
            os.close(wake_read)
            os.close(self._wake_fd)
            self._wake_fd = -1
            self.audit.record("worker_stop", worker=self.id)
        return 0

    def _step(self, once: bool) -> bool:
        """One turn of the loop; True when the worker is done."""
        now, tick = self.clock(), self.monotonic()
        self._supervise(now, tick)
        if tick - self._last_reap >= REAP_EVERY_S:
            self._reap(now, tick)
        if not self.stopping:
            self._claim(now)
        if self.stopping and self._finish_stopping(now, tick):
            return True
        return once and not self.running and not self.queue.runnable(self.clock())

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info(
                "worker_stopping", signal=signal.Signals(signum).name, running=list(self.running)
            )
            self.stopping = True
            self._stop_deadline = self.monotonic() + self.settings.shutdown_grace_s
        if self._wake_fd >= 0:
            with contextlib.suppress(OSError):  # a full pipe: the loop is awake already
                os.write(self._wake_fd, b"!")

    def _finish_stopping(self, now: float, tick: float) -> bool:
        """Let running jobs finish within the grace period, then hand them back."""
        if not self.running:
            return True
        if tick < self._stop_deadline:
            return False
        for run in list(self.running.values()):
            signal_group(run.process, signal.SIGKILL)
            run.process.wait()
            self._close_output(run)
            if self.queue.release(run.job.id, self.id, now):
                self._audit_job(run.job, "handed_back", reason="worker shut down")
            self.running.pop(run.job.id)
        return True

    # -- claiming and starting -----------------------------------------------------------

    def _claim(self, now: float) -> None:
        while len(self.running) < self.settings.concurrency:
            job = self.queue.claim(self.id, self.settings.lease_s, now)
            if job is None:
                return
            for old in self.queue.superseded_by(job.id):
                self._audit_job_id(old, "superseded", rule=job.rule, by=job.id)
            self._start(job, now)

    def _start(self, job: Job, now: float) -> None:
        rule = self.rules.get(job.rule)
        if rule is None:
            self._record_failure(
                job, now, f"rule '{job.rule}' is no longer configured", transient=False
            )
            return
        try:
            job_dir = make_job_dir(
                self.config.jobs_dir, job.id, job.attempt, self.settings.job_user
            )
            argv, extra = prepare(job, rule, job_dir, self.config, self.outcomes.policy)
            env = job_environment(rule.env_allow, self.env, self.wandb_key, job_dir, extra)
            process = spawn(argv, job_dir, env, self.limits, self.settings.job_user)
        except OSError as exc:
            # A missing or non-executable program will not fix itself; a failed fork might.
            permanent = isinstance(exc, (FileNotFoundError, PermissionError))
            self._record_failure(
                job, now, f"could not start the job: {exc}", transient=not permanent
            )
            return
        except Exception as exc:
            # Anything else a job's data can provoke while preparing it (a value that cannot
            # be an environment variable, a spec that cannot be written) fails this job alone,
            # for good: the same data would fail every attempt. The worker and the other
            # running jobs carry on.
            log.exception("job_start_failed", job_id=job.id)
            self._record_failure(
                job,
                now,
                f"could not start the job: {type(exc).__name__}: {str(exc)[:200]}",
                transient=False,
            )
            return
        started, started_tick = self.clock(), self.monotonic()
        capped = CappedLog(
            job_dir.parent / f"attempt-{job.attempt}.log", self.settings.max_log_bytes
        )
        assert process.stdout is not None
        run = Running(job, rule, process, job_dir, capped, started_tick, started_tick)
        self.outputs.add(process.stdout, capped)
        self.running[job.id] = run
        self._audit_job(
            job, "started", pid=process.pid, waited_ms=round((started - job.created_at) * 1000, 1)
        )

    # -- supervising -----------------------------------------------------------------------

    def _supervise(self, now: float, tick: float) -> None:
        check_cancel = tick - self._last_cancel_check >= CANCEL_CHECK_EVERY_S
        if check_cancel:
            self._last_cancel_check = tick
        for run in list(self.running.values()):
            code = run.process.poll()
            if code is not None:
                self._finished(run, code)
                continue
            if run.kill_at is not None:
                if tick >= run.kill_at:
                    signal_group(run.process, signal.SIGKILL)
                continue
            if tick - run.last_heartbeat >= self.settings.heartbeat_s:
                run.last_heartbeat = tick
                if not self.queue.heartbeat(run.job.id, self.id, self.settings.lease_s, now):
                    self._stop(run, tick, "lease lost to another worker", None)
                    continue
            if tick - run.started >= run.rule.timeout_s:
                self._stop(run, tick, f"timed out after {run.rule.timeout_s:g} s", JobState.FAILED)
            elif check_cancel and self.queue.cancel_requested(run.job.id):
                self._stop(run, tick, "cancelled by operator", JobState.CANCELLED)

    def _stop(self, run: Running, tick: float, reason: str, state: JobState | None) -> None:
        """SIGTERM to the whole group now, SIGKILL after the grace period."""
        run.stop_reason, run.stop_state = reason, state
        run.kill_at = tick + self.settings.kill_grace_s
        signal_group(run.process, signal.SIGTERM)

    def _finished(self, run: Running, code: int) -> None:
        # Whatever the child left behind in its process group goes with it.
        signal_group(run.process, signal.SIGKILL)
        self._close_output(run)
        self.running.pop(run.job.id)
        now = self.clock()
        job = run.job
        duration = round(self.monotonic() - run.started, 3)
        if run.stop_reason is not None:
            if run.stop_state == JobState.CANCELLED:
                if self.queue.cancelled(job.id, self.id, now, run.stop_reason):
                    self._audit_job(job, "cancelled", reason=run.stop_reason, duration_s=duration)
            elif run.stop_state == JobState.FAILED:
                self._record_failure(job, now, run.stop_reason, transient=False, exit_code=code)
            else:
                self._audit_job(job, "abandoned", reason=run.stop_reason)
            return
        result = JobResult.read(run.job_dir)
        if code == 0:
            summary = result.summary[:400]
            try:
                summary += self.outcomes.accept(job, run.job_dir, result)
            except EdgehookError as exc:
                self._record_failure(
                    job, now, f"model not accepted: {exc}", transient=False, exit_code=code
                )
                return
            if self.queue.complete(job.id, self.id, now, summary=summary, produced=result.produced):
                self._audit_job(job, "succeeded", duration_s=duration, summary=summary)
            return
        if code < 0:
            reason = f"killed by {signal.Signals(-code).name}"
        else:
            reason = (result.error or run.log.last_line or f"exit code {code}")[:500]
        self._record_failure(
            job, now, reason, transient=code == EXIT_TRANSIENT, exit_code=code, duration_s=duration
        )

    def _record_failure(
        self,
        job: Job,
        now: float,
        reason: str,
        *,
        transient: bool,
        exit_code: int | None = None,
        **extra: Any,
    ) -> None:
        delay = min(self.settings.retry_base_s * 2 ** (job.attempt - 1), self.settings.retry_max_s)
        state = self.queue.fail(
            job.id,
            self.id,
            now,
            reason,
            transient=transient,
            retry_delay_s=delay,
            exit_code=exit_code,
        )
        if state == JobState.QUEUED:
            self._audit_job(
                job,
                "retry_scheduled",
                reason=reason,
                exit_code=exit_code,
                retry_in_s=delay,
                **extra,
            )
        elif state is not None:
            self._audit_job(job, state.value, reason=reason, exit_code=exit_code, **extra)

    def _reap(self, now: float, tick: float) -> None:
        self._last_reap = tick
        # Our own running jobs are alive: renew their leases before looking for expired
        # ones, so a wall clock stepped forward past the lease cannot make them look
        # abandoned (and requeue a job whose child is still working).
        for run in self.running.values():
            if run.kill_at is None:
                run.last_heartbeat = tick
                self.queue.heartbeat(run.job.id, self.id, self.settings.lease_s, now)
        for job_id, state in self.queue.reap_expired(now):
            self._audit_job_id(
                job_id,
                "requeued" if state == JobState.QUEUED else state.value,
                reason="lease expired: its worker died or stalled",
            )

    def _close_output(self, run: Running) -> None:
        assert run.process.stdout is not None
        self.outputs.close(run.process.stdout)

    # -- audit -----------------------------------------------------------------------------

    def _audit_job(self, job: Job, transition: str, **fields: Any) -> None:
        self.audit.record(
            "job",
            job_id=job.id,
            transition=transition,
            rule=job.rule,
            action=job.action,
            attempt=job.attempt,
            worker=self.id,
            **fields,
        )
        log.info("job", job_id=job.id, transition=transition, **fields)

    def _audit_job_id(self, job_id: int, transition: str, **fields: Any) -> None:
        self.audit.record("job", job_id=job_id, transition=transition, worker=self.id, **fields)
        log.info("job", job_id=job_id, transition=transition, **fields)


def run_worker(config: Config, env: Mapping[str, str], *, once: bool) -> int:
    """`edgehook worker`: open what the worker needs (never the receiver's secrets)."""
    audit_key = load_audit_key(config, env)
    wandb_key = load_wandb_key(config, env)
    lock = WorkerLock(config.data_dir)
    conn = open_store(config.store_target)
    audit = AuditLog(config.audit_dir / "worker", audit_key, config.audit, clock=time.time)
    worker = Worker(config, SqliteQueue(conn), audit, env, wandb_key)
    listener = None
    if isinstance(config.store_target, str):  # PostgreSQL: wake on NOTIFY, poll as fallback
        from pipeline.listen import JobListener  # psycopg only for a PostgreSQL store

        listener = JobListener(config.store_target).start()
        worker.outputs.add_wakeup(listener.fileno())
    try:
        return worker.run(once=once)
    finally:
        if listener is not None:
            listener.close()  # before the store: its thread's connection is its own
        audit.close()
        conn.close()
        lock.release()
