"""`edgehook wandb setup` through the real wandb SDK (0.31.0) against the loopback W&B fake:
the automations API calls it makes, idempotence, updates, --dry-run and its errors."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

pytest.importorskip("wandb")

from edgehook.template import RECOMMENDED_TEMPLATE
from tests.conftest import Workspace, run_edgehook
from tests.fakes.wandb_server import FakeWandb

pytestmark = pytest.mark.slow  # each test starts the wandb SDK in a fresh process

URL = "https://edge.example.com/webhook"
RETRAIN_FILTER = {"$or": [{"$and": [{"alias": {"$eq": "retrain"}}]}]}


@pytest.fixture
def fake() -> Iterator[FakeWandb]:
    with FakeWandb() as server:
        server.add_webhook("other-device", "https://other.example.com/webhook")
        server.add_webhook("edgehook-jetson", URL)
        server.add("cifar", {"a.txt": b"x"}, ["latest"])
        yield server


def wandb_setup(
    workspace: Workspace, fake: FakeWandb, *words: str, key: str | None = "k" * 40
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB", "EDGEHOOK"))}
    env.update(
        WANDB_BASE_URL=fake.url,
        WANDB__GRAPHQL_RETRY_MAX="0",
        WANDB_ERROR_REPORTING="false",
        WANDB_SILENT="true",
        WANDB_CONFIG_DIR=str(workspace.dir / "wandb-config"),
        HOME=str(workspace.dir),  # no ~/.netrc from the machine running the tests
    )
    if key:
        env["WANDB_API_KEY"] = key
    return run_edgehook(
        "wandb",
        "setup",
        "--entity",
        "team",
        "--project",
        "proj",
        *words,
        cwd=workspace.dir,
        config=workspace.config_path,
        env=env,
        timeout=90,
    )


def test_creates_the_automation_for_the_webhook_at_the_url(
    workspace: Workspace, fake: FakeWandb
) -> None:
    result = wandb_setup(workspace, fake, "--url", URL)
    assert result.returncode == 0, result.stderr
    assert "created automation 'edgehook-retrain'" in result.stdout
    assert fake.operations.count("CreateAutomation") == 1
    (trigger,) = fake.triggers
    assert trigger["name"] == "edgehook-retrain"
    assert trigger["enabled"] is True
    assert trigger["scope"] == {"__typename": "Project", "id": fake.PROJECT_ID, "name": "proj"}
    assert trigger["event"]["eventType"] == "ADD_ARTIFACT_ALIAS"
    assert json.loads(trigger["event"]["filter"]) == {"filter": RETRAIN_FILTER}
    assert trigger["action"]["integration"]["name"] == "edgehook-jetson"
    assert json.loads(trigger["action"]["requestPayload"]) == RECOMMENDED_TEMPLATE


def test_running_it_again_changes_nothing(workspace: Workspace, fake: FakeWandb) -> None:
    assert wandb_setup(workspace, fake, "--url", URL).returncode == 0
    before = json.dumps(fake.triggers)
    again = wandb_setup(workspace, fake, "--url", URL)
    assert again.returncode == 0, again.stderr
    assert "automation 'edgehook-retrain' is up to date" in again.stdout
    assert fake.operations.count("CreateAutomation") == 1
    assert "UpdateAutomation" not in fake.operations
    assert json.dumps(fake.triggers) == before


def test_a_changed_alias_or_payload_updates_the_automation_in_place(
    workspace: Workspace, fake: FakeWandb
) -> None:
    assert wandb_setup(workspace, fake, "--url", URL).returncode == 0
    # someone edited the payload in the UI; and the device now wants another alias
    fake.triggers[0]["action"]["requestPayload"] = json.dumps({"hand": "edited"})
    result = wandb_setup(workspace, fake, "--url", URL, "--alias", "download")
    assert result.returncode == 0, result.stderr
    assert "changes  eventFilter, triggeredActionConfig" in result.stdout
    assert "updated automation 'edgehook-retrain'" in result.stdout
    (trigger,) = fake.triggers
    assert json.loads(trigger["event"]["filter"])["filter"]["$or"][0]["$and"] == [
        {"alias": {"$eq": "download"}}
    ]
    assert json.loads(trigger["action"]["requestPayload"]) == RECOMMENDED_TEMPLATE


def test_dry_run_reads_but_writes_nothing(workspace: Workspace, fake: FakeWandb) -> None:
    result = wandb_setup(workspace, fake, "--webhook", "edgehook-jetson", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would create automation 'edgehook-retrain'" in result.stdout
    assert '"artifact_version_string": "${artifact_version_string}"' in result.stdout
    assert fake.triggers == []
    assert not {"CreateAutomation", "UpdateAutomation"} & set(fake.operations)


def test_collection_scope(workspace: Workspace, fake: FakeWandb) -> None:
    result = wandb_setup(workspace, fake, "--url", URL, "--collection", "cifar")
    assert result.returncode == 0, result.stderr
    assert "collection team/proj/cifar" in result.stdout
    (trigger,) = fake.triggers
    assert trigger["scope"]["__typename"] == "ArtifactSequence"
    assert trigger["scope"]["name"] == "cifar"


def test_the_url_recorded_by_the_tunnel_is_the_default(
    workspace: Workspace, fake: FakeWandb
) -> None:
    data_dir = workspace.config().data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "tunnel.json").write_text(json.dumps({"webhook_url": URL}), encoding="utf-8")
    result = wandb_setup(workspace, fake)
    assert result.returncode == 0, result.stderr
    assert fake.triggers[0]["action"]["integration"]["urlEndpoint"] == URL


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (("--url", "https://nowhere.example.com/webhook"), "no webhook in team 'team' points at"),
        (("--webhook", "missing"), "no webhook named 'missing' in team 'team' (it has: "),
        ((), "which W&B webhook? pass --webhook NAME"),
        (("--url", URL, "--collection", "nope"), "no dataset collection team/proj/nope in W&B"),
    ],
)
def test_errors_are_one_line_and_change_nothing(
    workspace: Workspace, fake: FakeWandb, words: tuple[str, ...], expected: str
) -> None:
    result = wandb_setup(workspace, fake, *words)
    assert result.returncode == 1
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert fake.triggers == []


def test_a_server_error_fails_fast_with_one_line(workspace: Workspace, fake: FakeWandb) -> None:
    import time

    fake.fail_graphql = True
    started = time.monotonic()
    result = wandb_setup(workspace, fake, "--url", URL)
    assert time.monotonic() - started < 30  # not minutes of SDK retries
    assert result.returncode == 1
    assert result.stderr.startswith("edgehook: W&B request failed"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_no_w_and_b_key_says_how_to_give_one(workspace: Workspace, fake: FakeWandb) -> None:
    result = wandb_setup(workspace, fake, "--url", URL, key=None)
    assert result.returncode == 1
    assert "set WANDB_API_KEY, run `wandb login`" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
