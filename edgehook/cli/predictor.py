"""`edgehook predictor`: serve the active model to the device's applications, on loopback."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from edgehook.cli.common import Subparsers, add_bind_options, add_command, config


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "predictor",
        "serve the active model over HTTP (loopback :8091), following every promotion",
        "edgehook predictor",
        "edgehook predictor --port 9091",
        "curl --data-binary @door.jpg -H 'Content-Type: image/jpeg' "
        "'http://127.0.0.1:8091/predict?top_k=3'",
    )
    add_bind_options(p, "predictor", 8091)
    p.set_defaults(func=run_predictor)


def run_predictor(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    import structlog

    from core import audit
    from core.credentials import load_audit_key
    from pipeline.models.predictor import Measured, Metrics, build_app
    from pipeline.models.serving import ActiveModel
    from pipeline.models.trust import SigningPolicy
    from receiver.server import check_bind

    loaded = config(args, env)
    settings = loaded.predictor
    host = settings.host if args.host is None else args.host
    bind_port = settings.port if args.port is None else args.port
    check_bind(
        host,
        args.allow_public_bind or settings.allow_public_bind,
        "predictor.host" if args.host is None else "--host",
        why="the device's applications call it on loopback",
        exposed="the predictor answers anyone who reaches this address; firewall it",
    )
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
    import uvicorn

    from pipeline.models.predictor import (
        HEAD_TIMEOUT_S,
        KEEP_ALIVE_S,
        MAX_CONNECTIONS,
        MAX_HEAD_BYTES,
    )
    from receiver.protocol import bounded_protocol
    from receiver.server import connection_capacity

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
