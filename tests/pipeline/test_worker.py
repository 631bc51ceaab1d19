"""The worker with real child processes: isolation, limits, outcomes, retries, coalescing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from core.auditread import records
from pipeline.artifacts import write_local_version
from tests.conftest import Workspace, run_edgehook
from tests.pipeline.conftest import (
    add_rules,
    attempts,
    command_rule,
    edgehook,
    enqueue,
    job,
    log_text,
    marking_job,
    processes_with,
    python_command,
    wait_for,
)

RunWorker = Callable[..., object]


def lingering_job(tmp_path: Path) -> tuple[str, list[str]]:
    """A job that starts a grandchild (findable by a marker) and then runs for 5 minutes."""
    marker = f"edgehook-test-{uuid.uuid4().hex}"
    argv = python_command(
        tmp_path,
        f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "{marker}"])
        print("started", flush=True)
        time.sleep(300)
        """,
    )
    return marker, argv


def test_command_gets_args_and_event_as_environment(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(
        tmp_path,
        """
        import json, os
        print("ARG", os.environ["EDGEHOOK_ARG_MESSAGE"], os.environ["EDGEHOOK_ARG_LOUD"])
        print("EVENT", json.loads(os.environ["EDGEHOOK_EVENT"])["alias"])
        mode = oct(os.stat(".").st_mode & 0o777)
        print("CWD", os.getcwd() == os.environ["EDGEHOOK_JOB_DIR"], mode)
        """,
    )
    config = add_rules(
        workspace,
        command_rule("notify", argv, args='message = { type = "str" }\nloud = { type = "bool" }'),
    )
    job_id = enqueue(config, "notify", args={"message": "hello there", "loud": True})
    run_worker(config)
    assert job(config, job_id)["state"] == "succeeded"
    text = log_text(config, job_id)
    assert "ARG hello there true" in text and "EVENT notify" in text
    assert "CWD True 0o700" in text
    kinds = [
        (r.get("transition"), r.get("job_id"))
        for r in records(config.audit_dir / "worker")
        if r["kind"] == "job"
    ]
    assert kinds == [("started", job_id), ("succeeded", job_id)]


def test_a_job_cannot_read_the_receivers_secrets(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    secret_files = [
        workspace.dir / "secrets" / name for name in ("access_token", "signing_secret", "audit_key")
    ]
    # Somewhere the job user may read (pytest's own tmp tree is private to root).
    public = Path(tempfile.mkdtemp(prefix="edgehook-snoop-"))
    public.chmod(0o755)
    script = public / "snoop.sh"
    script.write_text(
        "env | sort\n"
        + "".join(f"cat {p} 2>/dev/null && echo READ || echo DENIED\n" for p in secret_files)
        + "ls -l /proc/$$/fd/\n"
    )
    argv = ["/bin/sh", str(script)]
    as_root = os.geteuid() == 0
    worker = 'job_user = "nobody"\n' if as_root else ""
    config = add_rules(
        workspace, command_rule("snoop", argv, extra='env_allow = ["PATH", "HOME"]'), worker=worker
    )
    script.chmod(0o644)
    worker_env = {
        "EDGEHOOK_ACCESS_TOKEN": workspace.access_token,
        "EDGEHOOK_SIGNING_SECRET": workspace.signing_secret,
        "EDGEHOOK_AUDIT_KEY": workspace.audit_key,
        "PATH": "/usr/bin:/bin",
        "HOME": "/root",
    }
    job_id = enqueue(config, "snoop")
    try:
        run_worker(
            config, env=worker_env, wandb_key="w" * 40, audit_key=workspace.audit_key.encode()
        )
    finally:
        shutil.rmtree(public)
    assert job(config, job_id)["state"] == "succeeded", log_text(config, job_id)
    text = log_text(config, job_id)
    for secret in (workspace.access_token, workspace.signing_secret, workspace.audit_key, "w" * 40):
        assert secret not in text
    assert "EDGEHOOK_ACCESS_TOKEN" not in text and "WANDB_API_KEY" not in text
    assert "HOME=/root" in text  # allowed names do pass
    assert "edgehook.db" not in text and "audit" not in text  # no inherited descriptors
    if as_root:
        assert text.count("DENIED") == 3


def test_wandb_key_only_for_rules_that_allow_it(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(tmp_path, 'import os; print("KEY", os.environ.get("WANDB_API_KEY"))')
    config = add_rules(
        workspace,
        command_rule("with", argv, extra='env_allow = ["WANDB_API_KEY"]')
        + command_rule("without", argv),
    )
    with_id, without_id = enqueue(config, "with"), enqueue(config, "without", n=1)
    run_worker(config, env={"WANDB_API_KEY": "from-the-environment"}, wandb_key="k" * 40)
    assert f"KEY {'k' * 40}" in log_text(config, with_id)
    assert "KEY None" in log_text(config, without_id)


def test_timeout_kills_the_whole_group_and_fails(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    marker, argv = lingering_job(tmp_path)
    config = add_rules(
        workspace, command_rule("slow", argv, timeout_s=1), worker="kill_grace_s = 0.5\n"
    )
    job_id = enqueue(config, "slow")
    started = time.monotonic()
    run_worker(config)
    assert time.monotonic() - started < 10
    row = job(config, job_id)
    assert row["state"] == "failed" and "timed out after 1 s" in str(row["reason"])
    wait_for(lambda: processes_with(marker) == [], timeout=5)  # the whole group is gone


def test_transient_failure_retries_then_succeeds(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    counter = tmp_path / "count"
    argv = python_command(
        tmp_path,
        f"""
        from pathlib import Path
        p = Path("{counter}")
        n = int(p.read_text()) + 1 if p.exists() else 1
        p.write_text(str(n))
        print("attempt", n)
        raise SystemExit(75 if n < 3 else 0)
        """,
    )
    config = add_rules(workspace, command_rule("flaky", argv))
    job_id = enqueue(config, "flaky")
    run_worker(config)
    assert job(config, job_id)["state"] == "succeeded"
    assert attempts(config, job_id) == ["retry", "retry", "succeeded"]


def test_permanent_failure_is_not_retried_and_keeps_the_reason(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(tmp_path, 'print("bad input: no such model"); raise SystemExit(3)')
    config = add_rules(workspace, command_rule("broken", argv))
    job_id = enqueue(config, "broken")
    run_worker(config)
    row = job(config, job_id)
    assert row["state"] == "failed" and row["reason"] == "bad input: no such model"
    assert attempts(config, job_id) == ["failed"]


def test_job_log_is_capped(workspace: Workspace, tmp_path: Path, run_worker: RunWorker) -> None:
    argv = python_command(
        tmp_path,
        """
        import sys
        for i in range(40000):
            sys.stdout.write(f"line {i:06d} " + "x" * 40 + "\\n")
        print("the end")
        """,
    )
    config = add_rules(workspace, command_rule("chatty", argv), worker="max_log_bytes = 131072\n")
    job_id = enqueue(config, "chatty")
    run_worker(config)
    path = config.jobs_dir / str(job_id) / "attempt-1.log"
    assert path.stat().st_size <= 131072 + 100
    text = path.read_text()
    assert text.startswith("line 000000") and text.rstrip().endswith("the end")
    assert "bytes dropped]" in text


def test_queued_retrains_coalesce_into_the_newest(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(tmp_path, 'import os; print("RAN", os.environ["EDGEHOOK_JOB_ID"])')
    config = add_rules(workspace, command_rule("train", argv, extra="coalesce = true"))
    ids = [enqueue(config, "train", n=n, coalesce_key="train:e/p/c") for n in range(3)]
    run_worker(config)
    assert [job(config, i)["state"] for i in ids] == ["superseded", "superseded", "succeeded"]
    assert job(config, ids[0])["superseded_by"] == ids[2]
    transitions = [
        (r["job_id"], r["transition"])
        for r in records(config.audit_dir / "worker")
        if r["kind"] == "job"
    ]
    assert (ids[0], "superseded") in transitions and (ids[2], "succeeded") in transitions


def test_download_verifies_local_artifacts(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    root = tmp_path / "artifacts"
    write_local_version(
        root,
        "team/proj/data:v1",
        {"train/a.bin": b"a" * 1000, "b.txt": b"b"},
        aliases=("download",),
    )
    tampered = write_local_version(root, "team/proj/data:v2", {"a.bin": b"a" * 1000})
    (tampered / "a.bin").write_bytes(b"z" * 1000)  # same size, other bytes
    config = add_rules(
        workspace,
        f"""
        [artifacts]
        source = "local"
        local_root = "{root}"

        [[rules]]
        name = "fetch"
        event = "ADD_ARTIFACT_ALIAS"
        action = "download"
        """.replace("\n        ", "\n"),
    )
    good = enqueue(
        config,
        "fetch",
        action="download",
        event={"entity": "team", "project": "proj", "collection": "data", "alias": "download"},
    )
    bad = enqueue(
        config,
        "fetch",
        action="download",
        n=1,
        event={"entity": "team", "project": "proj", "collection": "data", "version": "v2"},
    )
    run_worker(config)
    assert job(config, good)["state"] == "succeeded"
    assert "team/proj/data:v1: 2 files, 1001 bytes, digests verified" in str(
        job(config, good)["summary"]
    )
    fetched = config.jobs_dir / str(good) / "attempt-1" / "artifact" / "train" / "a.bin"
    assert fetched.read_bytes() == b"a" * 1000
    row = job(config, bad)
    assert row["state"] == "failed" and "digest mismatch" in str(row["reason"])
    assert attempts(config, bad) == ["failed"]


def test_unknown_rule_fails_the_job_with_a_reason(
    workspace: Workspace, run_worker: RunWorker
) -> None:
    config = workspace.config()
    job_id = enqueue(config, "gone")
    run_worker(config)
    row = job(config, job_id)
    assert row["state"] == "failed" and "no longer configured" in str(row["reason"])


def test_cancel_kills_a_running_job_and_leaves_nothing(
    workspace: Workspace, tmp_path: Path
) -> None:
    marker, argv = lingering_job(tmp_path)
    config = add_rules(workspace, command_rule("long", argv), worker="kill_grace_s = 1\n")
    job_id = enqueue(config, "long")
    worker = edgehook(workspace, "worker")
    try:
        wait_for(lambda: job(config, job_id)["state"] == "running" and bool(processes_with(marker)))
        cancel = run_edgehook(
            "jobs", "cancel", str(job_id), cwd=workspace.dir, config=workspace.config_path
        )
        assert cancel.returncode == 0 and "will kill it" in cancel.stdout
        wait_for(lambda: job(config, job_id)["state"] == "cancelled")
        wait_for(lambda: processes_with(marker) == [], timeout=5)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert worker.returncode == 0
    operator = [r for r in records(config.audit_dir / "operator")]
    assert operator[-1]["transition"] == "cancel_requested"


def test_sigterm_lets_the_running_job_finish(workspace: Workspace, tmp_path: Path) -> None:
    argv = python_command(tmp_path, 'import time; time.sleep(1.5); print("finished")')
    config = add_rules(workspace, command_rule("steady", argv), worker="shutdown_grace_s = 20\n")
    job_id = enqueue(config, "steady")
    worker = edgehook(workspace, "worker")
    wait_for(lambda: job(config, job_id)["state"] == "running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert job(config, job_id)["state"] == "succeeded"


def test_sigterm_hands_back_a_job_that_outlives_the_grace(
    workspace: Workspace, tmp_path: Path
) -> None:
    argv = python_command(tmp_path, "import time; time.sleep(300)")
    config = add_rules(workspace, command_rule("stubborn", argv), worker="shutdown_grace_s = 0.5\n")
    job_id = enqueue(config, "stubborn")
    worker = edgehook(workspace, "worker")
    wait_for(lambda: job(config, job_id)["state"] == "running")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    row = job(config, job_id)
    assert row["state"] == "queued" and row["attempts"] == 0
    assert attempts(config, job_id) == ["handed back"]


def test_killed_worker_job_is_requeued_and_completes_exactly_once(
    workspace: Workspace, tmp_path: Path
) -> None:
    runs, argv = marking_job(tmp_path, 1.0)
    config = add_rules(workspace, command_rule("once", argv), worker="lease_s = 2\n")
    job_id = enqueue(config, "once")
    first = edgehook(workspace, "worker")
    wait_for(lambda: job(config, job_id)["state"] == "running")
    wait_for(lambda: processes_with(argv[1]) != [])  # the child is running
    first.send_signal(signal.SIGKILL)
    first.wait()
    # The child dies with its worker (parent-death signal), well before its 1 s of work.
    wait_for(lambda: processes_with(argv[1]) == [], timeout=5)
    assert not (runs / f"done-{job_id}").exists()
    with sqlite3.connect(config.store_path) as conn:
        (expires,) = conn.execute(
            "SELECT lease_expires FROM jobs WHERE id = ?", (job_id,)
        ).fetchone()
    wait_for(lambda: time.time() > expires)  # the dead worker's lease has run out
    second = edgehook(workspace, "worker", "--once")
    assert second.wait(timeout=60) == 0
    assert job(config, job_id)["state"] == "succeeded"
    assert (runs / f"done-{job_id}").read_text() == "x"
    assert attempts(config, job_id) == ["lost", "succeeded"]


def test_only_one_worker_per_data_dir(workspace: Workspace, tmp_path: Path) -> None:
    argv = python_command(tmp_path, "import time; time.sleep(300)")
    config = add_rules(workspace, command_rule("hold", argv), worker="shutdown_grace_s = 0\n")
    job_id = enqueue(config, "hold")
    first = edgehook(workspace, "worker")
    try:
        wait_for(lambda: job(config, job_id)["state"] == "running")  # the lock is held
        second = run_edgehook(
            "worker", "--once", cwd=workspace.dir, config=workspace.config_path, timeout=30
        )
        assert second.returncode == 1 and "another edgehook worker" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=30)


@pytest.mark.parametrize(
    "words",
    [
        ["worker"],
        ["jobs"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["jobs", "logs"],
        ["jobs", "cancel"],
        ["jobs", "retry"],
    ],
    ids=" ".join,
)
def test_worker_and_jobs_help(words: list[str], tmp_path: Path) -> None:
    result = run_edgehook(*words, "--help", cwd=tmp_path)
    assert result.returncode == 0 and "examples:" in result.stdout


def test_jobs_list_show_logs_retry(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(tmp_path, 'print("oops"); raise SystemExit(2)')
    config = add_rules(workspace, command_rule("fails", argv))
    job_id = enqueue(config, "fails")
    run_worker(config, audit_key=workspace.audit_key.encode())

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_edgehook("jobs", *args, cwd=workspace.dir, config=workspace.config_path)

    listed = cli("list", "--json")
    assert json.loads(listed.stdout.splitlines()[0])["state"] == "failed"
    assert "failed" in cli("list").stdout
    shown = cli("show", str(job_id))
    assert "attempt 1:" in shown.stdout and "oops" in shown.stdout
    assert cli("logs", str(job_id)).stdout.strip() == "oops"
    assert cli("retry", str(job_id)).stdout.strip() == f"job {job_id}: queued again"
    again = cli("retry", str(job_id))
    assert again.returncode == 1 and "only failed" in again.stderr
    missing = cli("show", "999")
    assert missing.returncode == 1 and "no job 999" in missing.stderr


def test_resource_limits_apply_to_the_child(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    files = python_command(
        tmp_path,
        """
        handles = []
        try:
            for _ in range(100):
                handles.append(open("/dev/null"))
        except OSError as exc:
            print("FILES", len(handles), type(exc).__name__)
        """,
    )
    memory = python_command(
        tmp_path,
        """
        try:
            block = bytearray(400 * 1024 * 1024)
            print("ALLOCATED")
        except MemoryError:
            print("MEMORY refused")
        """,
    )
    cpu = python_command(tmp_path, "while True: pass")
    config = add_rules(
        workspace,
        command_rule("files", files)
        + command_rule("memory", memory)
        + command_rule("cpu", cpu, timeout_s=30),
        worker="open_files = 32\naddress_space_mb = 300\ncpu_seconds = 1\n",
    )
    ids = {name: enqueue(config, name, n=n) for n, name in enumerate(("files", "memory", "cpu"))}
    run_worker(config)
    assert "FILES" in log_text(config, ids["files"])
    assert int(log_text(config, ids["files"]).split()[1]) < 32
    assert "MEMORY refused" in log_text(config, ids["memory"])
    cpu_row = job(config, ids["cpu"])
    assert cpu_row["state"] == "failed" and "SIGXCPU" in str(cpu_row["reason"])


def test_concurrency_runs_jobs_side_by_side(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    argv = python_command(
        tmp_path,
        """
        import time
        print("START", time.time(), flush=True)
        time.sleep(1.0)
        print("END", time.time())
        """,
    )
    config = add_rules(workspace, command_rule("pair", argv), worker="concurrency = 2\n")
    first, second = enqueue(config, "pair"), enqueue(config, "pair", n=1)
    run_worker(config)

    def span(job_id: int) -> tuple[float, float]:
        words = log_text(config, job_id).split()
        return float(words[1]), float(words[3])

    (a_start, a_end), (b_start, b_end) = span(first), span(second)
    assert a_start < b_end and b_start < a_end  # the two 1 s jobs ran at the same time


def test_what_a_job_reports_producing_is_not_run_again(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker
) -> None:
    from core.store import Delivery, open_store
    from pipeline.queue import SqliteQueue

    argv = python_command(
        tmp_path,
        """
        import json
        json.dump({"summary": "uploaded model", "produced": [
            {"version_string": "my-team/edge-demo/model:v4", "artifact_id": None}]},
            open("result.json", "w"))
        """,
    )
    config = add_rules(workspace, command_rule("publish", argv))
    job_id = enqueue(config, "publish")
    run_worker(config)
    assert job(config, job_id)["summary"] == "uploaded model"
    conn = open_store(config.store_path)
    try:
        again = SqliteQueue(conn).enqueue(
            Delivery(
                received_at=time.time(),
                request_id="x",
                client="203.0.113.1",
                body_sha256="f" * 64,
                event_type="CREATE_ARTIFACT",
                version_string="my-team/edge-demo/model:v4",
                event_json="{}",
                rule="publish",
                action="command",
                args_json="{}",
            ),
            86400,
        )
    finally:
        conn.close()
    assert again.produced_here and again.job_id is None
