"""Fault matrix: a job whose data cannot start a process (an arg with a NUL byte or a lone
surrogate, as a queue filled by an older receiver could hold) fails alone, with its
reason audited; the job running beside it finishes, and the worker carries on."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.auditread import records
from tests.conftest import Workspace
from tests.pipeline.conftest import add_rules, command_rule, enqueue, job, log_text, python_command
from tests.pipeline.test_worker import RunWorker

pytestmark = pytest.mark.slow  # real worker processes and jobs


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a\x00b", "could not start the job: ValueError: embedded null byte"),
        (
            "a\ud800b",
            "could not start the job: UnicodeEncodeError: 'utf-8' codec can't encode "
            "character '\\ud800' in position 1: surrogates not allowed",
        ),
    ],
)
def test_a_poison_arg_fails_its_job_alone_and_the_worker_carries_on(
    workspace: Workspace, tmp_path: Path, run_worker: RunWorker, value: str, reason: str
) -> None:
    slow = python_command(tmp_path, "import time; time.sleep(1.0); print('done')")
    rules = command_rule("slow", slow) + command_rule(
        "poison", ["/bin/echo"], args='note = { type = "str" }'
    )
    config = add_rules(workspace, rules, worker="concurrency = 2\n")
    beside = enqueue(config, "slow")
    poisoned = enqueue(config, "poison", n=1, args={"note": value})
    after = enqueue(config, "slow", n=2)
    run_worker(config)

    assert job(config, poisoned)["state"] == "failed"
    assert job(config, poisoned)["reason"] == reason
    assert job(config, poisoned)["attempts"] == 1  # the same data fails every time: no retry
    # The job running beside it and the one queued after it were not disturbed.
    assert [job(config, j)["state"] for j in (beside, after)] == ["succeeded", "succeeded"]
    assert log_text(config, beside).strip() == "done"
    audited = [
        (r["transition"], r.get("reason"))
        for r in records(config.audit_dir / "worker")
        if r.get("job_id") == poisoned and r["kind"] == "job"
    ]
    assert audited == [("failed", reason)]
