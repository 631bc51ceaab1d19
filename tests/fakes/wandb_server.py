"""A W&B-compatible server on loopback, for testing the real wandb SDK (pinned 0.31.0).

Answers the GraphQL operations artifact download needs (Viewer, ServerFeaturesQuery,
ArtifactMembershipByName, FetchArtifactManifest, GetArtifactMembershipFileUrls) and plain
GETs of the manifest and files; and those the automations API uses (IntegrationsByEntity,
GetProject, ProjectArtifactCollection, GetEntityAutomationsLegacy, CreateAutomation,
UpdateAutomation: 409 on a duplicate name, as W&B answers). Behaviours for fault tests:
`tamper` serves other bytes of the same size, `fail_graphql` answers 500, `graphql_status`
any status (429, 401), `move` points an alias at another version, `drop_files`
closes connections without an answer, `file_delay_s` makes every file slow.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATION = re.compile(r"(?:query|mutation)\s+(\w+)")


class Conflict(Exception):
    """Answered as HTTP 409, as W&B answers a duplicate automation name."""

    status = 409


class NotFound(Exception):
    status = 404


@dataclass
class Version:
    collection: str
    index: int
    files: dict[str, bytes]
    aliases: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    type: str = "dataset"

    serial: int = 0  # unique across collections, like W&B's artifact ids

    @property
    def id(self) -> str:
        return base64.b64encode(f"Artifact:{1000 + self.serial}".encode()).decode()


class FakeWandb:
    def __init__(self, entity: str = "team", project: str = "proj") -> None:
        self.entity, self.project = entity, project
        self.versions: list[Version] = []
        self.operations: list[str] = []
        self.tamper: set[str] = set()
        self.fail_graphql = False
        self.graphql_status = 0  # not 0: every GraphQL request answers this status (429, 401)
        # not None: every GraphQL request answers 200 with these bytes and content type (an
        # HTML page from a captive portal, JSON that is not GraphQL's, garbage)
        self.graphql_raw: tuple[bytes, str] | None = None
        self.missing_files: set[str] = set()
        self.file_delay_s = 0.0  # a slow server: each file waits this long before its bytes
        self.drop_files = 0  # the next N file requests: the connection closes, no answer
        self.file_requests = 0
        self.webhooks: list[dict[str, str]] = []  # GenericWebhookIntegration nodes
        self.triggers: list[dict[str, Any]] = []  # automations, as TriggerFields
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeWandb:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def add(
        self, collection: str, files: dict[str, bytes], aliases: list[str], type: str = "dataset"
    ) -> Version:
        index = sum(1 for v in self.versions if v.collection == collection)
        for v in self.versions:
            if v.collection == collection:
                v.aliases = [a for a in v.aliases if a not in aliases]
        version = Version(
            collection, index, files, [f"v{index}", *aliases], type=type, serial=len(self.versions)
        )
        self.versions.append(version)
        return version

    def move(self, collection: str, alias: str, index: int) -> Version:
        """Point `alias` at an existing version, as moving it in W&B's UI does."""
        for v in self.versions:
            if v.collection == collection and alias in v.aliases:
                v.aliases.remove(alias)
        target = next(v for v in self.versions if v.collection == collection and v.index == index)
        target.aliases.append(alias)
        return target

    def add_webhook(self, name: str, url: str) -> dict[str, str]:
        hook = {
            "__typename": "GenericWebhookIntegration",
            "id": base64.b64encode(f"Integration:{len(self.webhooks) + 1}".encode()).decode(),
            "name": name,
            "urlEndpoint": url,
        }
        self.webhooks.append(hook)
        return hook

    def find(self, collection: str, alias: str) -> Version | None:
        return next(
            (v for v in self.versions if v.collection == collection and alias in v.aliases), None
        )

    # -- responses -------------------------------------------------------------------------

    def graphql(self, body: dict[str, Any]) -> dict[str, Any]:
        query = body.get("query", "")
        match = OPERATION.search(query)
        name = match.group(1) if match else "?"
        self.operations.append(name)
        variables = body.get("variables") or {}
        handler = getattr(self, f"op_{name}", None)
        if handler is None:
            return {"errors": [{"message": f"fake W&B does not answer {name}"}]}
        return {"data": handler(variables)}

    def op_Viewer(self, _v: dict[str, Any]) -> dict[str, Any]:
        return {
            "viewer": {
                "id": "VXNlcjox",
                "entity": self.entity,
                "username": "edgehook",
                "flags": "{}",
                "teams": {"edges": []},
            }
        }

    def op_GetDefaultEntity(self, _v: dict[str, Any]) -> dict[str, Any]:
        return {"viewer": {"id": "VXNlcjox", "entity": self.entity}}

    def op_ServerFeaturesQuery(self, _v: dict[str, Any]) -> dict[str, Any]:
        return {"serverInfo": {"features": []}}

    def op_ArtifactMembershipByName(self, v: dict[str, Any]) -> dict[str, Any]:
        collection, _, alias = str(v["name"]).partition(":")
        version = self.find(collection, alias)
        if version is None:
            return {"project": {"artifactCollectionMembership": None}}
        project = {
            "id": "UHJvamVjdDox",
            "internalId": "1",
            "name": self.project,
            "entity": {"name": self.entity},
        }
        info = {"__typename": "ArtifactSequence", "name": collection, "project": project}
        aliases = [
            {"__typename": "ArtifactAlias", "id": f"al{i}", "alias": a}
            for i, a in enumerate(version.aliases)
        ]
        artifact = {
            "__typename": "Artifact",
            "id": version.id,
            "artifactSequence": info,
            "versionIndex": version.index,
            "artifactType": {"name": version.type},
            "description": None,
            "metadata": json.dumps(version.metadata),
            "ttlDurationSeconds": -2,
            "ttlIsInherited": True,
            "tags": [],
            "historyStep": None,
            "state": "COMMITTED",
            "size": sum(len(d) for d in version.files.values()),
            "digest": hashlib.md5(b"".join(version.files.values())).hexdigest(),  # noqa: S324
            "digestAlgorithm": "MANIFEST_MD5",
            "commitHash": "deadbeef",
            "fileCount": len(version.files),
            "createdAt": "2026-11-25T00:00:00",
            "updatedAt": "2026-11-25T00:00:00",
            "aliases": [
                {**a, "artifactCollection": {**info, "__typename": "ArtifactSequence"}}
                for a in aliases
            ],
        }
        return {
            "project": {
                "artifactCollectionMembership": {
                    "__typename": "ArtifactCollectionMembership",
                    "id": f"m{version.id}",
                    "versionIndex": version.index,
                    "createdAt": "2026-11-25T00:00:00",
                    "aliases": aliases,
                    "artifactCollection": info,
                    "artifact": artifact,
                }
            }
        }

    # -- automations (what `edgehook wandb setup` drives) --------------------------------

    PROJECT_ID = "UHJvamVjdDox"

    def op_IntegrationsByEntity(self, _v: dict[str, Any]) -> dict[str, Any]:
        page = {"endCursor": None, "hasNextPage": False}
        edges = [{"node": hook} for hook in self.webhooks]
        return {"entity": {"integrations": {"pageInfo": page, "edges": edges}}}

    def op_GetProject(self, v: dict[str, Any]) -> dict[str, Any]:
        if v.get("name") != self.project or v.get("entity") != self.entity:
            return {"project": None}
        project = {
            "__typename": "Project",
            "id": self.PROJECT_ID,
            "name": self.project,
            "entityName": self.entity,
            "createdAt": "2026-11-25T00:00:00",
            "isBenchmark": False,
            "user": None,
        }
        return {"project": project}

    def collection_id(self, name: str) -> str:
        return base64.b64encode(f"ArtifactSequence:{name}".encode()).decode()

    def op_ProjectArtifactCollection(self, v: dict[str, Any]) -> dict[str, Any]:
        version = next(
            (x for x in self.versions if x.collection == v["name"] and x.type == v["type"]), None
        )
        if version is None or v["project"] != self.project or v["entity"] != self.entity:
            return {"project": {"artifactType": {"artifactCollection": None}}}
        collection: dict[str, Any] = {
            "__typename": "ArtifactSequence",
            "id": self.collection_id(version.collection),
            "name": version.collection,
            "description": None,
            "createdAt": "2026-11-25T00:00:00",
            "updatedAt": "2026-11-25T00:00:00",
            "project": {
                "id": self.PROJECT_ID,
                "internalId": "1",
                "name": self.project,
                "entity": {"name": self.entity},
            },
            "type": {"name": version.type},
            "tags": {"edges": []},
        }
        return {"project": {"artifactType": {"artifactCollection": collection}}}

    def _scope(self, scope_id: str) -> dict[str, str]:
        if scope_id == self.PROJECT_ID:
            return {"__typename": "Project", "id": self.PROJECT_ID, "name": self.project}
        for version in self.versions:
            if self.collection_id(version.collection) == scope_id:
                return {
                    "__typename": "ArtifactSequence",
                    "id": scope_id,
                    "name": version.collection,
                }
        raise NotFound(f"scope {scope_id} not found")

    def op_GetEntityAutomationsLegacy(self, _v: dict[str, Any]) -> dict[str, Any]:
        page = {"endCursor": None, "hasNextPage": False}
        node = {"__typename": "Project", "triggers": self.triggers}
        return {"scope": {"projects": {"pageInfo": page, "edges": [{"node": node}]}}}

    def op_CreateAutomation(self, v: dict[str, Any]) -> dict[str, Any]:
        given = v["input"]
        if any(t["name"] == given["name"] for t in self.triggers):
            raise Conflict(f"trigger {given['name']} already exists")
        trigger_id = base64.b64encode(f"Trigger:{len(self.triggers) + 1}".encode()).decode()
        trigger = self._trigger(trigger_id, given)
        self.triggers.append(trigger)
        return {"result": {"trigger": trigger}}

    def op_UpdateAutomation(self, v: dict[str, Any]) -> dict[str, Any]:
        given = v["input"]
        for index, old in enumerate(self.triggers):
            if old["id"] == given["id"]:
                self.triggers[index] = self._trigger(old["id"], {**self._as_input(old), **given})
                return {"result": {"trigger": self.triggers[index]}}
        raise NotFound(f"trigger {given['id']} not found")

    def _trigger(self, trigger_id: str, given: dict[str, Any]) -> dict[str, Any]:
        scope = self._scope(given["scopeID"])
        webhook = given["triggeredActionConfig"]["genericWebhookActionInput"]
        hook = next((h for h in self.webhooks if h["id"] == webhook["integrationID"]), None)
        if hook is None:
            raise NotFound(f"integration {webhook['integrationID']} not found")
        json.loads(webhook["requestPayload"])  # W&B stores JSON text; refuse bad JSON
        return {
            "__typename": "Trigger",
            "id": trigger_id,
            "createdAt": "2026-11-25T00:00:00",
            "updatedAt": "2026-11-25T00:00:00",
            "name": given["name"],
            "description": given.get("description"),
            "enabled": given.get("enabled", True),
            "scope": scope,
            "event": {
                "__typename": "FilterEventTriggeringCondition",
                "eventType": given["triggeringEventType"],
                # saved filters come back wrapped one level deeper than they were given
                "filter": json.dumps({"filter": json.loads(given["eventFilter"])}),
            },
            "action": {
                "__typename": "GenericWebhookTriggeredAction",
                "integration": hook,
                "requestPayload": webhook["requestPayload"],
            },
        }

    @staticmethod
    def _as_input(trigger: dict[str, Any]) -> dict[str, Any]:
        action = trigger["action"]
        return {
            "name": trigger["name"],
            "description": trigger["description"],
            "enabled": trigger["enabled"],
            "scopeID": trigger["scope"]["id"],
            "triggeringEventType": trigger["event"]["eventType"],
            "eventFilter": json.dumps(json.loads(trigger["event"]["filter"])["filter"]),
            "triggeredActionConfig": {
                "genericWebhookActionInput": {
                    "integrationID": action["integration"]["id"],
                    "requestPayload": action["requestPayload"],
                }
            },
        }

    def op_FetchArtifactManifest(self, v: dict[str, Any]) -> dict[str, Any]:
        return {
            "artifact": {
                "currentManifest": {"file": {"directUrl": f"{self.url}/manifest/{v['id']}"}}
            }
        }

    def op_GetArtifactMembershipFileUrls(self, v: dict[str, Any]) -> dict[str, Any]:
        version = self.find(v["collection"], v["alias"])
        edges = (
            []
            if version is None
            else [
                {
                    "node": {
                        "__typename": "File",
                        "name": name,
                        "directUrl": f"{self.url}/files/{version.id}/{name}",
                    }
                }
                for name in version.files
            ]
        )
        return {
            "project": {
                "artifactCollection": {
                    "__typename": "ArtifactSequence",
                    "artifactMembership": {
                        "files": {
                            "pageInfo": {
                                "__typename": "PageInfo",
                                "endCursor": None,
                                "hasNextPage": False,
                            },
                            "edges": edges,
                        }
                    },
                }
            }
        }

    def manifest(self, artifact_id: str) -> dict[str, Any] | None:
        version = next((v for v in self.versions if v.id == artifact_id), None)
        if version is None:
            return None
        contents = {
            name: {
                "digest": base64.b64encode(hashlib.md5(data).digest()).decode(),  # noqa: S324
                "size": len(data),
            }
            for name, data in version.files.items()
        }
        return {
            "version": 1,
            "storagePolicy": "wandb-storage-policy-v1",
            "storagePolicyConfig": {},
            "contents": contents,
        }

    def file(self, artifact_id: str, name: str) -> bytes | None:
        version = next((v for v in self.versions if v.id == artifact_id), None)
        if version is None or name not in version.files or name in self.missing_files:
            return None
        data = version.files[name]
        return bytes(len(data)) if name in self.tamper else data

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                pass

            def _send(self, status: int, body: bytes, kind: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, b'{"errors":[{"message":"body is not JSON"}]}')
                    return
                if fake.fail_graphql:
                    self._send(500, b'{"errors":[{"message":"internal error"}]}')
                    return
                if fake.graphql_raw is not None:
                    self._send(200, *fake.graphql_raw)
                    return
                if fake.graphql_status:
                    fake.operations.append(f"refused {fake.graphql_status}")
                    self._send(fake.graphql_status, b'{"errors":[{"message":"refused"}]}')
                    return
                try:
                    answer = fake.graphql(body)
                except (Conflict, NotFound) as exc:
                    error = {"errors": [{"message": str(exc)}]}
                    self._send(exc.status, json.dumps(error).encode())
                    return
                self._send(200, json.dumps(answer).encode())

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/", 2)
                if parts[0] == "manifest" and len(parts) == 2:
                    manifest = fake.manifest(parts[1])
                    if manifest is not None:
                        self._send(200, json.dumps(manifest).encode())
                        return
                if parts[0] == "files" and len(parts) == 3:
                    fake.file_requests += 1
                    if fake.drop_files > 0:
                        fake.drop_files -= 1
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    time.sleep(fake.file_delay_s)
                    data = fake.file(parts[1], parts[2])
                    if data is not None:
                        self._send(200, data, "application/octet-stream")
                        return
                self._send(404, b"not found", "text/plain")

        return Handler
