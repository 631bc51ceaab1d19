"""The contracts between the worker and a job child: job.json (JobSpec: written by the
worker, read by pipeline/runjob.py) and result.json (JobResult: written by the child, read
by the worker). One writer and one reader each; both files are plain JSON.

`prepare` is how the worker turns a claimed job into what its child gets: argv plus
environment for a `command` rule, job.json for the built-in actions.

The result comes from a process that ran a payload's job, so reading it trusts nothing: a
field of the wrong type is dropped, and a file too large or not JSON reads as an empty
result (the worker then reports the child's exit code and last line).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import Config
from core.rules import Rule
from pipeline.models import registry
from pipeline.models.trust import SigningPolicy
from pipeline.queue import Job
from pipeline.sandbox import command_environment
from pipeline.training.config import TrainConfig

SPEC = "job.json"
RESULT = "result.json"
RESULT_LIMIT = 64 * 1024


@dataclass(frozen=True)
class ArtifactSource:
    source: str  # "wandb" or "local"
    local_root: str  # "" unless source is "local"
    download_timeout_s: float


@dataclass(frozen=True)
class JobSpec:
    """What a built-in action needs: its validated args, the event, and the device's
    settings it may know (public keys only, never the signing key)."""

    job_id: int
    attempt: int
    action: str
    args: dict[str, Any]
    event: dict[str, Any]
    device_id: str
    artifacts: ArtifactSource
    trusted_keys: list[str] = field(default_factory=list)
    allow_unsigned: bool = False
    training: dict[str, Any] = field(default_factory=dict)  # a retrain's TrainConfig.to_dict()

    def policy(self) -> SigningPolicy:
        """The worker's signing policy, as handed to this job (public keys only)."""
        return SigningPolicy(tuple(self.trusted_keys), self.allow_unsigned)

    def write(self, job_dir: Path) -> Path:
        path = job_dir / SPEC
        path.write_text(json.dumps(asdict(self)), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> JobSpec:
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(**{**data, "artifacts": ArtifactSource(**data["artifacts"])})


@dataclass(frozen=True)
class JobResult:
    """What a child reports: a summary, or the error (and whether retrying may help); a model
    it made (retrain) or fetched (deploy) for the worker to accept; the artifacts it
    produced (the loop guard)."""

    summary: str = ""
    error: str | None = None
    transient: bool = False
    model: str | None = None
    deploy: str | None = None
    produced: list[dict[str, Any]] = field(default_factory=list)

    def write(self, job_dir: Path) -> None:
        values = {k: v for k, v in asdict(self).items() if v not in (None, False, "", [])}
        (job_dir / RESULT).write_text(json.dumps(values), encoding="utf-8")

    @classmethod
    def read(cls, job_dir: Path) -> JobResult:
        path = job_dir / RESULT
        try:
            if path.stat().st_size > RESULT_LIMIT:
                return cls(error="result.json is too large")
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        return cls(
            summary=_typed(data, "summary", str, ""),
            error=_typed(data, "error", str, None),
            transient=_typed(data, "transient", bool, False),
            model=_typed(data, "model", str, None),
            deploy=_typed(data, "deploy", str, None),
            produced=[p for p in _typed(data, "produced", list, []) if isinstance(p, dict)],
        )


def _typed(data: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = data.get(key, default)
    return value if isinstance(value, kind) else default


def prepare(
    job: Job, rule: Rule, job_dir: Path, config: Config, policy: Callable[[], SigningPolicy]
) -> tuple[list[str], dict[str, str]]:
    """The child's argv and its edgehook variables; job.json written for a built-in action."""
    extra = {"EDGEHOOK_JOB_ID": str(job.id), "EDGEHOOK_JOB_DIR": str(job_dir)}
    if rule.action == "command":
        return list(rule.command), extra | command_environment(job.args, job.event, job.id)
    if rule.action == "publish":
        # The job gets a copy of the signed model: never the registry, never the key.
        source = config.models_dir / str(job.args.get("model"))
        registry.read_metadata(source)
        shutil.copytree(source, job_dir / "model")
    spec = JobSpec(
        job_id=job.id,
        attempt=job.attempt,
        action=rule.action,
        args=dict(job.args),
        event=dict(job.event),
        device_id=config.device_id,
        artifacts=ArtifactSource(
            source=config.artifacts.source,
            local_root=str(config.artifacts.local_root or ""),
            download_timeout_s=config.artifacts.download_timeout_s,
        ),
        # deploy and fine-tuning check signatures in the child, before loading anything:
        # public keys only, never the private one.
        trusted_keys=list(policy().trusted_keys) if rule.action in ("deploy", "retrain") else [],
        allow_unsigned=config.models.allow_unsigned,
        # The one typed training config, written once; the child rebuilds it (from_dict).
        training=(
            TrainConfig.from_settings(config.training, job.args).to_dict()
            if rule.action == "retrain"
            else {}
        ),
    )
    spec.write(job_dir)
    return [sys.executable, "-m", "pipeline.runjob", SPEC], extra
