"""core/admit.py: the one admission path of the webhook and the watcher, step by step."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest

from core.admit import Admission, Source, Verdict, admit, admit_now
from core.errors import StoreUnavailable
from core.event import Event
from core.rules import ArgSpec, Rule
from core.store import Committed, Delivery

SOURCE = Source(1_800_000_000.0, "req-1", "203.0.113.7", "ab" * 32, "cd" * 32)
RETRAIN = Rule(
    name="retrain",
    events=frozenset({"ADD_ARTIFACT_ALIAS"}),
    action="retrain",
    aliases=frozenset({"retrain"}),
    args=(ArgSpec("lr", "float", default=0.003),),
)
EVENT = Event(
    event_type="ADD_ARTIFACT_ALIAS",
    entity="my-team",
    project="edge-demo",
    collection="cifar10-subset",
    version="v3",
    alias="retrain",
    artifact_id="wandb-artifact://_id/QXJ0aWZhY3Q6Mw==",
)


NEW_JOB = Committed(7)


class Store:
    """The caller's commit: records what it was given, answers what it is told to."""

    def __init__(self, answer: Committed | Exception = NEW_JOB) -> None:
        self.answer = answer
        self.given: list[Delivery] = []

    def __call__(self, item: Delivery) -> Committed:
        self.given.append(item)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def run(event: Event, store: Store, given: dict[str, object] | None = None) -> Admission:
    return admit_now((RETRAIN,), "edge-01", event, given or {}, SOURCE, store)


def test_a_matching_event_is_committed_once_and_queued() -> None:
    store = Store()
    admitted = run(EVENT, store, {"lr": "0.01"})
    assert admitted == Admission(Verdict.QUEUED, "queued", RETRAIN, 7)
    (item,) = store.given
    assert (item.rule, item.action, item.args_json) == ("retrain", "retrain", '{"lr": 0.01}')
    assert (item.request_id, item.client, item.received_at) == (
        "req-1",
        "203.0.113.7",
        SOURCE.received_at,
    )
    assert (item.body_sha256, item.canonical_sha256) == ("ab" * 32, "cd" * 32)
    assert item.dedupe_key == f"retrain|ADD_ARTIFACT_ALIAS|{EVENT.artifact_id}|retrain"
    assert json.loads(item.event_json)["args"] == {"lr": 0.01}


def test_the_device_s_own_output_is_ignored_before_any_rule_or_commit() -> None:
    store = Store()
    event = replace(EVENT, produced_by="edge-01")
    assert run(event, store) == Admission(Verdict.IGNORED, "produced_here")
    assert store.given == []


def test_no_rule_is_ignored_without_a_commit() -> None:
    store = Store()
    event = replace(EVENT, alias="production")
    assert run(event, store) == Admission(Verdict.IGNORED, "no_rule")
    assert store.given == []


def test_args_that_do_not_validate_are_refused_naming_the_rule_and_the_arg() -> None:
    store = Store()
    admitted = run(EVENT, store, {"lr": "fast"})
    assert (admitted.outcome, admitted.reason, admitted.rule) == (
        Verdict.REFUSED,
        "bad_arg",
        RETRAIN,
    )
    assert admitted.refusal is not None and admitted.refusal.status == 422
    assert admitted.refusal.detail.startswith("argument 'lr' ")
    assert store.given == []


def test_a_required_arg_a_watched_event_cannot_carry_is_refused() -> None:
    store = Store()
    rule = replace(RETRAIN, args=(ArgSpec("epochs", "int", required=True),))
    admitted = admit_now((rule,), "edge-01", EVENT, {}, SOURCE, store)
    assert (admitted.outcome, admitted.reason, admitted.rule) == (
        Verdict.REFUSED,
        "missing_arg",
        rule,
    )
    assert admitted.refusal is not None and admitted.refusal.status == 422
    assert admitted.refusal.detail == "argument 'epochs' is required"
    assert store.given == []


def test_an_artifact_action_without_a_version_string_is_refused() -> None:
    store = Store()
    event = Event(event_type="ADD_ARTIFACT_ALIAS", alias="retrain")
    admitted = run(event, store)
    refusal = admitted.refusal
    assert refusal is not None
    assert (refusal.status, refusal.reason, refusal.detail) == (
        422,
        "missing_artifact",
        "rule 'retrain' needs artifact_version_string (or entity, project, collection and alias)",
    )
    assert admitted.reason == "missing_artifact" and store.given == []


@pytest.mark.parametrize(
    ("committed", "expected"),
    [
        (Committed(3, duplicate=True), Admission(Verdict.DUPLICATE, "duplicate", RETRAIN, 3)),
        (Committed(None, produced_here=True), Admission(Verdict.IGNORED, "produced_here", RETRAIN)),
    ],
)
def test_the_store_s_verdict_is_interpreted(committed: Committed, expected: Admission) -> None:
    assert run(EVENT, Store(committed)) == expected


def test_a_store_failure_reaches_the_caller() -> None:
    with pytest.raises(StoreUnavailable):
        run(EVENT, Store(StoreUnavailable("disk full")))


def test_an_awaiting_commit_admits_the_same_way() -> None:
    store = Store()

    async def later(item: Delivery) -> Committed:
        await asyncio.sleep(0)  # the receiver's committer answers from another thread
        return store(item)

    admitted = asyncio.run(admit((RETRAIN,), "edge-01", EVENT, {}, SOURCE, later))
    assert admitted == Admission(Verdict.QUEUED, "queued", RETRAIN, 7)
    assert len(store.given) == 1
