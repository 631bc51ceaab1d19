"""Each process's health for the overview, from what it leaves behind: the receiver's
listening port, the worker's lock on its data directory, the watcher's last poll, the
predictor's /healthz. None of these probes writes an audit line or takes a lock."""

from __future__ import annotations

import json
import os
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.audit import list_segments
from core.auditread import _timestamp
from core.config import Config

PROBE_TIMEOUT_S = 0.5
TAIL_BYTES = 65536


@dataclass
class Seen:
    up: bool
    since: float


class Health:
    """Up or down per process, and since when this console has seen it so."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self._seen: dict[str, Seen] = {}

    def processes(self, now: float, last_poll: float | None) -> list[dict[str, Any]]:
        cfg = self.config
        worker_up = _locked(cfg.data_dir / "worker.lock")
        worker_tail = tail_records(cfg.audit_dir / "worker")
        started = [r for r in worker_tail if r.get("kind") == "worker_start"]
        predictor = _predictor(cfg.predictor.host, cfg.predictor.port)
        watching = bool(cfg.watch.artifacts)
        fresh = 2 * cfg.watch.interval_s + 30
        watch_up = watching and last_poll is not None and now - last_poll < fresh
        receiver_tail = tail_records(cfg.audit_dir)
        rows = [
            ("receiver", _listening(cfg.server.host, cfg.server.port), None,
             _last_ts(receiver_tail), f"{cfg.server.host}:{cfg.server.port}"),
            ("worker", worker_up, _ts(started[-1]) if started and worker_up else None,
             _last_ts(worker_tail), "holds worker.lock" if worker_up else "no worker.lock"),
            ("watcher", watch_up, None, last_poll,
             f"{len(cfg.watch.artifacts)} aliases" if watching else "watch.artifacts is empty"),
            ("predictor", predictor is not None, _iso_ts(predictor, "since"), None,
             f"model {predictor.get('model')}" if predictor else
             f"{cfg.predictor.host}:{cfg.predictor.port} does not answer"),
        ]  # fmt: skip
        out = []
        for name, up, since, last, detail in rows:
            seen = self._seen.get(name)
            if seen is None or seen.up != up:
                seen = self._seen[name] = Seen(up, now)
            out.append(
                {
                    "name": name,
                    "up": up,
                    "since": since if since is not None else seen.since,
                    "last_activity": last,
                    "detail": detail,
                }
            )
        return out


def tail_records(directory: Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The records in the last `max_bytes` of a chain's newest segment."""
    segments = list_segments(directory)
    if not segments:
        return []
    try:
        with segments[-1][1].open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first is likely cut
    out = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _ts(record: dict[str, Any]) -> float | None:
    return _timestamp(record.get("ts"))


def _last_ts(records: list[dict[str, Any]]) -> float | None:
    return _ts(records[-1]) if records else None


def _iso_ts(answer: dict[str, Any] | None, key: str) -> float | None:
    return _ts({"ts": answer.get(key)}) if answer else None


def _listening(host: str, port: int) -> bool:
    # A wildcard bind is probed through loopback: we compare against it, never bind it.
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host  # noqa: S104  # nosec B104
    try:
        with socket.create_connection((target, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _locked(path: Path) -> bool:
    """Whether some process holds a flock on `path`, read from /proc/locks (Linux) so the
    probe never takes the lock itself (a worker starting at that instant would give up)."""
    try:
        inode = path.stat().st_ino
        text = Path("/proc/locks").read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False


def _predictor(host: str, port: int) -> dict[str, Any] | None:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104  # nosec B104
    url = f"http://{target}:{port}/healthz"
    try:
        # Always http:// to the configured predictor (never a user-given scheme).
        with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S) as answer:  # nosec B310
            data = json.loads(answer.read(65536))
    except urllib.error.HTTPError as exc:  # up, but serving no model (503)
        exc.close()
        return {"model": None}
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
