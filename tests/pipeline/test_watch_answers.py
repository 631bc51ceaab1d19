"""The watcher tells a server that does not answer like W&B (HTML, bad JSON, garbage,
silence) from a refused key, and refuses what W&B would never send (issue 21)."""

from __future__ import annotations

import os

import pytest

from pipeline.watch import WatchError, checked, classify, wandb_resolver
from tests.fakes.wandb_server import FakeWandb

VERIFY = "Failed to verify credentials with http://127.0.0.1:1: "


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        # what wandb 0.31 raises (AuthenticationError) for each, measured on the fake server
        (VERIFY + "invalid character '<' looking for beginning of value", "bad_answer"),
        (VERIFY + "unexpected EOF", "bad_answer"),
        (VERIFY + "json: cannot unmarshal number into Go struct field", "bad_answer"),
        (
            VERIFY + "Failed to execute API request: the service process is busy and did not "
            "respond in time.",
            "no_answer",
        ),
        ("HTTP 401: unauthorized", "auth"),
        ("No API key configured. Use `wandb login` to log in.", "auth"),
    ],
)
def test_answers_that_are_not_wandbs_are_not_auth(message: str, kind: str) -> None:
    assert classify(RuntimeError(message)).kind == kind


def test_what_wandb_never_sends_is_refused() -> None:
    assert checked("v3", "QXJ0aWZhY3Q6MTIz", "dev").artifact_id == "QXJ0aWZhY3Q6MTIz"
    with pytest.raises(WatchError) as refused:
        checked("v3", "x" * (5 << 20), None)
    assert refused.value.kind == "bad_answer"
    assert str(refused.value) == f"W&B answered an artifact id of {5 << 20} characters"
    for version in ("v3\n", "latest", "v" + "9" * 20):
        with pytest.raises(WatchError, match="not vN"):
            checked(version, "abc", None)
    assert checked("v1", "abc", "dev\x1b[2J").produced_by is None


def test_an_html_page_is_a_bad_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeWandb() as server:
        server.add("ds", {"a.txt": b"first"}, ["production"])
        for name, value in {
            "WANDB_BASE_URL": server.url,
            "WANDB__GRAPHQL_RETRY_MAX": "1",
            "WANDB__GRAPHQL_RETRY_WAIT_MAX_SECONDS": "1",
            "WANDB_ERROR_REPORTING": "false",
            "WANDB_SILENT": "true",
        }.items():
            monkeypatch.setenv(name, value)
        server.graphql_raw = (b"<html><body>sign in to the wifi</body></html>", "text/html")
        with pytest.raises(WatchError) as refused:
            wandb_resolver("k" * 40, timeout_s=5)("team/proj/ds:production")
    assert refused.value.kind == "bad_answer"
    assert os.environ.get("WANDB_BASE_URL") == server.url
