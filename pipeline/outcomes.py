"""What a job's success means for the device (rq's handle_job_success, apart from the
supervision in worker.py): a model a retrain made is signed with this device's key,
registered, and made active if it is no worse, with its publication to W&B queued as a
job of its own; a model a deploy fetched is made active only if a trusted key signed it.
The worker holds the signing key; a job never does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from core.config import Config
from core.errors import JobError
from core.rules import WANDB_ENV, Rule
from pipeline.jobs import JobResult
from pipeline.models import registry, signing
from pipeline.models.trust import UNCHECKED, SigningPolicy
from pipeline.queue import Job, SqliteQueue

log = structlog.get_logger("edgehook.outcomes")
# The internal rule for follow-up jobs that publish a model to W&B (no event matches it).
PUBLISH_RULE = Rule(
    name="edgehook-publish",
    events=frozenset(),
    action="publish",
    env_allow=WANDB_ENV,
    timeout_s=1800.0,
    max_retries=5,
    coalesce=False,
)
AuditJob = Callable[..., None]  # (job, transition, **fields): the worker's audit line


class Outcomes:
    def __init__(
        self,
        config: Config,
        queue: SqliteQueue,
        audit_job: AuditJob,
        clock: Callable[[], float],
        publish_rule: Rule,
    ) -> None:
        self.config = config
        self.queue = queue
        self.audit_job = audit_job
        self.clock = clock
        self.publish_rule = publish_rule
        self._policy: SigningPolicy | None = None

    def accept(self, job: Job, job_dir: Path, result: JobResult) -> str:
        """What became of the model a successful job reported, as a summary suffix ("" when
        it reported none). Raises EdgehookError when the model is not accepted."""
        if result.model is not None:
            return "; " + self._promote(job, job_dir, Path(result.model))
        if result.deploy is not None:
            return "; " + self._deploy(job, job_dir, Path(result.deploy))
        return ""

    def policy(self) -> SigningPolicy:
        """What deploy and fine-tuning accept (handed to jobs: public keys only), built from
        the config once, when a job first needs it."""
        if self._policy is None:
            self._policy = SigningPolicy.from_config(self.config)
        return self._policy

    def _promote(self, job: Job, job_dir: Path, model: Path) -> str:
        _inside(job_dir, model)
        signed = signing.sign(model, self._signing_key())
        decision = registry.promote(
            self.config.models_dir,
            model,
            model_name(job),
            self.config.models.promotion_tolerance,
        )
        self.audit_job(
            job,
            "model_promoted" if decision.promoted else "model_kept",
            model=decision.name,
            reason=decision.reason,
            key_id=signed.key_id,
        )
        publishing = self._queue_publish(job, decision)
        if decision.promoted:
            return f"promoted {decision.name} ({decision.reason}){publishing}"
        return f"not promoted: {decision.reason}{publishing}"

    def _queue_publish(self, job: Job, decision: registry.Decision) -> str:
        """Publishing to W&B is a job of its own: W&B trouble is retried there, and never
        touches the model already kept on the device."""
        publish = self.config.models.publish
        if publish == "never" or (publish == "auto" and self.config.artifacts.source != "wandb"):
            return ""
        args = {"model": decision.name, "promoted": decision.promoted, "retrain_job": job.id}
        job_id = self.queue.enqueue_followup(
            job.id,
            self.publish_rule.name,
            "publish",
            args,
            job.event,
            self.clock(),
            self.publish_rule.max_retries + 1,
        )
        self.audit_job(job, "publish_queued", publish_job=job_id)
        return f"; publishing as job {job_id}"

    def _deploy(self, job: Job, job_dir: Path, model: Path) -> str:
        """Make a fetched model active, only if a trusted key signed it (checked again here,
        whatever the job said)."""
        _inside(job_dir, model)
        signer = self.policy().accept(model)
        if signer == UNCHECKED:
            log.warning("deploying_without_signature_check", job_id=job.id)
        decision = registry.activate(self.config.models_dir, model, model_name(job))
        self.audit_job(job, "model_deployed", model=decision.name, signer=signer)
        return f"deployed {decision.name}, signed by {signer}"

    def _signing_key(self) -> Any:
        path = self.config.secrets.model_signing_key_file
        if path is None:
            raise JobError(
                "no model signing key: set secrets.model_signing_key_file "
                "(edgehook keys init makes one)"
            )
        return signing.load_private(path)


def model_name(job: Job) -> str:
    return f"job{job.id}-attempt{job.attempt}"


def _inside(job_dir: Path, model: Path) -> None:
    if job_dir.resolve() not in model.resolve().parents:
        raise JobError("the job reported a model outside its own directory")
