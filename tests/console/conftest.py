"""A console over a real workspace: a store with jobs in each state, receiver audit lines
(one with markup in its names, one lost, one flood summary), two signed models."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from console.app import Console, build_app
from console.server import make_console
from core.audit import AuditLog
from core.config import Config
from core.store import Delivery, commit_deliveries, open_store
from pipeline.models import registry, signing
from pipeline.models.metadata import ModelMeta
from pipeline.queue import SqliteQueue
from tests.conftest import Workspace, make_workspace

MARKUP = "<img src=x onerror=alert(1)>"


@dataclass
class Site:
    workspace: Workspace
    config: Config
    console: Console
    token: str
    jobs: dict[str, int]

    def client(self) -> TestClient:
        return TestClient(build_app(self.console), client=("127.0.0.9", 40000))

    def api(self) -> TestClient:
        client = self.client()
        client.headers["Authorization"] = f"Bearer {self.token}"
        return client

    def logged_in(self) -> TestClient:
        client = self.client()
        answer = client.post("/login", data={"token": self.token, "next": "/"},
                             follow_redirects=False)  # fmt: skip
        assert answer.status_code == 303
        return client


def delivery(n: int, project: str = "proj", now: float = 1_800_000_000.0) -> Delivery:
    event = {"event_type": "ADD_ARTIFACT_ALIAS", "entity": "team", "project": project,
             "version_string": f"team/{project}/data:v{n}", "alias": "retrain",
             "args": {"epochs": 3}}  # fmt: skip
    return Delivery(
        received_at=now + n, request_id=f"req-{n}", client="203.0.113.5",
        body_sha256=hashlib.sha256(str(n).encode()).hexdigest(), event_type="ADD_ARTIFACT_ALIAS",
        version_string=f"team/{project}/data:v{n}", event_json=json.dumps(event),
        rule=f"rule-{project}", action="retrain", args_json='{"epochs": 3}',
    )  # fmt: skip


def fill_store(config: Config) -> dict[str, int]:
    conn = open_store(config.store_path)
    queue = SqliteQueue(conn)
    ids = [
        int(c.job_id or 0) for c in commit_deliveries(conn, [delivery(n) for n in range(1, 5)], 60)
    ]
    evil = commit_deliveries(conn, [delivery(9, project=MARKUP)], 60)[0].job_id
    assert all(ids) and evil
    t = 1_800_000_100.0
    queue.claim("w1", 60, t)  # job 1: failed
    queue.fail(ids[0], "w1", t + 5, f"artifact {MARKUP} missing", transient=False,
               retry_delay_s=0)  # fmt: skip
    queue.claim("w1", 60, t + 6)  # job 2: succeeded
    queue.complete(ids[1], "w1", t + 9, summary="promoted job2-attempt1")
    queue.claim("w1", 60, t + 10)  # job 3: running, with a log
    log = config.jobs_dir / str(ids[2]) / "attempt-1.log"
    log.parent.mkdir(parents=True)
    log.write_text("epoch 1 loss 0.9\n", encoding="utf-8")
    conn.execute(
        "INSERT INTO watched (artifact, version_string, last_poll_at, last_ok_at, last_error, "
        "last_error_at, failures) VALUES ('team/proj/data:production', 'team/proj/data:v3', "
        "?, ?, 'network: W&B did not answer', ?, 2)",
        (t + 30, t + 10, t + 30),
    )
    conn.close()
    return {"failed": ids[0], "succeeded": ids[1], "running": ids[2], "queued": ids[3],
            "evil": int(evil)}  # fmt: skip


def write_deliveries(config: Config, key: bytes) -> None:
    stamps = iter(range(1_800_000_000, 1_800_001_000))
    log = AuditLog(config.audit_dir, key, config.audit, clock=lambda: float(next(stamps)))
    log.record("request", request_id="r1", client="203.0.113.5", method="POST",
               path="/webhook", status=202, decision="accepted", reason="queued",
               event="ADD_ARTIFACT_ALIAS team/proj/data:v1 +retrain", rule="rule-proj",
               job_id=1, body_sha256="a" * 64, proven=True)  # fmt: skip
    log.record("request", request_id="r2", client="198.51.100.7", method="POST",
               path="/webhook", status=401, decision="rejected", reason="bad_token")  # fmt: skip
    log.record("request", request_id="r3", client="203.0.113.5", method="POST",
               path="/webhook", status=503, decision="error", reason="store_unavailable",
               event="ADD_ARTIFACT_ALIAS team/proj/data:v2 +retrain", body_sha256="b" * 64,
               proven=True)  # fmt: skip
    log.record("summary", since="2027-01-15T08:00:00+00:00", suppressed=40,
               by_reason={"401 bad_token": 40}, top_clients={"198.51.100.9": 40},
               distinct_clients=1)  # fmt: skip
    log.record("request", request_id="r5", client="203.0.113.5", method="POST",
               path="/webhook", status=202, decision="accepted", reason="queued",
               event=f"ADD_ARTIFACT_ALIAS team/{MARKUP}/data:v9 +retrain",
               rule=f"rule-{MARKUP}", job_id=5, body_sha256="c" * 64, proven=True)  # fmt: skip
    log.close()


def make_model(config: Config, name: str, accuracy: float, key_file: Path) -> None:
    staging = config.data_dir / "staging" / name
    staging.mkdir(parents=True)
    (staging / "model.safetensors").write_bytes(name.encode() * 10)
    epochs = [{"epoch": i + 1, "phase": "fp32" if i < 3 else "qat", "loss": 1.0 / (i + 1),
               "train_acc": 0.5 + i / 10, "val_acc": 0.45 + i / 10, "lr": 0.003, "seconds": 1.5}
              for i in range(4)]  # fmt: skip
    meta = ModelMeta(
        format=3, spec={"arch": "edgehook-cnn", "in_channels": 1, "height": 8, "width": 8,
                           "num_classes": 2, "channels": 32}, classes=["cat", MARKUP],
        normalisation={"mean": [0.5], "std": [0.5]}, engine="x86",
        metrics={"int8_accuracy": accuracy, "qat_accuracy": accuracy, "epochs": epochs,
                 "confusion": [[8, 2], [1, 9]],
                 "per_class": [{"class": "cat", "precision": 0.9, "recall": 0.8, "f1": 0.85,
                                "support": 10}]},
        weights_sha256=hashlib.sha256(name.encode() * 10).hexdigest(),
        sources=["team/proj/data:v1"], created_at=1_800_000_200.0, device="jetson", job_id=2,
    )  # fmt: skip
    (staging / "model.json").write_text(meta.to_json(), encoding="utf-8")
    signing.sign(staging, signing.load_private(key_file))
    registry.promote(config.models_dir, staging, name, 1.0)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    workspace = make_workspace(tmp_path)
    config = workspace.config()
    token = (tmp_path / "secrets" / "console_token").read_text().strip()
    jobs = fill_store(config)
    write_deliveries(config, workspace.audit_key.encode())
    key_file = tmp_path / "secrets" / "model_signing_key"
    make_model(config, "job1-attempt1", 0.80, key_file)
    make_model(config, "job2-attempt1", 0.85, key_file)
    console = make_console(config, {})
    yield Site(workspace, config, console, token, jobs)
    console.index.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)
