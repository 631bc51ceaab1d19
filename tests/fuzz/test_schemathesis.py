"""Schema-driven fuzzing of the running receiver from its OpenAPI description
(docs/openapi.yaml): schemathesis generates requests from the schema (headers, bodies, and
variations outside it) and sends them over HTTP. Whatever it sends: no 5xx, and no 2xx from
/webhook, since it cannot know the secrets (every such request is unauthenticated)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from tests.conftest import (  # noqa: E402
    ROOT,
    Server,
    Workspace,
    free_port,
    make_workspace,
    start_server,
    stop_server,
)

SCHEMA = schemathesis.openapi.from_path(ROOT / "docs" / "openapi.yaml")
# CI runs a bounded number; EDGEHOOK_FUZZ_EXAMPLES raises it for a longer local run.
EXAMPLES = int(os.environ.get("EDGEHOOK_FUZZ_EXAMPLES", "150"))


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    workspace = make_workspace(Path(tmp_path_factory.mktemp("fuzz")))
    # the fuzzer is one client sending fast: let it past the rate limiter to reach the rest
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 100000.0")
    workspace.edit("burst = 30", "burst = 100000")
    workspace.edit("auth_failures_per_minute = 6.0", "auth_failures_per_minute = 6000000.0")
    workspace.edit("auth_failure_burst = 10", "auth_failure_burst = 100000")
    return workspace


@pytest.fixture(scope="module")
def receiver(fuzzed: Workspace) -> Iterator[Server]:
    server = start_server(fuzzed, free_port())
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def signing(fuzzed: Workspace) -> tuple[str, str]:
    return fuzzed.access_token, fuzzed.signing_secret


@SCHEMA.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_5xx_and_no_unauthenticated_2xx(case: object, receiver: Server) -> None:
    response = case.call(base_url=receiver.url)  # type: ignore[attr-defined]
    status = response.status_code
    assert status < 500, (status, response.text[:200])
    if case.path == "/webhook":  # type: ignore[attr-defined]
        assert not 200 <= status < 300, (status, response.text[:200])
    assert receiver.process.poll() is None


@SCHEMA.include(path="/webhook").parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_signed_schema_bodies_never_crash_the_receiver(
    case: object, receiver: Server, signing: tuple[str, str]
) -> None:
    """The same generated bodies, this time with a valid token and signature, so they
    reach the JSON parser, the normaliser and the rules: still never a 5xx; a 2xx only for
    a body the rules accept."""
    import json as jsonlib
    import urllib.error
    import urllib.request

    from receiver.signatures import sign

    body = case.body  # type: ignore[attr-defined]
    if type(body).__name__ == "NotSet":  # schemathesis's "no body" case
        body = None
    raw = body if isinstance(body, bytes) else jsonlib.dumps(body).encode()
    token, secret = signing
    request = urllib.request.Request(
        f"{receiver.url}/webhook",
        data=raw,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {token}",
            "X-Wandb-Signature": sign(raw, secret.encode()),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            status = reply.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    assert status < 500, (status, raw[:200])
    assert status in (200, 202, 400, 413, 422), (status, raw[:200])
