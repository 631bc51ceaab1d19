"""Parse a delivery body and normalise W&B's template fields into one typed Event.

The body is whatever template the W&B admin wrote, flat or nested under `client_payload`
(GitHub dispatch style), so several spellings of each field are accepted. Names that will
later become paths or SDK lookups are checked here against the rules the wandb SDK enforces
(names.py); turning a name into a path is names.path_component's job.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from core.errors import Rejection
from core.event import Event, canonical_event_type
from core.names import ALIAS_FORBIDDEN, COLLECTION_FORBIDDEN, PROJECT_FORBIDDEN, name_problem

_Check = re.Pattern[str] | frozenset[str]
_EVENT_TYPE = re.compile(r"[A-Z][A-Z_]{0,63}")
_VERSION_STRING = re.compile(
    r"(?P<entity>[^/:]+)/(?P<project>[^/:]+)/(?P<collection>[^/:]+):(?P<version>[^/:]+)"
)
_AUTHOR = re.compile(r"[\w.@+\- ]{1,128}")
_ARTIFACT_ID = re.compile(r"wandb-artifact://[A-Za-z0-9_/=+\-]{1,200}")

# Each Event field, with the payload keys that may carry it, first found wins.
_FIELDS = {
    "event_type": ("event_type",),
    "author": ("event_author", "author"),
    "entity": ("entity_name", "entity"),
    "project": ("project_name", "project"),
    "collection": ("artifact_collection_name", "artifact_collection", "collection"),
    "version_string": ("artifact_version_string", "version_string"),
    "artifact_id": ("artifact_version",),
    "alias": ("alias",),
    "tag": ("tag",),
    "produced_by": ("produced_by",),
}


def parse_body(body: bytes, *, max_depth: int) -> dict[str, Any]:
    """The body as a JSON object: strict UTF-8, no duplicate keys, nesting within max_depth."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejection(400, "bad_encoding", "body is not UTF-8") from exc
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise Rejection(400, "too_deep", f"JSON nests deeper than {max_depth}") from exc
    except ValueError as exc:  # JSONDecodeError, huge integers, duplicate keys
        detail = str(exc) if isinstance(exc, _DuplicateKey) else "body is not valid JSON"
        raise Rejection(400, "bad_json", detail) from exc
    if not isinstance(data, dict):
        raise Rejection(400, "not_object", "body must be a JSON object")
    if _depth(data) > max_depth:
        raise Rejection(400, "too_deep", f"JSON nests deeper than {max_depth}")
    return data


def canonical_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON form: sorted keys, no whitespace, ASCII escapes (so
    lone surrogates, which JSON can carry, encode too). Equal JSON, equal digest."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key '{key[:64]}' appears twice")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    # Iterative: a hostile body must not be able to exhaust the interpreter's stack.
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        deepest = max(deepest, level)
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, level + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def to_event(data: Mapping[str, Any]) -> Event:
    """The Event a parsed body describes, or Rejection(400) saying which field is wrong."""
    nested = data.get("client_payload")
    sources = [nested, data] if isinstance(nested, dict) else [data]
    raw = {name: _first(sources, keys) for name, keys in _FIELDS.items()}

    event_type = raw["event_type"]
    if event_type is None:
        raise Rejection(400, "missing_field", "event_type is missing (use ${event_type})")
    event_type = canonical_event_type(_checked("event_type", event_type, _EVENT_TYPE))
    entity = _checked("entity", raw["entity"], PROJECT_FORBIDDEN)
    project = _checked("project", raw["project"], PROJECT_FORBIDDEN)
    collection = _checked("artifact_collection_name", raw["collection"], COLLECTION_FORBIDDEN)
    alias = _checked("alias", raw["alias"], ALIAS_FORBIDDEN)
    version = None
    if raw["version_string"] is not None:
        parts = _VERSION_STRING.fullmatch(_text("artifact_version_string", raw["version_string"]))
        if parts is None:
            raise Rejection(
                400,
                "bad_field",
                "artifact_version_string must look like entity/project/name:version",
            )
        for name, given, pattern in (
            ("entity", entity, PROJECT_FORBIDDEN),
            ("project", project, PROJECT_FORBIDDEN),
            ("artifact_collection_name", collection, COLLECTION_FORBIDDEN),
        ):
            key = "collection" if name == "artifact_collection_name" else name
            found = _checked(f"artifact_version_string {name}", parts[key], pattern)
            if given is not None and given != found:
                raise Rejection(
                    400, "inconsistent", f"{name} disagrees with artifact_version_string"
                )
        entity, project, collection = parts["entity"], parts["project"], parts["collection"]
        version = _checked("artifact_version_string version", parts["version"], ALIAS_FORBIDDEN)

    args = _first(sources, ("args",))
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise Rejection(400, "bad_field", "args must be a JSON object")
    # An arg W&B rendered empty (say, a metadata key the artifact lacks) counts as not given.
    args = {k: v for k, v in args.items() if not _blank(v)}
    return Event(
        event_type=event_type,
        entity=entity,
        project=project,
        collection=collection,
        version=version,
        alias=alias,
        tag=_checked("tag", raw["tag"], ALIAS_FORBIDDEN),
        author=_checked("event_author", raw["author"], _AUTHOR),
        artifact_id=_checked("artifact_version", raw["artifact_id"], _ARTIFACT_ID),
        produced_by=_checked("produced_by", raw["produced_by"], _AUTHOR),
        args=args,
    )


def _first(sources: list[Any], keys: tuple[str, ...]) -> Any:
    for source in sources:
        for key in keys:
            value = source.get(key)
            if not _blank(value):
                return value
    return None


def _blank(value: Any) -> bool:
    """Empty, or a template variable W&B left unrendered: carries nothing."""
    return value is None or value == "" or (isinstance(value, str) and value.startswith("${"))


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise Rejection(400, "bad_field", f"{name} must be a string")
    return value


def _checked(name: str, value: Any, check: _Check) -> Any:
    """The value when it is a string W&B could send: a W&B name (check = the characters the
    SDK forbids) or one of edgehook's own fields (check = a pattern)."""
    if value is None:
        return None
    text = _text(name, value)
    if isinstance(check, frozenset):
        problem = name_problem(text, check)
        if problem is not None:
            raise Rejection(400, "bad_field", f"{name} {problem}")
    elif not check.fullmatch(text):
        raise Rejection(400, "bad_field", f"{name} has characters or a length W&B never sends")
    return value
