"""The device's models: which one is active, the ones before it, promotion and rollback.

data_dir/models/<name>/ holds each accepted model (model.safetensors + model.json);
data_dir/models/registry.json records the active one and the history. No torch here: the
worker promotes with metadata alone, after checking the file set and the weights' digest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import bounded
from core.errors import JobError
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import METADATA, copy_model, read_metadata, sha256

__all__ = [
    "Decision",
    "activate",
    "active",
    "install",
    "promote",
    "read_metadata",
    "rollback",
    "state",
]

REGISTRY = "registry.json"
MAX_REGISTRY_BYTES = 1 << 20


@dataclass(frozen=True)
class Decision:
    promoted: bool
    name: str
    reason: str


def state(models_dir: Path) -> dict[str, Any]:
    path = models_dir / REGISTRY
    if not path.exists():
        return {"active": None, "history": []}
    try:
        data = bounded.read_json(path, MAX_REGISTRY_BYTES)
    except bounded.Unreadable as exc:
        raise JobError(f"the model registry {path} is damaged: {exc}") from exc
    if not isinstance(data, dict):
        return {"active": None, "history": []}
    names = [data.get("active"), *(data.get("history") or [])]
    if not isinstance(data.get("history", []), list) or not all(
        n is None or (isinstance(n, str) and _plain_name(n)) for n in names
    ):
        raise JobError(f"the model registry {path} names a model that is not a plain name")
    return data


def active(models_dir: Path) -> Path | None:
    name = state(models_dir).get("active")
    return models_dir / name if name else None


def promote(models_dir: Path, candidate: Path, name: str, tolerance: float) -> Decision:
    """Keep the candidate; make it active unless its int8 accuracy is worse than the active
    model's by more than `tolerance` (absolute, 0.01 = one point)."""
    accuracy = _accuracy(read_metadata(candidate))
    _register(models_dir, candidate, name)
    current = state(models_dir)
    if current["active"]:
        previous = _accuracy(read_metadata(models_dir / current["active"]))
        if accuracy < previous - tolerance:
            return Decision(
                False,
                name,
                f"int8 accuracy {accuracy:.3f} is worse than the "
                f"active model's {previous:.3f} by more than {tolerance:g}",
            )
        reason = f"int8 accuracy {accuracy:.3f} vs {previous:.3f} for the active model"
    else:
        reason = f"int8 accuracy {accuracy:.3f}; no model was active"
    _make_active(models_dir, name)
    return Decision(True, name, reason)


def activate(models_dir: Path, candidate: Path, name: str) -> Decision:
    """Register the candidate and make it active whatever its accuracy (deploy)."""
    read_metadata(candidate)
    _register(models_dir, candidate, name)
    _make_active(models_dir, name)
    return Decision(True, name, "deployed")


def install(models_dir: Path, candidate: Path, name: str, *, activate: bool) -> Decision:
    """Register a verified model under `name` and make it active if `activate`. The same
    model (same weights and the same metadata) registered before under that name is not
    copied again; anything else under that name is refused, never re-activated."""
    meta = read_metadata(candidate)
    target = models_dir / name
    if target.exists():
        if read_metadata(target).weights_sha256 != meta.weights_sha256 or sha256(
            target / METADATA
        ) != sha256(candidate / METADATA):
            raise JobError(
                f"a different model named {name} is already registered "
                "(the weights or the metadata differ)"
            )
        reason = "already registered"
    else:
        _register(models_dir, candidate, name)
        reason = "registered"
    if not activate or state(models_dir)["active"] == name:
        return Decision(False, name, reason + (", already active" if activate else ""))
    _make_active(models_dir, name)
    return Decision(True, name, reason + " and made active")


def rollback(models_dir: Path) -> str:
    """Make the previous model active again; returns its name."""
    current = state(models_dir)
    if not current["history"]:
        raise JobError("no earlier model to roll back to")
    previous = current["history"][-1]
    read_metadata(models_dir / previous)
    _write(
        models_dir,
        {
            "active": previous,
            "history": current["history"][:-1],
            "rolled_back_from": current["active"],
        },
    )
    return str(previous)


def _register(models_dir: Path, candidate: Path, name: str) -> None:
    """Copy the candidate in as `name` (never over another) and check the copy: it is what
    will be loaded."""
    with _writing(models_dir):
        models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = models_dir / name
        if target.exists():
            raise JobError(f"a model named {name} is already registered")
        copy_model(candidate, target)


def _make_active(models_dir: Path, name: str) -> None:
    """`name` becomes active; the model it replaces goes on the history (once)."""
    current = state(models_dir)
    history = [h for h in current["history"] if h != name]
    if current["active"]:
        history.append(current["active"])
    _write(models_dir, {"active": name, "history": history})


def _accuracy(meta: ModelMeta) -> float:
    return meta.int8_accuracy


def _write(models_dir: Path, data: dict[str, Any]) -> None:
    # Atomic: a crash leaves the old registry or the new one, never half of either.
    with _writing(models_dir):
        temporary = models_dir / f".{REGISTRY}.tmp"
        temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
        with temporary.open("rb") as handle:
            os.fsync(handle.fileno())
        temporary.replace(models_dir / REGISTRY)


@contextmanager
def _writing(models_dir: Path) -> Iterator[None]:
    """A registry that cannot be written (read-only, a file where the folder should be, a
    full disk) is one JobError naming it."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise JobError(f"cannot write the model registry {models_dir}: {why}") from exc


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..") and "/" not in name and "\0" not in name
