import json

import pytest

from core.errors import Rejection
from edgehook.template import RECOMMENDED_TEMPLATE, SAMPLE_VALUES, sample_body
from receiver.payload import parse_body, to_event


def refused(body: bytes, depth: int = 16) -> Rejection:
    with pytest.raises(Rejection) as exc:
        to_event(parse_body(body, max_depth=depth))
    return exc.value


def test_recommended_template_rendered_normalises() -> None:
    event = to_event(parse_body(sample_body(), max_depth=16))
    assert event.event_type == "ADD_ARTIFACT_ALIAS"
    assert (event.entity, event.project, event.collection) == (
        "my-team",
        "edge-demo",
        "cifar10-subset",
    )
    assert event.version_string == "my-team/edge-demo/cifar10-subset:retrain"
    assert event.alias == "retrain"
    assert event.author == "edgehook-send-test"
    assert set(RECOMMENDED_TEMPLATE) == set(SAMPLE_VALUES)


def test_client_payload_nesting_and_link_artifact_synonym() -> None:
    body = {
        "event_type": "LINK_ARTIFACT",
        "client_payload": {
            "entity": "t",
            "project": "p",
            "artifact_collection": "m",
            "alias": "prod",
            "args": {"epochs": "2"},
        },
    }
    event = to_event(parse_body(json.dumps(body).encode(), max_depth=16))
    assert event.event_type == "LINK_MODEL"
    assert event.version_string == "t/p/m:prod"
    assert event.args == {"epochs": "2"}


def test_empty_and_unrendered_fields_and_args_count_as_absent() -> None:
    body = {
        "event_type": "ADD_ARTIFACT_ALIAS",
        "tag": "",
        "alias": "${alias}",
        "args": {"epochs": "", "lr": "${artifact_metadata.lr}", "seed": "4"},
    }
    event = to_event(parse_body(json.dumps(body).encode(), max_depth=16))
    assert event.alias is None and event.tag is None
    assert event.args == {"seed": "4"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe{}", "bad_encoding"),
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_object"),
        (b'{"a": 1, "a": 2}', "bad_json"),
        (b"[" * 5000 + b"]" * 5000, "too_deep"),
        (b'{"a": ' * 20 + b"1" + b"}" * 20, "too_deep"),
        (b'{"alias": "retrain"}', "missing_field"),
        (b'{"event_type": 7}', "bad_field"),
        (b'{"event_type": "ADD_ARTIFACT_ALIAS", "entity_name": "../etc"}', "bad_field"),
        (b'{"event_type": "ADD_ARTIFACT_ALIAS", "artifact_version_string": "a/b/c"}', "bad_field"),
        (
            b'{"event_type": "ADD_ARTIFACT_ALIAS", "artifact_version_string": "a/b/../c:v1"}',
            "bad_field",
        ),
        (
            b'{"event_type": "ADD_ARTIFACT_ALIAS", "artifact_version_string": "a/b/c:v1", '
            b'"entity_name": "z"}',
            "inconsistent",
        ),
        (b'{"event_type": "ADD_ARTIFACT_ALIAS", "args": [1]}', "bad_field"),
        (b'{"event_type": "ADD_ARTIFACT_ALIAS", "n": ' + b"9" * 5000 + b"}", "bad_json"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(body: bytes, reason: str) -> None:
    exc = refused(body)
    assert (exc.status, exc.reason) == (400, reason)


def test_summary_never_contains_args() -> None:
    body = {
        "event_type": "ADD_ARTIFACT_ALIAS",
        "artifact_version_string": "a/b/c:v1",
        "args": {"message": "secret-ish"},
    }
    event = to_event(parse_body(json.dumps(body).encode(), max_depth=16))
    assert "secret-ish" not in event.summary()
