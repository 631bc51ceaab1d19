"""The console through an in-process client: each page, each API answer and each refusal."""

from __future__ import annotations

import pytest

from core.audit import AuditLog
from core.auditread import records
from pipeline.models import registry
from tests.console.conftest import MARKUP, Site, csrf_of

PAGES = ["/", "/deliveries", "/jobs", "/jobs/1", "/models", "/audit"]
API_GETS = ["/api/overview", "/api/deliveries", "/api/jobs", "/api/jobs/1", "/api/models",
            "/api/audit", "/metrics"]  # fmt: skip
API_POSTS = ["/api/jobs/1/retry", "/api/jobs/1/cancel", "/api/jobs/retry-failed",
             "/api/models/job1-attempt1/activate"]  # fmt: skip


# -- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", API_GETS + API_POSTS)
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token-wrong-token-wrong", "Basic abc"])
def test_api_without_the_token_is_401_whatever_the_method(
    site: Site, path: str, auth: str | None
) -> None:
    client = site.client()
    headers = {} if auth is None else {"Authorization": auth}
    method = "POST" if path in API_POSTS else "GET"
    answer = client.request(method, path, headers=headers)
    assert answer.status_code == 401
    assert answer.json() == {"error": "unauthorized",
                             "detail": "send Authorization: Bearer <console token>"}  # fmt: skip
    assert answer.headers["www-authenticate"] == 'Bearer realm="edgehook-console"'


def test_a_session_cookie_does_not_open_the_api(site: Site) -> None:
    client = site.logged_in()
    assert client.get("/api/jobs").status_code == 401


@pytest.mark.parametrize("path", PAGES)
def test_pages_without_a_session_go_to_the_login_form(site: Site, path: str) -> None:
    answer = site.client().get(path, follow_redirects=False)
    assert answer.status_code == 303
    assert answer.headers["location"] == f"/login?next={path}"


def test_a_bearer_token_does_not_open_the_pages(site: Site) -> None:
    answer = site.api().get("/jobs", follow_redirects=False)
    assert answer.status_code == 303


def test_login_form_wrong_token_and_rate_limit(site: Site) -> None:
    client = site.client()
    form = client.get("/login")
    assert form.status_code == 200
    assert '<input id="token" name="token" type="password"' in form.text
    for _ in range(5):
        wrong = client.post("/login", data={"token": "x" * 30})
        assert wrong.status_code == 401 and "Wrong token." in wrong.text
    limited = client.post("/login", data={"token": site.token})
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) >= 1


