"""`edgehook predictor`'s server: the active model, followed through every promotion, over
HTTP on the receiver's connection table. numpy, starlette and uvicorn load with this module:
the CLI imports it only for `edgehook predictor`."""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Mapping
from typing import Any

import structlog
import uvicorn

from core import audit
from core.config import Config
from core.credentials import load_audit_key
from pipeline.models.predictor import (
    HEAD_TIMEOUT_S,
    KEEP_ALIVE_S,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    Measured,
    Metrics,
    build_app,
)
from pipeline.models.serving import ActiveModel
from pipeline.models.trust import SigningPolicy
from receiver.protocol import bounded_protocol
from receiver.server import connection_capacity


def run(loaded: Config, env: Mapping[str, str], host: str, bind_port: int) -> int:
    """Serve until stopped; the address was checked by the command."""
    settings = loaded.predictor
    return_large_frees()
    key = load_audit_key(loaded, env)
    metrics = Metrics()

    def report(kind: str, **fields: Any) -> None:
        metrics.report(kind, **fields)
        audit.append(loaded.audit_dir / "predictor", key, loaded.audit, kind, **fields)

    active = ActiveModel(
        loaded.models_dir,
        SigningPolicy.from_config(loaded),
        engine=settings.engine,
        interval_s=settings.follow_interval_s,
        report=report,
        key_file=loaded.secrets.model_signing_key_file,  # engines prepared in a child
    )
    active.refresh()
    active.start()
    log = structlog.get_logger("edgehook.predictor")
    current = active.current
    log.info(
        "predicting",
        url=f"http://{host}:{bind_port}/predict",
        model=current.name if current else None,
        engine=current.engine.name if current else None,
    )

    server = http_server(
        Measured(build_app(active, settings, metrics), metrics, report), metrics, host, bind_port
    )
    try:
        server.run()
    finally:
        active.close()
    return 0


def return_large_frees() -> None:
    """Every buffer of 1 MiB or more mapped on its own and unmapped when freed. glibc
    otherwise raises its mmap threshold to each freed block (up to 32 MB), and the decoding
    threads' arenas keep a worst-case image's memory after it is freed: under a flood of
    such images the predictor held 276 MB where one decode at a time needs 188."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): their own policy stands
        return
    mallopt(M_MMAP_THRESHOLD, 1 << 20)


M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def http_server(
    app: Any,
    metrics: Any,
    host: str,
    port: int,
    *,
    head_timeout_s: float | None = None,
    keep_alive_s: int | None = None,
) -> Any:
    """The predictor's uvicorn server over the receiver's connection table: a slow or
    missing head is 408, idle keep-alive connections close after `keep_alive_s` and are
    evicted first, the open-files limit raised to fit (a slow body is the app's 408)."""

    def refused(_peer: str, status: int, _reason: str) -> None:  # below the app: counted
        metrics.requests.labels("other", str(status)).inc()

    http = bounded_protocol(
        MAX_HEAD_BYTES,
        HEAD_TIMEOUT_S if head_timeout_s is None else head_timeout_s,
        max_connections=connection_capacity(MAX_CONNECTIONS),
        on_refused=refused,
    )
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            server_header=False,
            access_log=False,  # /metrics counts requests; bodies are never logged
            log_config=None,
            lifespan="off",
            http=http,
            limit_concurrency=None,
            timeout_keep_alive=KEEP_ALIVE_S if keep_alive_s is None else keep_alive_s,
        )
    )
