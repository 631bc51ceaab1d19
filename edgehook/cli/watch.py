"""`edgehook watch`: pull mode, polling W&B for the aliases in `[watch]`."""

from __future__ import annotations

import argparse
import signal
import threading
from collections.abc import Mapping
from typing import Any

import structlog

from core import audit
from core.credentials import load_audit_key, load_wandb_key
from core.errors import ConfigError
from core.store import open_store
from edgehook.cli.common import Subparsers, add_command, config
from pipeline.watch import Watcher, wandb_resolver


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "watch",
        "poll W&B for the aliases in [watch] and queue what moved (no webhook, no tunnel)",
        "edgehook watch",
        "edgehook watch --once",
    )
    p.add_argument("--once", action="store_true", help="poll every watched alias once, then exit")
    p.set_defaults(func=run_watch)


def run_watch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    if not loaded.watch.artifacts:
        raise ConfigError(
            "watch.artifacts",
            "is empty",
            'list the aliases to watch: artifacts = ["entity/project/name:alias"]',
        )
    if loaded.artifacts.source != "wandb":
        raise ConfigError(
            "artifacts.source",
            f"is {loaded.artifacts.source!r}; edgehook watch polls W&B",
            'set artifacts.source = "wandb"',
        )
    key = load_audit_key(loaded, env)
    open_store(loaded.store_target).close()

    def record(kind: str, **fields: Any) -> None:
        audit.append(loaded.audit_dir / "watch", key, loaded.audit, kind, **fields)

    watcher = Watcher(loaded, wandb_resolver(load_wandb_key(loaded, env)), record)
    if args.once:
        outcomes = watcher.poll()
        watcher.flush_summary()
        for o in outcomes:
            version = f" {o.version}" if o.version else ""
            job = f" (job {o.job_id})" if o.job_id is not None else ""
            detail = f": {o.detail}" if o.detail else ""
            print(f"{o.artifact}{version}: {o.outcome}{detail}{job}")
        return 1 if any(o.outcome == "error" for o in outcomes) else 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    structlog.get_logger("edgehook.watch").info(
        "watching",
        artifacts=list(loaded.watch.artifacts),
        interval_s=loaded.watch.interval_s,
        data_dir=str(loaded.data_dir),
    )
    watcher.run(stop)
    return 0