def test_login_sets_a_strict_httponly_cookie_and_redirects_locally(site: Site) -> None:
    client = site.client()
    answer = client.post("/login", data={"token": site.token, "next": "//evil.example/"},
                         follow_redirects=False)  # fmt: skip
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("edgehook_console=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert client.get("/jobs").status_code == 200


def test_secure_cookie_behind_tls(site: Site) -> None:
    client = site.client()
    answer = client.post("https://testserver/login", data={"token": site.token},
                         follow_redirects=False)  # fmt: skip
    assert "Secure" in answer.headers["set-cookie"]


def test_logout_ends_the_session(site: Site) -> None:
    client = site.logged_in()
    csrf = csrf_of(client.get("/").text)
    assert client.post("/logout", data={"csrf": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_form_without_its_csrf_token_is_403_and_changes_nothing(site: Site) -> None:
    client = site.logged_in()
    failed = site.jobs["failed"]
    for data in ({"confirm": "yes"}, {"confirm": "yes", "csrf": "forged"}):
        answer = client.post(f"/jobs/{failed}/retry", data=data)
        assert answer.status_code == 403
        assert "CSRF token is missing or stale" in answer.text
    assert site.api().get(f"/api/jobs/{failed}").json()["state"] == "failed"


def test_every_answer_has_the_csp(site: Site) -> None:
    for answer in (site.client().get("/login"), site.logged_in().get("/"),
                   site.api().get("/api/jobs"), site.client().get("/api/jobs")):  # fmt: skip
        csp = answer.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert answer.headers["x-frame-options"] == "DENY"


# -- pages ----------------------------------------------------------------------------------


def test_overview_page_and_twin(site: Site) -> None:
    data = site.api().get("/api/overview").json()
    assert data["queue"] == {"queued": 2, "running": 1, "succeeded": 1, "failed": 1,
                             "cancelled": 0, "superseded": 0}  # fmt: skip
    assert [p["name"] for p in data["processes"]] == ["receiver", "worker", "watcher",
                                                      "predictor"]  # fmt: skip
    assert [p["up"] for p in data["processes"]] == [False, False, False, False]
    assert data["active_model"] == "job2-attempt1"
    assert [(w["artifact"], w["last_error"], w["failures"]) for w in data["watched"]] == [
        ("team/proj/data:production", "network: W&B did not answer", 2)]  # fmt: skip
    assert data["last_delivery"]["request_id"] == "r5"
    assert data["chains"] == []  # verified in the background or by /audit, never here
    site.api().get("/api/audit")
    chains = site.api().get("/api/overview").json()["chains"]
    assert [(c["chain"], c["ok"], c["lines"]) for c in chains] == [("receiver", True, 5)]
    page = site.logged_in().get("/")
    assert page.status_code == 200
    assert '<b id="active-model">job2-attempt1</b>' in page.text
    assert 'data-count="failed">1<' in page.text
    partial = site.logged_in().get("/?partial=1")
    assert partial.text.lstrip().startswith("<section>") and "<html" not in partial.text


def test_deliveries_newest_first_with_lost_and_summary_rows(site: Site) -> None:
    rows = site.api().get("/api/deliveries").json()["deliveries"]
    assert [(r["kind"], r["request_id"]) for r in rows] == [
        ("request", "r5"), ("summary", None), ("request", "r3"), ("request", "r2"),
        ("request", "r1")]  # fmt: skip
    lost = rows[2]
    assert lost["lost"] is True and lost["body_sha256"] == "b" * 64
    assert rows[1]["summary"]["suppressed"] == 40
    page = site.logged_in().get("/deliveries")
    assert "LOST</b> body sha256 <code>" + "b" * 64 in page.text
    assert "40 refused since" in page.text
    # a row links to its event (on its job's page) and to its job
    assert ('<a href="/jobs/1#event">ADD_ARTIFACT_ALIAS team/proj/data:v1 +retrain</a></td>\n'
            '<td><a href="/jobs/1">job 1</a>') in page.text  # fmt: skip
    assert '<h2 id="event">Event</h2>' in site.logged_in().get("/jobs/1").text


@pytest.mark.parametrize(("query", "ids"), [
    ("decision=rejected", [None, "r2"]),
    ("status=202", ["r5", "r1"]),
    ("reason=bad_token", ["r2"]),
    ("client=198.51.100.7", ["r2"]),
    ("event_type=ADD_ARTIFACT_ALIAS", ["r5", "r3", "r1"]),
    ("lost=1", ["r3"]),
    ("since=2027-01-15T08:00:05%2B00:00&until=2027-01-15T08:00:08%2B00:00", [None, "r3"]),
])  # fmt: skip
def test_delivery_filters(site: Site, query: str, ids: list[str | None]) -> None:
    rows = site.api().get(f"/api/deliveries?{query}").json()["deliveries"]
    assert [r["request_id"] for r in rows] == ids


def test_deliveries_page_by_keyset(site: Site) -> None:
    first = site.api().get("/api/deliveries?limit=2").json()
    assert [r["request_id"] for r in first["deliveries"]] == ["r5", None]
    after = {"limit": 2, "after": first["next_after"]}
    second = site.api().get("/api/deliveries", params=after).json()
    assert [r["request_id"] for r in second["deliveries"]] == ["r3", "r2"]
    page = site.logged_in().get("/deliveries?limit=2&decision=")
    assert 'rel="next">Older</a>' in page.text


@pytest.mark.parametrize(("query", "detail"), [
    ("status=abc", "bad parameter status: an integer from 100 to 599"),
    ("limit=0", "bad parameter limit: an integer from 1 to 500"),
    ("since=yesterday", "bad parameter since: a time like 2026-11-25T08:00, 2026-11-25, or "
                        "30m, 2h, 7d ago"),
    ("after=x", "bad parameter after: the next page's cursor, as the previous page gave it"),
    ("lost=maybe", "bad parameter lost: 1 or 0"),
])  # fmt: skip
def test_bad_delivery_parameters_are_400(site: Site, query: str, detail: str) -> None:
    answer = site.api().get(f"/api/deliveries?{query}")
    assert answer.status_code == 400
    assert answer.json() == {"error": "bad_request", "detail": detail}


def test_jobs_by_state_with_the_error_inline(site: Site) -> None:
    data = site.api().get("/api/jobs?state=failed").json()
    assert [(j["id"], j["state"], j["action"], j["rule"]) for j in data["jobs"]] == [
        (site.jobs["failed"], "failed", "retrain", "rule-proj")]  # fmt: skip
    assert data["jobs"][0]["error"] == f"artifact {MARKUP} missing"
    assert data["jobs"][0]["summary"] is None
    everything = site.api().get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in everything] == [5, 4, 3, 2, 1]
    assert everything[3]["summary"] == "promoted job2-attempt1"
    bad = site.api().get("/api/jobs?state=lost")
    assert bad.status_code == 400
    assert bad.json()["detail"] == ("bad parameter state: one of queued, running, succeeded, "
                                    "failed, cancelled, superseded")  # fmt: skip
    page = site.logged_in().get("/jobs?state=failed")
    assert '<button type="submit" id="retry-1">Retry</button>' in page.text
    assert '<button type="submit" id="retry-all-failed">Retry all failed</button>' in page.text


def test_jobs_page_by_keyset(site: Site) -> None:
    first = site.api().get("/api/jobs?limit=2").json()
    assert [j["id"] for j in first["jobs"]] == [5, 4] and first["next_before"] == 4
    second = site.api().get("/api/jobs?limit=2&before=4").json()
    assert [j["id"] for j in second["jobs"]] == [3, 2]


def test_one_job_with_attempts_event_and_log(site: Site) -> None:
    running = site.jobs["running"]
    data = site.api().get(f"/api/jobs/{running}").json()
    assert data["state"] == "running"
    assert [(a["number"], a["worker"], a["outcome"]) for a in data["attempt_list"]] == [
        (1, "w1", None)]  # fmt: skip
    assert data["event"]["request_id"] == "req-3"
    assert data["event"]["arg_names"] == ["epochs"]
    assert data["logs"] == [1]
    log = site.api().get(f"/api/jobs/{running}/log?offset=0").json()
    assert log == {"job_id": running, "attempt": 1, "offset": 17, "text": "epoch 1 loss 0.9\n",
                   "running": True, "state": "running"}  # fmt: skip
    client = site.logged_in()
    page = client.get(f"/jobs/{running}")
    assert f'data-follow="/jobs/{running}/log?attempt=1"' in page.text
    assert '<button type="submit" id="cancel-3">Cancel</button>' in page.text
    piece = client.get(f"/jobs/{running}/log?attempt=1&offset=6")
    assert piece.text == "1 loss 0.9\n" and piece.headers["x-log-offset"] == "17"
    assert site.api().get("/api/jobs/999").json() == {"error": "not_found", "detail": "no job 999"}
    assert client.get("/jobs/999").status_code == 404


def test_markup_from_a_delivery_is_text_everywhere(site: Site) -> None:
    client = site.logged_in()
    for path in ("/", "/deliveries", "/jobs", f"/jobs/{site.jobs['evil']}",
                 f"/jobs/{site.jobs['failed']}", "/models"):  # fmt: skip
        html = client.get(path).text
        assert MARKUP not in html, path
        assert "&lt;img src=x onerror=alert(1)&gt;" in html, path


def test_models_page_with_lineage_and_charts(site: Site) -> None:
    data = site.api().get("/api/models").json()
    assert data["active"] == "job2-attempt1" and data["history"] == ["job1-attempt1"]
    newest = data["models"][0]
    assert newest["name"] == "job2-attempt1" and newest["active"] is True
    assert newest["signature"] == "verified" and newest["job_id"] == 2
    assert newest["job_summary"] == "promoted job2-attempt1"
    assert [e["phase"] for e in newest["epochs"]] == ["fp32", "fp32", "fp32", "qat"]
    assert len(newest["charts"]["loss"]["series"][0]["points"].split()) == 4
    page = site.logged_in().get("/models")
    assert page.text.count("<polyline") == 6 and 'aria-label="confusion matrix"' in page.text
    assert '<button type="submit" id="activate-job1-attempt1">Make active</button>' in page.text


def test_audit_page_and_download(site: Site) -> None:
    client = site.logged_in()
    page = client.get("/audit")
    assert '<td>receiver</td><td class="up">ok</td><td>5</td>' in page.text
    download = client.get("/audit/receiver/download")
    assert download.headers["content-disposition"] == 'attachment; filename="receiver-audit.jsonl"'
    assert len(download.text.splitlines()) == 5
    assert client.get("/audit/nothing/download").status_code == 404


# -- actions --------------------------------------------------------------------------------


def test_retry_from_the_page_asks_for_confirmation_then_acts_and_audits(site: Site) -> None:
    client = site.logged_in()
    failed = site.jobs["failed"]
    csrf = csrf_of(client.get(f"/jobs/{failed}").text)
    ask = client.post(f"/jobs/{failed}/retry", data={"csrf": csrf})
    assert ask.status_code == 200 and f"Queue job {failed} again?" in ask.text
    assert '<button type="submit" id="confirm" autofocus>Confirm</button>' in ask.text
    assert site.api().get(f"/api/jobs/{failed}").json()["state"] == "failed"
    done = client.post(f"/jobs/{failed}/retry", data={"csrf": csrf, "confirm": "yes"},
                       follow_redirects=False)  # fmt: skip
    assert done.status_code == 303 and done.headers["location"] == f"/jobs/{failed}"
    assert f"job {failed}: queued again" in client.get(f"/jobs/{failed}").text
    assert site.api().get(f"/api/jobs/{failed}").json()["state"] == "queued"
    line = list(records(site.config.audit_dir / "operator"))[-1]
    assert {k: line[k] for k in ("kind", "user", "via", "origin", "job_id", "transition")} == {
        "kind": "operator", "user": "console", "via": "console", "origin": "127.0.0.9",
        "job_id": failed, "transition": "retried"}  # fmt: skip


def test_api_actions_answer_exactly(site: Site) -> None:
    api = site.api()
    jobs = site.jobs
    assert api.post(f"/api/jobs/{jobs['failed']}/retry").json() == {
        "ok": True, "message": f"job {jobs['failed']}: queued again"}  # fmt: skip
    again = api.post(f"/api/jobs/{jobs['succeeded']}/retry")
    assert again.status_code == 409 and again.json() == {"error": "conflict", "detail": (
        f"job {jobs['succeeded']} is succeeded; only failed, cancelled or superseded jobs can "
        "be retried")}  # fmt: skip
    assert api.post(f"/api/jobs/{jobs['queued']}/cancel").json()["message"] == (
        f"job {jobs['queued']}: cancelled")  # fmt: skip
    assert api.post(f"/api/jobs/{jobs['running']}/cancel").json()["message"] == (
        f"job {jobs['running']}: running; its worker will kill it and record 'cancelled'"
    )
    assert api.post("/api/jobs/77/cancel").status_code == 404
    assert api.get(f"/api/jobs/{jobs['failed']}/retry").status_code == 405


def test_retry_all_failed(site: Site) -> None:
    answer = site.api().post("/api/jobs/retry-failed")
    assert answer.json() == {"ok": True, "message": "1 failed job(s) queued again"}
    assert site.api().get("/api/jobs?state=failed").json()["jobs"] == []


def test_activate_a_model_rolls_back_and_is_audited(site: Site) -> None:
    api = site.api()
    answer = api.post("/api/models/job1-attempt1/activate")
    assert answer.json() == {
        "ok": True,
        "message": "model job1-attempt1 is active; the predictor follows it",
    }
    assert registry.state(site.config.models_dir)["active"] == "job1-attempt1"
    line = list(records(site.config.audit_dir / "operator"))[-1]
    assert (line["action"], line["model"], line["previous"]) == (
        "model_activate", "job1-attempt1", "job2-attempt1")  # fmt: skip
    assert api.post("/api/models/job1-attempt1/activate").json() == {
        "error": "conflict", "detail": "model job1-attempt1 is already active"}  # fmt: skip
    for name in ("..", "nope", "a%2F..%2F..%2Fetc"):
        assert api.post(f"/api/models/{name}/activate").status_code == 404


def test_an_unsigned_model_is_not_activated(site: Site) -> None:
    (site.config.models_dir / "job1-attempt1" / "model.sig").unlink()
    answer = site.api().post("/api/models/job1-attempt1/activate")
    assert answer.status_code == 409
    assert answer.json()["detail"] == "model job1-attempt1 is not verified: the model is not signed"


def test_metrics(site: Site) -> None:
    text = site.api().get("/metrics").text
    assert 'edgehook_queue_jobs{state="failed"} 1.0' in text
    assert 'edgehook_queue_jobs{state="queued"} 2.0' in text
    assert 'edgehook_deliveries_total{decision="rejected",reason="bad_token"} 41.0' in text
    assert 'edgehook_job_duration_seconds_count{action="retrain"} 2.0' in text
    assert 'edgehook_job_queue_wait_seconds_count{action="retrain"} 3.0' in text
    assert 'edgehook_job_attempts_total{action="retrain",outcome="failed"} 1.0' in text
    assert 'edgehook_last_success_timestamp_seconds{what="job"}' in text
    assert 'edgehook_last_success_timestamp_seconds{what="delivery"} 1.800000009e+09' in text
    assert 'edgehook_last_success_timestamp_seconds{what="watch_poll"} 1.80000011e+09' in text


def test_watch_polls_are_counted_from_the_watchers_chain(site: Site) -> None:
    log = AuditLog(site.config.audit_dir / "watch", site.workspace.audit_key.encode(),
                   site.config.audit, clock=lambda: 1_800_000_500.0)  # fmt: skip
    log.record("watch_summary", source="watch", polls=5, unchanged=3, errors=1)
    log.record("watch", source="watch", artifact="team/proj/data:production", version="v4",
               outcome="queued", detail="job 6", job_id=6)  # fmt: skip
    log.close()
    text = site.api().get("/metrics").text
    assert 'edgehook_watch_polls_total{outcome="unchanged"} 3.0' in text
    assert 'edgehook_watch_polls_total{outcome="error"} 1.0' in text
    assert 'edgehook_watch_polls_total{outcome="queued"} 1.0' in text


def test_chains_are_verified_in_a_child_process_by_the_server(site: Site) -> None:
    from console.server import verify_apart

    report = verify_apart(site.config.audit_dir, site.workspace.audit_key.encode())
    assert (report.ok, report.lines, report.last_seq) == (True, 5, 5)


def test_the_worker_is_up_while_it_holds_its_lock(site: Site) -> None:
    import fcntl
    import os

    fd = os.open(site.config.data_dir / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        processes = site.api().get("/api/overview").json()["processes"]
        assert (processes[1]["name"], processes[1]["up"], processes[1]["detail"]) == (
            "worker", True, "holds worker.lock")  # fmt: skip
    finally:
        os.close(fd)
    processes = site.api().get("/api/overview").json()["processes"]
    assert (processes[1]["up"], processes[1]["detail"]) == (False, "no worker.lock")


def test_retry_all_failed_from_the_page(site: Site) -> None:
    client = site.logged_in()
    csrf = csrf_of(client.get("/jobs").text)
    ask = client.post("/jobs/retry-failed", data={"csrf": csrf})
    assert "Queue the failed jobs again (the newest 500 at most)?" in ask.text
    done = client.post("/jobs/retry-failed", data={"csrf": csrf, "confirm": "yes"})
    assert "1 failed job(s) queued again" in done.text
    assert site.api().get("/api/jobs?state=failed").json()["jobs"] == []


def test_cancel_from_the_page_asks_for_confirmation_then_acts(site: Site) -> None:
    client = site.logged_in()
    queued = site.jobs["queued"]
    csrf = csrf_of(client.get("/jobs").text)
    ask = client.post(f"/jobs/{queued}/cancel", data={"csrf": csrf})
    assert f"Cancel job {queued}?" in ask.text and ">Confirm</button>" in ask.text
    assert site.api().get(f"/api/jobs/{queued}").json()["state"] == "queued"  # not yet
    done = client.post(f"/jobs/{queued}/cancel", data={"csrf": csrf, "confirm": "yes"})
    assert f"job {queued}: cancelled" in done.text
    assert site.api().get(f"/api/jobs/{queued}").json()["state"] == "cancelled"
