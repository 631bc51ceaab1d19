"""The device's models: which one is active, the ones before it, promotion and rollback.

data_dir/models/<name>/ holds each accepted model (model.safetensors + model.json);
data_dir/models/registry.json records the active one and the history. No torch here: the
worker promotes with metadata alone, after checking the file set and the weights' digest.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import JobError
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import read_metadata

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


@dataclass(frozen=True)
class Decision:
    promoted: bool
    name: str
    reason: str


def state(models_dir: Path) -> dict[str, Any]:
    path = models_dir / REGISTRY
    if not path.exists():
        return {"active": None, "history": []}
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else {"active": None, "history": []}


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
    model (same weights) registered before under that name is not copied again."""
    meta = read_metadata(candidate)
    target = models_dir / name
    if target.exists():
        if read_metadata(target).weights_sha256 != meta.weights_sha256:
            raise JobError(f"a different model named {name} is already registered")
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
    models_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = models_dir / name
    if target.exists():
        raise JobError(f"a model named {name} is already registered")
    shutil.copytree(candidate, target)
    read_metadata(target)


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
    temporary = models_dir / f".{REGISTRY}.tmp"
    temporary.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(models_dir / REGISTRY)
