"""Fetching an artifact version into a job's directory, and proving its bytes are right.

Two sources:
  wandb  `wandb.Api().artifact(version).download(root)`, then `artifact.verify(root)`:
         the SDK does not hash freshly downloaded bytes, so a tampered file of the right
         size is only caught by the explicit verify.
  local  a directory laid out entity/project/collection/<version>/ with a manifest.json of
         SHA-256 digests and sizes, and collection/aliases.json mapping aliases to versions;
         for air-gapped devices and the offline demo. Checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from core.config import ArtifactsConfig
from core.errors import JobError, StalledError, TransientError
from core.names import path_component

MANIFEST = "manifest.json"
ALIASES = "aliases.json"


@dataclass(frozen=True)
class Fetched:
    root: Path
    version_string: str
    files: int
    bytes: int


def split_version(version_string: str) -> tuple[str, str, str, str]:
    path, _, version = version_string.rpartition(":")
    parts = path.split("/")
    if len(parts) != 3 or not version or any(p in ("", ".", "..") for p in (*parts, version)):
        raise JobError(f"'{version_string}' is not entity/project/collection:version")
    return parts[0], parts[1], parts[2], version


def collection_path(root: Path, entity: str, project: str, collection: str) -> Path:
    """Where a collection lies in a local artifact tree: each name one encoded component
    (names.path_component), so "my photos" stays readable and no name can climb out."""
    return root / path_component(entity) / path_component(project) / path_component(collection)


DOWNLOAD_TIMEOUT_S = ArtifactsConfig().download_timeout_s  # declared in core/sections.py


def fetch(
    source: str,
    local_root: str | Path | None,
    version_string: str,
    dest: Path,
    download_timeout_s: float = DOWNLOAD_TIMEOUT_S,
) -> Fetched:
    """From the configured source: "local" (under local_root) or "wandb"."""
    if source == "local":
        if not local_root:
            raise JobError('artifacts.source is "local" but artifacts.local_root is not set')
        return fetch_local(Path(local_root), version_string, dest)
    return fetch_wandb(version_string, dest, download_timeout_s)


def fetch_local(root: Path, version_string: str, dest: Path) -> Fetched:
    entity, project, collection, version = split_version(version_string)
    collection_dir = collection_path(root, entity, project, collection)
    if not collection_dir.is_dir():
        raise JobError(f"artifact {entity}/{project}/{collection} not found under {root}")
    aliases = _read_json(collection_dir / ALIASES) if (collection_dir / ALIASES).exists() else {}
    resolved = str(aliases.get(version, version))
    source = collection_dir / path_component(resolved)
    if not (source / MANIFEST).is_file():
        raise JobError(f"version '{version}' of {entity}/{project}/{collection} not found")
    manifest = _read_json(source / MANIFEST)
    entries = manifest.get("files")
    if not isinstance(entries, dict) or not entries:
        raise JobError(f"{source / MANIFEST} lists no files")
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, entry in entries.items():
        relative = _safe_relative(name)
        target = dest / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source / relative, target)
        except FileNotFoundError as exc:
            raise JobError(f"{name} is in the manifest but missing from the artifact") from exc
        size, digest = _measure(target)
        if size != entry.get("size") or digest != entry.get("sha256"):
            raise JobError(f"{name}: digest mismatch (the file is not what the manifest says)")
        total += size
    return Fetched(dest, f"{entity}/{project}/{collection}:{resolved}", len(entries), total)


def fetch_wandb(version_string: str, dest: Path, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> Fetched:
    import wandb
    from wandb.errors import CommError

    try:
        artifact = wandb.Api().artifact(version_string)
        root = _within(
            timeout_s,
            lambda: Path(artifact.download(root=str(dest))),
            f"downloading {version_string} from W&B did not finish within {timeout_s:g} s "
            "(artifacts.download_timeout_s): the file server stalls or drops connections",
        )
    except CommError as exc:
        text = str(exc)
        if "not found" in text.lower() or "does not exist" in text.lower():
            raise JobError(f"artifact {version_string} not found in W&B") from exc
        raise TransientError(f"W&B unavailable while fetching {version_string}: {text}") from exc
    try:
        artifact.verify(root=str(root))
    except ValueError as exc:
        raise JobError(f"{version_string}: digest mismatch after download ({exc})") from exc
    files = [p for p in root.rglob("*") if p.is_file()]
    collection = artifact.name.split(":")[0]
    resolved = f"{artifact.entity}/{artifact.project}/{collection}:{artifact.version}"
    return Fetched(root, resolved, len(files), sum(p.stat().st_size for p in files))


def _within(timeout_s: float, work: Callable[[], Path], late: str) -> Path:
    """`work()`, or TransientError(late) after timeout_s. The SDK retries a file whose
    connection drops 16 times over about 20 minutes, and that is not configurable; a job
    should give up sooner and let the worker's backoff retry it. The thread left behind
    dies with the job's process, which exits right after."""
    done: list[Path] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            done.append(work())
        except BaseException as exc:  # handed to the caller below
            failed.append(exc)

    thread = threading.Thread(target=run, name="download", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if failed:
        raise failed[0]
    if not done:
        raise StalledError(late)
    return done[0]


def _safe_relative(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise JobError(f"manifest path '{name}' escapes the artifact directory")
    return path


def _measure(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise JobError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise JobError(f"{path} is not a JSON object")
    return data


def write_local_version(
    root: Path, version_string: str, files: dict[str, bytes], aliases: tuple[str, ...] = ()
) -> Path:
    """Lay out a local artifact version (tests, the offline demo)."""
    entity, project, collection, version = split_version(version_string)
    collection_dir = collection_path(root, entity, project, collection)
    version_dir = collection_dir / path_component(version)
    entries = {}
    for name, data in files.items():
        target = version_dir / _safe_relative(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    (version_dir / MANIFEST).write_text(json.dumps({"files": entries}, indent=2))
    if aliases:
        alias_file = collection_dir / ALIASES
        known = json.loads(alias_file.read_text()) if alias_file.exists() else {}
        known.update({alias: version for alias in aliases})
        alias_file.write_text(json.dumps(known, indent=2))
    return version_dir
