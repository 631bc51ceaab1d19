"""Pull mode against the W&B-compatible fake, with the real wandb SDK: first sight, an
unchanged alias, a moved one (the worker downloads the new version), W&B down then back,
429 and auth failures, webhook and watcher on the same version, two devices on one alias,
and `edgehook watch --once` / `doctor`."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wandb")


from core.config import Config
from core.store import open_store
from pipeline.watch import Watcher, wandb_resolver
from tests.conftest import Clock, Workspace, make_client, make_workspace, run_edgehook, signed
from tests.fakes.wandb_server import FakeWandb
from tests.pipeline.conftest import add_rules, job, log_text

pytestmark = pytest.mark.slow  # the wandb SDK against the W&B fake

WATCHED = "team/proj/ds:production"
RULE = """
[[rules]]
name = "fetch"
event = "ADD_ARTIFACT_ALIAS"
alias = "production"
action = "download"
max_retries = 1
env_allow = ["WANDB_API_KEY", "WANDB_BASE_URL", "WANDB__GRAPHQL_RETRY_MAX",
             "WANDB_ERROR_REPORTING", "WANDB_SILENT"]
"""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeWandb]:
    with FakeWandb() as server:
        server.add("ds", {"a.txt": b"first"}, ["production"])
        for name, value in {
            "WANDB_BASE_URL": server.url,
            "WANDB__GRAPHQL_RETRY_MAX": "1",
            "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS": "1",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_SILENT": "true",
            "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
        }.items():
            monkeypatch.setenv(name, value)
        yield server


def watching(workspace: Workspace, first: str = "act", rule: str = RULE) -> Config:
    workspace.edit("[models]", '[artifacts]\nsource = "wandb"\n\n[models]')
    watch = f'\n[watch]\nartifacts = ["{WATCHED}"]\non_first_sight = "{first}"\n'
    return add_rules(workspace, rule, worker=watch)


class Lines:
    """The watcher's audit lines, as (kind, fields)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, kind: str, **fields: Any) -> None:
        self.lines.append((kind, fields))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.lines]


def watcher(config: Config, clock: Clock) -> tuple[Watcher, Lines]:
    lines = Lines()
    made = Watcher(config, wandb_resolver("k" * 40), lines, clock=clock, rng=random.Random(0))
    return made, lines


def jobs(config: Config) -> list[dict[str, Any]]:
    conn = open_store(config.store_path)
    try:
        rows = conn.execute(
            "SELECT jobs.id, jobs.rule, events.version_string, events.event_json, events.client "
            "FROM jobs JOIN events ON events.id = jobs.event_id ORDER BY jobs.id"
        ).fetchall()
    finally:
        conn.close()
    return [
        {"id": r[0], "rule": r[1], "version": r[2], "event": json.loads(r[3]), "client": r[4]}
        for r in rows
    ]


