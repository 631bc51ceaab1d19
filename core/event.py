"""The event model: what a W&B automation event is, once a delivery has been parsed.

receiver/payload.py makes Events from delivery bodies; core/rules.py matches them; the
store keeps them as JSON for the job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

EVENT_TYPES = frozenset(
    {
        "CREATE_ARTIFACT",
        "ADD_ARTIFACT_ALIAS",
        "LINK_MODEL",
        "UNLINK_ARTIFACT",
        "ADD_ARTIFACT_TAG",
        "REMOVE_ARTIFACT_TAG",
        "ADD_COLLECTION_TAG",
        "REMOVE_COLLECTION_TAG",
        "RUN_METRIC",
        "RUN_METRIC_CHANGE",
        "RUN_METRIC_ZSCORE",
        "RUN_STATE",
    }
)
# W&B's docs call LINK_MODEL "LINK_ARTIFACT"; both mean the same backend event.
_EVENT_SYNONYMS = {"LINK_ARTIFACT": "LINK_MODEL"}


def canonical_event_type(value: str) -> str:
    upper = value.strip().upper()
    return _EVENT_SYNONYMS.get(upper, upper)


@dataclass(frozen=True)
class Event:
    """A W&B event, normalised. Optional fields are None when the template did not carry them."""

    event_type: str
    entity: str | None = None
    project: str | None = None
    collection: str | None = None
    version: str | None = None
    alias: str | None = None
    tag: str | None = None
    author: str | None = None
    artifact_id: str | None = None
    produced_by: str | None = None  # the edgehook device that made the artifact, if any
    args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def version_string(self) -> str | None:
        """`entity/project/collection:version`, what `wandb.Api().artifact()` takes."""
        if self.entity and self.project and self.collection and (self.version or self.alias):
            return f"{self.entity}/{self.project}/{self.collection}:{self.version or self.alias}"
        return None

    def summary(self) -> str:
        """One short line for logs: type and artifact, never args (they may be sensitive)."""
        target = self.version_string or self.collection or "-"
        alias = f" +{self.alias}" if self.alias else ""
        return f"{self.event_type} {target}{alias}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"args": dict(self.args)}
