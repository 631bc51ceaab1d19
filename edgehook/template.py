"""The payload template we recommend entering in W&B, and a rendered sample of it."""

from __future__ import annotations

import json

# W&B substitutes ${...} textually inside this JSON. Add an "args" object to pass
# arguments a rule declares, e.g. "args": {"epochs": "${artifact_metadata.epochs}"}
# (an arg W&B renders empty counts as not given, so its default applies).
RECOMMENDED_TEMPLATE = {
    "event_type": "${event_type}",
    "event_author": "${event_author}",
    "entity_name": "${entity_name}",
    "project_name": "${project_name}",
    "artifact_collection_name": "${artifact_collection_name}",
    "artifact_version": "${artifact_version}",
    "artifact_version_string": "${artifact_version_string}",
    "alias": "${alias}",
    # Models edgehook uploads carry this metadata key: their events are not run again.
    "produced_by": "${artifact_metadata.edgehook_device}",
}

SAMPLE_VALUES = {
    "event_type": "ADD_ARTIFACT_ALIAS",
    "event_author": "edgehook-send-test",
    "entity_name": "my-team",
    "project_name": "edge-demo",
    "artifact_collection_name": "cifar10-subset",
    "artifact_version": "wandb-artifact://_id/QXJ0aWZhY3Q6MQ==",
    "artifact_version_string": "my-team/edge-demo/cifar10-subset:retrain",
    "alias": "retrain",
    "produced_by": "",  # a dataset carries no edgehook metadata: W&B renders it empty
}


def template_text() -> str:
    return json.dumps(RECOMMENDED_TEMPLATE, indent=2)


def sample_body(**overrides: object) -> bytes:
    """The bytes W&B would send for the recommended template (compact JSON)."""
    values: dict[str, object] = {**SAMPLE_VALUES, **overrides}
    return json.dumps(values, separators=(",", ":")).encode("utf-8")
