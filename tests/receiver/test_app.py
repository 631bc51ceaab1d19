import hashlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from core.audit import list_segments
from core.auditread import is_lost, records, verify
from core.store import SCHEMA_VERSION
from edgehook.template import sample_body
from receiver.committer import Committer
from receiver.services import Services
from tests.conftest import Clock, Workspace, make_client, signed

URL = "/webhook"
BODY = sample_body()

Client = tuple[TestClient, Services]


def jobs(services: Services) -> list[tuple[int, str, str]]:
    with sqlite3.connect(services.config.store_path) as conn:
        return conn.execute("SELECT id, action, args_json FROM jobs ORDER BY id").fetchall()


def audit_lines(services: Services) -> list[dict[str, object]]:
    return [r for r in records(services.config.audit_dir) if r["kind"] == "request"]


def test_signed_delivery_is_committed_then_202(app_client: Client, workspace: Workspace) -> None:
    client, services = app_client
    reply = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    assert reply.status_code == 202
    assert reply.json() == {"status": "accepted", "job_id": 1}
    assert reply.headers["x-request-id"]
    assert jobs(services) == [(1, "retrain", '{"batch_size": 64, "lr": 0.003, "seed": 0}')]
    line = audit_lines(services)[-1]
    assert line["decision"] == "accepted" and line["job_id"] == 1
    assert line["client"] == "203.0.113.7"
    assert line["event"] == "ADD_ARTIFACT_ALIAS my-team/edge-demo/cifar10-subset:retrain +retrain"


def test_identical_delivery_is_a_duplicate_within_the_window(
    app_client: Client, workspace: Workspace, clock: Clock
) -> None:
    client, services = app_client
    first = client.post(URL, content=BODY, headers=signed(workspace, BODY)).json()
    clock.advance(23 * 3600)
    again = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "job_id": first["job_id"]}
    assert len(jobs(services)) == 1
    clock.advance(2 * 3600)
    later = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    assert later.status_code == 202 and later.json()["job_id"] == 2


def test_event_matching_no_rule_is_ignored(app_client: Client, workspace: Workspace) -> None:
    client, services = app_client
    body = sample_body(
        alias="production", artifact_version_string="my-team/edge-demo/cifar10-subset:production"
    )
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 200 and reply.json()["status"] == "ignored"
    assert jobs(services) == []


def test_bad_arg_is_422_and_nothing_is_queued(app_client: Client, workspace: Workspace) -> None:
    client, services = app_client
    body = json.dumps({**json.loads(sample_body()), "args": {"epochs": "500"}}).encode()
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 422
    assert reply.json() == {"error": "bad_arg", "detail": "argument 'epochs' must be <= 100"}
    body = json.dumps({**json.loads(sample_body()), "args": {"cmd": "id"}}).encode()
    assert client.post(URL, content=body, headers=signed(workspace, body)).status_code == 422
    assert jobs(services) == []


def test_artifact_action_without_an_artifact_is_422(
    app_client: Client, workspace: Workspace
) -> None:
    client, _ = app_client
    body = b'{"event_type": "ADD_ARTIFACT_ALIAS", "alias": "retrain"}'
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 422 and reply.json()["error"] == "missing_artifact"


