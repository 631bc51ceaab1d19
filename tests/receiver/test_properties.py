"""Property tests at the HTTP level: no header/body combination yields a 5xx, and none
without a valid token and signature yields a 2xx."""

import base64
import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from edgehook.template import sample_body
from receiver.signatures import sign
from tests.conftest import Clock, Workspace, make_client


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Workspace]]:
    from edgehook.init import run_init

    directory = tmp_path_factory.mktemp("fuzz")
    run_init(directory)
    secret = {
        n: (directory / "secrets" / n).read_text().strip()
        for n in ("access_token", "signing_secret", "audit_key")
    }
    workspace = Workspace(
        directory,
        directory / "edgehook.toml",
        secret["access_token"],
        secret["signing_secret"],
        secret["audit_key"],
    )
    # Generous limits: the properties are about the checks, not the rate limiter.
    workspace.edit("requests_per_second = 5.0", "requests_per_second = 1000000.0")
    workspace.edit("burst = 30", "burst = 1000000")
    workspace.edit("auth_failure_burst = 10", "auth_failure_burst = 1000000")
    client, _ = make_client(workspace.config(), Clock())
    with client:
        yield client, workspace


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
template_keys = st.sampled_from(
    [
        "event_type",
        "alias",
        "artifact_version_string",
        "entity_name",
        "project_name",
        "artifact_collection_name",
        "args",
        "client_payload",
        "event_author",
        "tag",
    ]
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(template_keys, json_values, max_size=8).map(lambda d: json.dumps(d).encode()),
    st.builds(
        lambda extra: json.dumps({**json.loads(sample_body()), **extra}).encode(),
        st.dictionaries(template_keys, json_values, max_size=3),
    ),
)
header_text = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    body=payloads,
    token=st.sampled_from(["valid", "wrong", "missing", "garbage"]),
    signature=st.sampled_from(["valid", "hex", "wrong", "missing", "garbage"]),
    content_type=st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
            "application/jsonx",
        ]
    ),
    garbage=header_text,
    path=st.sampled_from(["/webhook", "/webhook/", "/healthz", "/x"]),
    method=st.sampled_from(["POST", "GET", "PUT"]),
)
def test_no_5xx_and_no_unauthenticated_2xx(
    fuzz_target: tuple[TestClient, Workspace],
    body: bytes,
    token: str,
    signature: str,
    content_type: str,
    garbage: str,
    path: str,
    method: str,
) -> None:
    client, workspace = fuzz_target
    secret = workspace.signing_secret.encode()
    headers = {"content-type": content_type} if content_type else {}
    headers["authorization"] = {
        "valid": f"Bearer {workspace.access_token}",
        "wrong": "Bearer " + "x" * 43,
        "garbage": garbage,
        "missing": "",
    }[token]
    headers["x-wandb-signature"] = {
        "valid": sign(body, secret),
        "hex": base64.b64decode(sign(body, secret)).hex(),
        "wrong": sign(body + b"!", secret),
        "garbage": garbage,
        "missing": "",
    }[signature]
    headers = {k: v for k, v in headers.items() if v}
    reply = client.request(method, path, content=body, headers=headers)
    assert reply.status_code < 500, reply.text
    if 200 <= reply.status_code < 300 and path != "/healthz":
        assert token == "valid" and signature in ("valid", "hex")
        assert content_type.startswith("application/json")