def test_first_sight_acts_then_an_unchanged_alias_queues_nothing(
    workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    config = watching(workspace)
    watch, lines = watcher(config, clock)
    (first,) = watch.poll()
    assert (first.outcome, first.version) == ("queued", "v0")
    (queued,) = jobs(config)
    assert queued["rule"] == "fetch" and queued["client"] == "watch"
    assert queued["version"] == "team/proj/ds:v0"  # the exact version, not the alias
    event = queued["event"]
    assert (event["event_type"], event["alias"]) == ("ADD_ARTIFACT_ALIAS", "production")
    assert event["artifact_id"] == f"wandb-artifact://_id/{fake.versions[0].id}"
    for _ in range(3):
        clock.advance(60)
        assert [o.outcome for o in watch.poll()] == ["unchanged"]
    assert len(jobs(config)) == 1
    assert lines.kinds() == ["watch"]  # unchanged polls are counted, not written
    assert lines.lines[0][1]["source"] == "watch" and lines.lines[0][1]["job_id"] == queued["id"]
    clock.advance(3600)
    watch.poll()
    assert lines.lines[-1] == (
        "watch_summary",
        {"source": "watch", "polls": 5, "unchanged": 4, "errors": 0},
    )


def test_record_on_first_sight_then_a_move_is_downloaded_by_the_worker(
    workspace: Workspace, fake: FakeWandb, run_worker: Callable[..., object]
) -> None:
    config = watching(workspace, first="record")
    clock = Clock(time.time() - 600)  # the worker runs jobs by the wall clock
    watch, _ = watcher(config, clock)
    assert [o.outcome for o in watch.poll()] == ["recorded"]
    assert jobs(config) == []
    fake.add("ds", {"a.txt": b"second", "b.txt": b"more"}, ["production"])  # the alias moves
    clock.advance(60)
    (moved,) = watch.poll()
    assert (moved.outcome, moved.version) == ("queued", "v1")
    env = {"WANDB_BASE_URL": fake.url, "WANDB__GRAPHQL_RETRY_MAX": "1", "WANDB_SILENT": "true"}
    run_worker(config, env=env, wandb_key="k" * 40)
    first = job(config, moved.job_id or 0)
    assert first["state"] == "succeeded", log_text(config, moved.job_id or 0)
    assert "downloaded team/proj/ds:v1: 2 files, 10 bytes" in str(first["summary"])
    fake.move("ds", "production", 0)  # and back: v0 was recorded, never acted on
    clock.advance(60)
    assert [(o.outcome, o.version) for o in watch.poll()] == [("queued", "v0")]


def test_wandb_down_backs_off_reports_once_and_recovers(
    workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    config = watching(workspace)
    watch, lines = watcher(config, clock)
    fake.fail_graphql = True
    for _ in range(3):
        assert [o.outcome for o in watch.poll()] == ["error"]
        clock.advance(60)
    assert watch.failed_polls == 3
    assert 480 <= watch.next_wait() <= 480 * 1.1  # 60 s doubled three times
    assert lines.kinds() == ["watch_error"]  # once per change of state
    assert lines.lines[0][1]["error"] == "server"
    done = run_edgehook("doctor", config=workspace.config_path, cwd=workspace.dir)
    assert f"{WATCHED}: nothing acted on; last good poll never; last error" in done.stdout
    assert "server: Failed to verify credentials" in done.stdout
    assert "HTTP 500: internal error (3 in a row)" in done.stdout
    fake.fail_graphql = False
    assert [o.outcome for o in watch.poll()] == ["queued"]
    assert watch.failed_polls == 0 and lines.kinds() == ["watch_error", "watch_recovered", "watch"]
    for _ in range(20):
        watch.failed_polls += 1
    assert watch.next_wait() <= 900 * 1.1  # capped: watch.backoff_max_s


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limited"), (401, "auth")])
def test_rate_limits_and_auth_failures_are_told_apart(
    status: int, kind: str, workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    config = watching(workspace)
    watch, lines = watcher(config, clock)
    fake.graphql_status = status
    (outcome,) = watch.poll()
    assert outcome.outcome == "error" and outcome.detail.startswith(f"{kind}: ")
    assert lines.lines == [
        (
            "watch_error",
            {
                "source": "watch",
                "artifact": WATCHED,
                "error": kind,
                "detail": outcome.detail[len(kind) + 2 :],
            },
        )
    ]


def webhook(
    workspace: Workspace, fake: FakeWandb, config: Config, clock: Clock, **extra: str
) -> Any:
    """W&B's delivery for the alias on v0, as the recommended template sends it."""
    body = json.dumps(
        {
            "event_type": "ADD_ARTIFACT_ALIAS",
            "artifact_version": f"wandb-artifact://_id/{fake.versions[0].id}",
            "artifact_version_string": WATCHED,
            "alias": "production",
            **extra,
        }
    ).encode()
    client, _ = make_client(config, clock)
    with client:
        return client.post("/webhook", content=body, headers=signed(workspace, body))


def test_a_version_a_webhook_queued_is_not_queued_again_by_the_watcher(
    workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    config = watching(workspace)
    answer = webhook(workspace, fake, config, clock)
    assert answer.status_code == 202
    watch, _ = watcher(config, clock)
    (outcome,) = watch.poll()
    assert (outcome.outcome, outcome.job_id) == ("duplicate", answer.json()["job_id"])
    assert len(jobs(config)) == 1


def test_a_version_the_watcher_queued_is_a_duplicate_for_the_webhook(
    workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    config = watching(workspace)
    watch, _ = watcher(config, clock)
    (outcome,) = watch.poll()
    assert outcome.outcome == "queued"
    answer = webhook(workspace, fake, config, clock)
    assert (answer.status_code, answer.json()) == (
        200,
        {"status": "duplicate", "job_id": outcome.job_id},
    )
    assert len(jobs(config)) == 1


def test_two_devices_watching_one_alias_each_converge(fake: FakeWandb, tmp_path: Path) -> None:
    devices = [watching(make_workspace(tmp_path / f"device{i}")) for i in range(2)]
    clocks = [Clock(), Clock()]
    watchers = [watcher(c, k)[0] for c, k in zip(devices, clocks, strict=True)]
    assert [w.poll()[0].outcome for w in watchers] == ["queued", "queued"]
    fake.add("ds", {"a.txt": b"third"}, ["production"])
    for k in clocks:
        k.advance(60)
    assert [(o.outcome, o.version) for w in watchers for o in w.poll()] == [("queued", "v1")] * 2
    for config in devices:
        assert [j["version"] for j in jobs(config)] == ["team/proj/ds:v0", "team/proj/ds:v1"]


def test_watch_once_on_the_command_line(workspace: Workspace, fake: FakeWandb) -> None:
    watching(workspace)
    keyless = run_edgehook("watch", "--once", config=workspace.config_path, cwd=workspace.dir)
    assert keyless.returncode == 1
    assert keyless.stdout.strip() == (
        f"{WATCHED}: error: auth: No API key configured. Use `wandb login` to log in."
    )
    env = {**os.environ, "EDGEHOOK_WANDB_API_KEY": "k" * 40}

    def watch_once() -> subprocess.CompletedProcess[str]:
        return run_edgehook(
            "watch", "--once", config=workspace.config_path, cwd=workspace.dir, env=env
        )

    done = watch_once()
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{WATCHED} v0: queued: rule fetch (job 1)"
    again = watch_once()
    assert again.stdout.strip() == f"{WATCHED} v0: unchanged"
    shown = run_edgehook("audit", "show", config=workspace.config_path, cwd=workspace.dir)
    assert shown.stdout.count("[watch]") == 1 and shown.stdout.count("[watch_summary]") == 3
    assert shown.stdout.count("[watch_error]") == 1 and "[watch_recovered]" in shown.stdout
    verified = run_edgehook("audit", "verify", config=workspace.config_path, cwd=workspace.dir)
    assert "watch: ok: 6 lines" in verified.stdout
    fake.fail_graphql = True
    failed = watch_once()
    assert failed.returncode == 1 and failed.stdout.startswith(f"{WATCHED}: error: server: ")


def test_watch_without_aliases_is_one_line_and_exit_2(workspace: Workspace) -> None:
    done = run_edgehook("watch", "--once", config=workspace.config_path, cwd=workspace.dir)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.strip() == (
        "edgehook: config error: watch.artifacts: is empty; fix: list the aliases to watch: "
        'artifacts = ["entity/project/name:alias"]'
    )


def test_a_webhook_client_is_unaffected_by_the_dedupe_key(
    workspace: Workspace, fake: FakeWandb, clock: Clock
) -> None:
    """Two webhooks about the same version and alias with different bytes stay two jobs
    (webhooks among themselves keep the byte and canonical-JSON rules)."""
    config = watching(workspace)
    first = webhook(workspace, fake, config, clock)
    second = webhook(workspace, fake, config, clock, author="someone")
    assert (first.status_code, second.status_code) == (202, 202)


@pytest.mark.parametrize(
    ("rule", "detail"),
    [
        (RULE.replace('alias = "production"', 'alias = "staging"'), "no rule matches"),
        (
            RULE + '[rules.args]\nepochs = { type = "int", required = true }\n',
            "rule fetch: argument 'epochs' is required",
        ),
    ],
    ids=["no-rule", "required-arg"],
)
def test_an_event_no_rule_can_take_is_ignored_and_queues_nothing(
    workspace: Workspace, fake: FakeWandb, clock: Clock, rule: str, detail: str
) -> None:
    config = watching(workspace, rule=rule)
    watch, lines = watcher(config, clock)
    (outcome,) = watch.poll()
    assert (outcome.outcome, outcome.detail, outcome.job_id) == ("ignored", detail, None)
    assert jobs(config) == []
    assert lines.lines[-1][1]["outcome"] == "ignored" and lines.lines[-1][1]["detail"] == detail