def test_bad_token_and_bad_signature_look_the_same(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    bad_token = client.post(
        URL, content=BODY, headers=signed(workspace, BODY, authorization="Bearer " + "x" * 43)
    )
    bad_sig = client.post(
        URL, content=BODY, headers=signed(workspace, BODY, **{"x-wandb-signature": "A" * 43 + "="})
    )
    no_sig_headers = signed(workspace, BODY)
    del no_sig_headers["x-wandb-signature"]
    no_sig = client.post(URL, content=BODY, headers=no_sig_headers)
    for reply in (bad_token, bad_sig, no_sig):
        assert reply.status_code == 401
        assert reply.content == b'{"error":"unauthorized"}'
        assert reply.headers["www-authenticate"] == 'Bearer realm="edgehook"'
    reasons = [line["reason"] for line in audit_lines(services)]
    assert reasons == ["bad_token", "bad_signature", "missing_signature"]
    assert jobs(services) == []


def test_content_type_and_size(app_client: Client, workspace: Workspace) -> None:
    client, _ = app_client
    reply = client.post(
        URL, content=BODY, headers=signed(workspace, BODY, **{"content-type": "text/plain"})
    )
    assert reply.status_code == 415
    ok = client.post(
        URL,
        content=BODY,
        headers=signed(workspace, BODY, **{"content-type": "Application/JSON; charset=utf-8"}),
    )
    assert ok.status_code == 202
    big = b'{"event_type": "ADD_ARTIFACT_ALIAS", "pad": "' + b"x" * 70_000 + b'"}'
    assert client.post(URL, content=big, headers=signed(workspace, big)).status_code == 413

    def chunked() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 1000

    reply = client.post(
        URL,
        content=chunked(),
        headers=signed(workspace, b"", **{"content-type": "application/json"}),
    )
    assert reply.status_code == 413


def test_oversize_body_from_an_unauthenticated_caller_is_not_read(app_client: Client) -> None:
    client, services = app_client
    reply = client.post(URL, content=b"x" * 1000, headers={"content-type": "application/json"})
    assert reply.status_code == 401
    assert "body_len" not in audit_lines(services)[-1]


def test_bad_json_after_valid_auth_is_400(app_client: Client, workspace: Workspace) -> None:
    client, _ = app_client
    body = b"{nope"
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 400 and reply.json()["error"] == "bad_json"


def test_unknown_paths_and_methods(app_client: Client) -> None:
    client, services = app_client
    assert client.get("/").status_code == 404
    assert client.get("/docs").status_code == 404
    assert client.get(URL).status_code == 405
    assert client.get("/healthz").json() == {"status": "ok"}
    assert [line["status"] for line in audit_lines(services)] == [404, 404, 405, 200]


def test_rate_limit_429_with_retry_after(workspace: Workspace, clock: Clock) -> None:
    workspace.edit("burst = 30", "burst = 3")
    client, _services = make_client(workspace.config(), clock)
    with client:
        statuses = [client.get("/healthz").status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        reply = client.get("/healthz")
        assert reply.headers["retry-after"] == "1"
        assert len(reply.headers["x-request-id"]) == 16
        clock.advance(1)
        assert client.get("/healthz").status_code == 200


def test_failed_auth_locks_out_unproven_requests_but_never_a_genuine_delivery(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    for _ in range(10):
        assert (
            client.post(URL, content=BODY, headers={"content-type": "application/json"}).status_code
            == 401
        )
    forged = client.post(
        URL, content=BODY, headers={**signed(workspace, BODY), "authorization": "Bearer wrong"}
    )
    assert forged.status_code == 429
    assert int(forged.headers["retry-after"]) == 10
    assert jobs(services) == []
    # Same address, right token and signature: the forgers' failures cost it nothing.
    genuine = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    assert genuine.status_code == 202
    assert [job[0] for job in jobs(services)] == [1]


def test_a_genuine_burst_from_one_address_is_never_rate_limited(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    limits = services.config.rate_limit
    count = limits.burst * 3  # far past the per-client budget, in no time at all
    for i in range(count):
        body = json.dumps({**json.loads(BODY), "args": {"seed": str(i)}}).encode()
        assert client.post(URL, content=body, headers=signed(workspace, body)).status_code == 202
    assert len(jobs(services)) == count
    # An unproven request from that address still has the whole budget: proof spent none.
    assert client.get("/healthz").status_code == 200


def test_a_right_token_with_a_wrong_signature_spends_the_failure_budget(
    app_client: Client, workspace: Workspace
) -> None:
    client, _ = app_client
    headers = {**signed(workspace, BODY), "x-wandb-signature": "A" * 43 + "="}
    for _ in range(10):
        assert client.post(URL, content=BODY, headers=headers).status_code == 401
    assert client.get("/healthz").status_code == 429
    assert client.post(URL, content=BODY, headers=signed(workspace, BODY)).status_code == 202


def test_forwarded_header_is_ignored_from_an_untrusted_peer(app_client: Client) -> None:
    client, services = app_client
    client.get("/healthz", headers={"x-forwarded-for": "1.2.3.4"})
    assert audit_lines(services)[-1]["client"] == "203.0.113.7"


def test_store_locked_gives_503_and_loses_nothing(workspace: Workspace, clock: Clock) -> None:
    client, services = make_client(workspace.config(), clock)
    services.committer = Committer(services.config.store_path, 86400.0, busy_timeout_s=0.1)
    with client:
        blocker = sqlite3.connect(services.config.store_path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        reply = client.post(URL, content=BODY, headers=signed(workspace, BODY))
        assert reply.status_code == 503
        assert reply.headers["retry-after"] == "5"
        blocker.execute("ROLLBACK")
        blocker.close()
        assert jobs(services) == []
        retry = client.post(URL, content=BODY, headers=signed(workspace, BODY))
        assert retry.status_code == 202
    assert len(jobs(services)) == 1
    lines = audit_lines(services)
    assert [line["decision"] for line in lines] == ["unavailable", "accepted"]
    # The refused one proved itself: its own line, its body's digest, listed as lost.
    assert lines[0]["proven"] is True
    assert lines[0]["body_sha256"] == hashlib.sha256(BODY).hexdigest()
    assert [is_lost(line) for line in lines] == [True, False]


def test_audit_log_never_holds_secrets_bodies_or_signatures(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    client.post(URL, content=BODY, headers=signed(workspace, BODY))
    client.post(
        URL,
        content=BODY,
        headers=signed(workspace, BODY, authorization="Bearer " + workspace.signing_secret),
    )
    text = "".join(p.read_text() for _, p in list_segments(services.config.audit_dir))
    for secret in (
        workspace.access_token,
        workspace.signing_secret,
        workspace.audit_key,
        signed(workspace, BODY)["x-wandb-signature"],
        'cifar10-subset:retrain"',
    ):
        assert secret not in text
    assert verify(services.config.audit_dir, workspace.audit_key.encode()).ok


def test_store_schema_is_created_with_wal(app_client: Client) -> None:
    _, services = app_client
    with sqlite3.connect(services.config.store_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def test_internal_error_is_a_plain_500_and_audited(
    workspace: Workspace, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: object) -> None:
        raise RuntimeError("boom: internal detail")

    monkeypatch.setattr("core.admit.match", explode)
    client, services = make_client(workspace.config(), clock)
    with client:
        reply = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal_error", "detail": "internal error"}
    assert "boom" not in reply.text
    line = audit_lines(services)[-1]
    assert (line["status"], line["decision"]) == (500, "error")


def test_event_about_a_version_this_device_produced_is_ignored(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    with sqlite3.connect(services.config.store_path) as conn:
        conn.execute(
            "INSERT INTO produced (version_string, artifact_id, created_at) VALUES (?, ?, 0)",
            ("my-team/edge-demo/cifar10-subset:v9", "wandb-artifact://_id/QXJ0aWZhY3Q6OQ=="),
        )
    by_version = sample_body(artifact_version_string="my-team/edge-demo/cifar10-subset:v9")
    by_id = sample_body(artifact_version="wandb-artifact://_id/QXJ0aWZhY3Q6OQ==")
    for body in (by_version, by_id):
        reply = client.post(URL, content=body, headers=signed(workspace, body))
        assert reply.status_code == 200
        assert reply.json() == {"status": "ignored", "reason": "produced here"}
    assert jobs(services) == []
    assert audit_lines(services)[-1]["reason"] == "produced_here"


def test_read_only_store_gives_503_then_resumes(workspace: Workspace, clock: Clock) -> None:
    client, services = make_client(workspace.config(), clock)
    path = services.config.store_path

    def read_only(p: Path | str) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{p}?mode=ro", uri=True, isolation_level=None)

    services.committer = Committer(path, 86400.0, connect_fn=read_only)
    with client:
        reply = client.post(URL, content=BODY, headers=signed(workspace, BODY))
        assert reply.status_code == 503 and reply.json()["error"] == "store_unavailable"
        assert jobs(services) == []
        services.committer.stop()
        services.committer = Committer(path, 86400.0)
        services.committer.start()
        assert client.post(URL, content=BODY, headers=signed(workspace, BODY)).status_code == 202
    assert len(jobs(services)) == 1


def test_event_about_a_model_this_device_made_is_ignored_by_its_metadata(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    ours = sample_body(produced_by=services.config.device_id)
    reply = client.post(URL, content=ours, headers=signed(workspace, ours))
    assert reply.json() == {"status": "ignored", "reason": "produced here"}
    theirs = sample_body(produced_by="another-device")
    assert client.post(URL, content=theirs, headers=signed(workspace, theirs)).status_code == 202
    unrendered = sample_body(produced_by="")  # a dataset: W&B renders the key empty
    reply = client.post(URL, content=unrendered, headers=signed(workspace, unrendered))
    assert reply.status_code == 202


def test_access_token_rotation_accepts_old_and_new_until_the_old_is_removed(
    workspace: Workspace, clock: Clock
) -> None:
    """README "Rotating secrets": the device accepts both while W&B is switched over."""
    new_token = "n" * 43
    new = workspace.dir / "secrets" / "access_token.new"
    new.write_text(new_token)
    new.chmod(0o600)
    workspace.edit(
        'access_token_file = "secrets/access_token"',
        'access_token_file = "secrets/access_token.new"\n'
        'old_access_token_files = ["secrets/access_token"]',
    )
    client, _ = make_client(workspace.config(), clock)
    with client:
        for index, token in enumerate((workspace.access_token, new_token)):
            body = sample_body(artifact_version=f"wandb-artifact://_id/rotation{index}")
            headers = signed(workspace, body, authorization=f"Bearer {token}")
            assert client.post(URL, content=body, headers=headers).status_code == 202
    workspace.edit('old_access_token_files = ["secrets/access_token"]', "")
    client, _ = make_client(workspace.config(), clock)
    with client:
        body = sample_body(artifact_version="wandb-artifact://_id/rotation-done")
        old = signed(workspace, body)  # the retired token
        assert client.post(URL, content=body, headers=old).status_code == 401


STR_RULE = """
[[rules]]
name = "notify"
event = "ADD_ARTIFACT_ALIAS"
action = "command"
command = ["/bin/true"]
[rules.args]
note = { type = "str" }
text = { type = "str", allow_control = true }
"""


def with_args(args: dict[str, object], **fields: str) -> bytes:
    return json.dumps({**json.loads(BODY), **fields, "args": args}).encode()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a\u0000b", "contains a NUL character"),
        ("a\ud800b", "contains a lone surrogate (not valid Unicode text)"),
        ("a\x1bb", "contains the control character U+001B"),
    ],
)
def test_a_str_arg_that_cannot_reach_a_job_is_refused_naming_it(
    workspace: Workspace, clock: Clock, value: str, problem: str
) -> None:
    client, services = make_client(workspace.config(STR_RULE), clock)
    with client:
        body = with_args({"note": value})
        reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 422
    assert reply.json() == {"error": "bad_arg", "detail": f"argument 'note' {problem}"}
    assert jobs(services) == []


def test_control_characters_pass_where_the_rule_allows_them_but_nul_never(
    workspace: Workspace, clock: Clock
) -> None:
    client, services = make_client(workspace.config(STR_RULE), clock)
    with client:
        body = with_args({"text": "line one\n\tline two"})
        assert client.post(URL, content=body, headers=signed(workspace, body)).status_code == 202
        body = with_args({"text": "a\u0000b"})
        reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 422
    assert reply.json()["detail"] == "argument 'text' contains a NUL character"
    assert [json.loads(job[2]) for job in jobs(services)] == [{"text": "line one\n\tline two"}]


def test_an_undeclared_arg_name_is_echoed_64_characters_at_most(
    app_client: Client, workspace: Workspace
) -> None:
    client, _ = app_client
    body = with_args({"x" * 5000: "1"})
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 422
    assert reply.json()["detail"] == (
        f"argument '{'x' * 64}' is not declared by rule 'default-retrain'"
    )


def test_names_w_and_b_allows_are_accepted(app_client: Client, workspace: Workspace) -> None:
    client, services = app_client
    body = with_args(
        {},
        project_name="quantized edge training",
        artifact_collection_name="my photos (2026)",
        artifact_version_string="my team/quantized edge training/my photos (2026):v3",
        entity_name="my team",
    )
    reply = client.post(URL, content=body, headers=signed(workspace, body))
    assert reply.status_code == 202
    with sqlite3.connect(services.config.store_path) as conn:
        (version,) = conn.execute("SELECT version_string FROM events").fetchone()
    assert version == "my team/quantized edge training/my photos (2026):v3"


def test_webhook_with_a_trailing_slash_is_the_same_endpoint_never_a_redirect(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    reply = client.post(
        "/webhook/", content=BODY, headers=signed(workspace, BODY), follow_redirects=False
    )
    assert reply.status_code == 202
    assert "location" not in reply.headers
    unsigned = client.post("/webhook/", content=BODY, headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    assert len(jobs(services)) == 1


@pytest.mark.parametrize("header", ["authorization", "x-wandb-signature"])
def test_a_credential_header_sent_twice_is_refused(
    app_client: Client, workspace: Workspace, header: str
) -> None:
    client, services = app_client
    headers = list(signed(workspace, BODY).items())
    headers.append((header, dict(headers)[header]))  # twice, even with the same value
    reply = client.post(URL, content=BODY, headers=headers)
    assert reply.status_code == 400
    assert reply.json() == {"error": "duplicate_header", "detail": f"{header} appears twice"}
    assert jobs(services) == []


def test_the_same_json_reserialised_is_a_duplicate(
    app_client: Client, workspace: Workspace
) -> None:
    client, services = app_client
    first = client.post(URL, content=BODY, headers=signed(workspace, BODY))
    data = json.loads(BODY)
    again = json.dumps(dict(reversed(list(data.items()))), indent=2).encode()
    assert again != BODY
    reply = client.post(URL, content=again, headers=signed(workspace, again))
    assert reply.status_code == 200
    assert reply.json() == {"status": "duplicate", "job_id": first.json()["job_id"]}
    assert len(jobs(services)) == 1
