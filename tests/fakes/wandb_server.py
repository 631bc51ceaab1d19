"""A W&B-compatible server on loopback, for testing the real wandb SDK (pinned 0.31.0).

Answers the GraphQL operations artifact download needs (Viewer, ServerFeaturesQuery,
ArtifactMembershipByName, FetchArtifactManifest, GetArtifactMembershipFileUrls) and plain
GETs of the manifest and files. Behaviours for fault tests: `tamper` serves other bytes of
the same size, `fail_graphql` answers 500, `drop` closes connections.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPERATION = re.compile(r"(?:query|mutation)\s+(\w+)")


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
        self.missing_files: set[str] = set()
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
                body = json.loads(self.rfile.read(length) or b"{}")
                if fake.fail_graphql:
                    self._send(500, b'{"errors":[{"message":"internal error"}]}')
                    return
                self._send(200, json.dumps(fake.graphql(body)).encode())

            def do_GET(self) -> None:
                parts = self.path.split("?")[0].strip("/").split("/", 2)
                if parts[0] == "manifest" and len(parts) == 2:
                    manifest = fake.manifest(parts[1])
                    if manifest is not None:
                        self._send(200, json.dumps(manifest).encode())
                        return
                if parts[0] == "files" and len(parts) == 3:
                    data = fake.file(parts[1], parts[2])
                    if data is not None:
                        self._send(200, data, "application/octet-stream")
                        return
                self._send(404, b"not found", "text/plain")

        return Handler
