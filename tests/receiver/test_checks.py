"""The order of the request checks: README's list, receiver.checks.CHECKS and the code agree.

README's "How a delivery is handled" block numbers the checks; CHECKS declares the same
order in the code. For each pair of neighbours in CHECKS, a request that fails both is
refused by the earlier one (status and reason), so a reordering of the code, of CHECKS or
of README's list fails here.
"""

from __future__ import annotations

import itertools
import re
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from core.auditread import records
from edgehook.template import sample_body
from receiver.checks import CHECKS
from receiver.services import Services
from tests.conftest import Clock, Workspace, make_client, signed

README = Path(__file__).resolve().parents[2] / "README.md"
URL = "/webhook"
BODY = sample_body()
WRONG_SIGNATURE = "A" * 43 + "="

# What README says for each check, in its own words (a phrase of its numbered line).
README_WORDS = {
    "single_credentials": "one Authorization, one signature",
    "token": "Authorization: Bearer",
    "rate_limit": "rate limit",
    "content": "Content-Type",
    "body": "body read",
    "signature": "X-Wandb-Signature",
    "json": "JSON",
    "rule": "rule match",
    "duplicate": "same delivery",
    "commit": "committed",
}


def readme_checks() -> list[tuple[int, str]]:
    """The numbered lines (number, text) of README's "How a delivery is handled" block."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## How a delivery is handled", 1)[1]
    block = section.split("```", 2)[1]
    found = re.findall(r"^ {1,2}(\d{1,2}) (\S.*)$", block, flags=re.MULTILINE)
    return [(int(number), line) for number, line in found]


def test_readme_numbers_the_checks_in_the_declared_order() -> None:
    listed = [(n, line) for n, line in readme_checks() if n > 0]  # 0: the connection table
    assert [n for n, _ in listed] == list(range(1, len(CHECKS) + 1))
    assert set(README_WORDS) == set(CHECKS)
    for name, (number, line) in zip(CHECKS, listed, strict=True):
        assert README_WORDS[name] in line, f"README's check {number} is not {name}: {line!r}"


Client = tuple[TestClient, Services]


@pytest.fixture
def app(workspace: Workspace, clock: Clock) -> Iterator[Client]:
    client, services = make_client(workspace.config(), clock)
    with client:
        yield client, services


def reasons(services: Services) -> list[str]:
    return [str(r["reason"]) for r in records(services.config.audit_dir) if r["kind"] == "request"]


def lock_out(client: TestClient) -> None:
    """Spend the address's auth-failure budget: its unproven requests are 429 from now."""
    for _ in range(10):
        reply = client.post(URL, content=BODY, headers={"content-type": "application/json"})
        assert reply.status_code == 401


def single_credentials_before_token(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    headers = [("content-type", "application/json")]
    headers += [("authorization", "Bearer wrong"), ("authorization", "Bearer wrong-too")]
    return client.post(URL, content=BODY, headers=headers).status_code, "duplicate_header"


def token_before_rate_limit(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    lock_out(client)
    # The right token is judged before the budget: a genuine delivery is never refused 429.
    return client.post(URL, content=BODY, headers=signed(ws, BODY)).status_code, "queued"


def rate_limit_before_content(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    lock_out(client)
    headers = {"content-type": "text/plain", "authorization": "Bearer wrong"}
    return client.post(URL, content=BODY, headers=headers).status_code, "rate_limited"


def content_before_body(app: Client, ws: Workspace) -> tuple[int, str]:
    client, services = app
    oversized = b"x" * (services.config.server.max_body_bytes + 1)
    headers = signed(ws, oversized, **{"content-type": "text/plain"})
    return client.post(URL, content=oversized, headers=headers).status_code, "bad_content_type"


def body_before_signature(app: Client, ws: Workspace) -> tuple[int, str]:
    client, services = app
    chunk = b"x" * (services.config.server.max_body_bytes + 1)
    headers = signed(ws, b"", **{"x-wandb-signature": WRONG_SIGNATURE})
    # A chunked body declares no length: the cap while reading refuses it.
    return client.post(URL, content=iter([chunk]), headers=headers).status_code, "too_large"


def signature_before_json(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    headers = signed(ws, b"{nope", **{"x-wandb-signature": WRONG_SIGNATURE})
    return client.post(URL, content=b"{nope", headers=headers).status_code, "bad_signature"


def json_before_rule(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    body = b'["no", "rule", "matches", "a", "list"]'
    return client.post(URL, content=body, headers=signed(ws, body)).status_code, "not_object"


def rule_before_duplicate(app: Client, ws: Workspace) -> tuple[int, str]:
    client, _ = app
    body = sample_body(
        alias="production", artifact_version_string="my-team/edge-demo/cifar10-subset:production"
    )
    assert client.post(URL, content=body, headers=signed(ws, body)).status_code == 200
    # The same delivery again: still "ignored" (no rule), never "duplicate".
    return client.post(URL, content=body, headers=signed(ws, body)).status_code, "no_rule"


def duplicate_before_commit(app: Client, ws: Workspace) -> tuple[int, str]:
    client, services = app
    assert client.post(URL, content=BODY, headers=signed(ws, BODY)).status_code == 202
    reply = client.post(URL, content=BODY, headers=signed(ws, BODY))
    with sqlite3.connect(services.config.store_path) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (1,)  # nothing committed
    return reply.status_code, "duplicate"


# (earlier, later) -> a request failing both: (the status it got, the reason expected).
ORDER_CASES: dict[tuple[str, str], Callable[[Client, Workspace], tuple[int, str]]] = {
    ("single_credentials", "token"): single_credentials_before_token,
    ("token", "rate_limit"): token_before_rate_limit,
    ("rate_limit", "content"): rate_limit_before_content,
    ("content", "body"): content_before_body,
    ("body", "signature"): body_before_signature,
    ("signature", "json"): signature_before_json,
    ("json", "rule"): json_before_rule,
    ("rule", "duplicate"): rule_before_duplicate,
    ("duplicate", "commit"): duplicate_before_commit,
}
EXPECTED_STATUS = {
    "duplicate_header": 400,
    "queued": 202,
    "rate_limited": 429,
    "bad_content_type": 415,
    "too_large": 413,
    "bad_signature": 401,
    "not_object": 400,
    "no_rule": 200,
    "duplicate": 200,
}


def test_a_case_for_each_pair_of_neighbours_in_the_declared_order() -> None:
    assert list(ORDER_CASES) == list(itertools.pairwise(CHECKS))


@pytest.mark.parametrize("pair", list(ORDER_CASES), ids="-before-".join)
def test_the_earlier_check_decides(
    app: Client, workspace: Workspace, pair: tuple[str, str]
) -> None:
    status, reason = ORDER_CASES[pair](app, workspace)
    assert (status, reasons(app[1])[-1]) == (EXPECTED_STATUS[reason], reason)
