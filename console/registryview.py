"""/models: the registry with each model's lineage, figures and charts (drawn from model.json
alone, so a device that never reaches W&B still has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import Config
from core.errors import JobError
from pipeline import operator
from pipeline.models import registry, signing
from pipeline.models.metadata import ModelMeta
from pipeline.models.trust import SigningPolicy
from pipeline.queue import SqliteQueue

CHART_W, CHART_H, PAD = 360, 160, 30


def models_page(
    config: Config, queue: SqliteQueue, actions: list[dict[str, Any]]
) -> dict[str, Any]:
    current = registry.state(config.models_dir)
    trusted = SigningPolicy.from_config(config).trusted_keys
    out = []
    for name in reversed(list(operator.names(config.models_dir))):
        path = config.models_dir / name
        try:
            meta = registry.read_metadata(path)
        except JobError as exc:
            out.append({"name": name, "error": str(exc), "active": False})
            continue
        out.append(_model(name, path, meta, current, trusted, queue, actions))
    return {
        "active": current.get("active"),
        "history": list(current.get("history", [])),
        "rolled_back_from": current.get("rolled_back_from"),
        "models": out,
    }


def _model(
    name: str,
    path: Path,
    meta: ModelMeta,
    current: dict[str, Any],
    trusted: tuple[str, ...],
    queue: SqliteQueue,
    actions: list[dict[str, Any]],
) -> dict[str, Any]:
    try:
        signer: str | None = signing.verify(path, trusted).key_id
        signature = "verified"
    except JobError as exc:
        signer, signature = None, str(exc)
    job = queue.get(meta.job_id) if meta.job_id is not None else None
    history = [e for e in meta.metrics.get("epochs", []) if isinstance(e, dict)]
    events = [
        {"ts": a.get("ts"), "what": a.get("action"), "by": a.get("user"), "via": a.get("via"),
         "origin": a.get("origin")}
        for a in actions if a.get("model") == name
    ]  # fmt: skip
    return {
        "name": name,
        "active": current.get("active") == name,
        "in_history": name in current.get("history", []),
        "created_at": meta.created_at or None,
        "sources": meta.sources,
        "job_id": meta.job_id,
        "job_summary": job.summary if job else None,
        "origin": meta.origin,
        "device": meta.device,
        "signer": signer,
        "signature": signature,
        "arch": meta.spec.get("arch"),
        "classes": meta.classes,
        "metrics": {
            k: meta.metrics.get(k)
            for k in (
                "int8_accuracy",
                "qat_accuracy",
                "fp32_accuracy",
                "held_out",
                "trained",
                "seconds",
                "device",
            )
        },
        "latency": meta.latency,
        "per_class": meta.metrics.get("per_class") or [],
        "confusion": meta.metrics.get("confusion") or [],
        "epochs": history,
        "events": events,
        "charts": {
            "loss": line_chart(history, ("loss",)),
            "accuracy": line_chart(history, ("train_acc", "val_acc")),
            "confusion": confusion_chart(meta.metrics.get("confusion") or []),
        },
    }


def line_chart(history: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[str, Any]:
    """Polylines (SVG `points`) for each key over the epochs; the QAT phase is shaded."""
    values = [float(e[k]) for e in history for k in keys if isinstance(e.get(k), (int, float))]
    if len(history) < 1 or not values:
        return {"series": [], "qat_x": None}
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    n = len(history)

    def x(i: int) -> float:
        return PAD + (CHART_W - 2 * PAD) * (i / max(1, n - 1))

    def y(v: float) -> float:
        return CHART_H - PAD - (CHART_H - 2 * PAD) * ((v - low) / span)

    series = []
    for key in keys:
        points = [
            f"{x(i):.1f},{y(float(e[key])):.1f}"
            for i, e in enumerate(history)
            if isinstance(e.get(key), (int, float))
        ]
        series.append({"key": key, "points": " ".join(points)})
    qat = [i for i, e in enumerate(history) if e.get("phase") == "qat"]
    return {
        "series": series,
        "qat_x": round(x(qat[0]), 1) if qat else None,
        "low": round(low, 4),
        "high": round(high, 4),
        "epochs": n,
        "width": CHART_W,
        "height": CHART_H,
        "pad": PAD,
    }


def confusion_chart(matrix: list[list[int]]) -> dict[str, Any]:
    """Cells with an opacity by row share (rows: true class, columns: predicted)."""
    size = len(matrix)
    if size == 0 or size > 64:
        return {"cells": [], "size": 0}
    cell = max(6, min(32, 320 // size))
    cells = []
    for i, row in enumerate(matrix):
        total = sum(v for v in row if isinstance(v, int)) or 1
        for j, value in enumerate(row):
            count = value if isinstance(value, int) else 0
            cells.append(
                {"x": j * cell, "y": i * cell, "n": count, "true": i, "predicted": j,
                 "opacity": round(0.05 + 0.95 * count / total, 3)}
            )  # fmt: skip
    return {"cells": cells, "size": size, "cell": cell, "side": size * cell}
