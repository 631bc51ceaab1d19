"""Two receivers and two workers on two data dirs share one PostgreSQL database: one signed
delivery sent to both receivers is accepted once (202, then 200 duplicate) and runs once,
and the store URL's password reaches no log, audit line, job log or job environment."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from core.store import open_store
from edgehook.template import sample_body
from pipeline.queue import SqliteQueue
from tests.conftest import (
    Workspace,
    free_port,
    make_workspace,
    start_server,
    stop_server,
    wait_for,
)
from tests.pipeline.conftest import add_rules, command_rule, edgehook, python_command

pytestmark = pytest.mark.slow  # four edgehook processes


def post(url: str, body: bytes, workspace: Workspace) -> tuple[int, dict[str, object]]:
    digest = hmac.new(workspace.signing_secret.encode(), body, hashlib.sha256).digest()
    request = urllib.request.Request(
        url,
        data=body,
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {workspace.access_token}",
            "X-Wandb-Signature": base64.b64encode(digest).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_two_receivers_two_workers_one_database(tmp_path: Path, pg_url: str) -> None:
    runs = tmp_path / "runs"
    runs.mkdir(mode=0o777)
    os.chmod(runs, 0o777)
    argv = python_command(
        tmp_path,
        f"""
        import os
        with open("{runs}/done-" + os.environ["EDGEHOOK_JOB_ID"], "a") as f:
            f.write("x")
        with open("{runs}/environ-" + os.environ["EDGEHOOK_JOB_ID"], "w") as f:
            f.write(repr(os.environ))
        """,
    )
    first = make_workspace(tmp_path / "a")
    add_rules(first, command_rule("e2e", argv))
    shutil.copytree(first.dir, tmp_path / "b", ignore=shutil.ignore_patterns("data"))
    second = Workspace(
        tmp_path / "b",
        tmp_path / "b" / "edgehook.toml",
        first.access_token,
        first.signing_secret,
        first.audit_key,
    )
    # The test cluster trusts local connections, so the password is never asked for, but it
    # travels with the URL through every process as an operator's would.
    password = "pg-secret-" + os.urandom(8).hex()
    pg_url = pg_url.replace("edgehook@", f"edgehook:{password}@", 1)
    env = {"EDGEHOOK_STORE_URL": pg_url}
    servers = [start_server(w, free_port(), *env.items()) for w in (first, second)]
    workers = [edgehook(w, "worker", env=env) for w in (first, second)]
    try:
        body = sample_body(alias="e2e")
        answers = [post(f"{s.url}/webhook", body, first) for s in servers]
        assert answers[0][0] == 202 and answers[0][1]["status"] == "accepted"
        job_id = answers[0][1]["job_id"]
        assert answers[1][0] == 200 and answers[1][1]["status"] == "duplicate"
        queue = SqliteQueue(open_store(pg_url))
        wait_for(lambda: queue.get(job_id).state == "succeeded")  # type: ignore[union-attr,arg-type]
        assert (runs / f"done-{job_id}").read_text() == "x"
        assert queue.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 1
        queue.conn.close()
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=10)
        for server in servers:
            stop_server(server)
    assert (runs / f"environ-{job_id}").exists()
    leaked = [
        str(path)
        for root in (first.dir, second.dir, runs)
        for path in root.rglob("*")
        if path.is_file() and password.encode() in path.read_bytes()
    ]
    assert leaked == []
