"""One receiver process: its services built once, the app under uvicorn on loopback, and
the open-files limit its connections need. `edgehook serve` starts one or several of them
(processes.py)."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Mapping

import structlog
import uvicorn

from core.audit import AuditLog
from core.config import Config, is_loopback
from core.credentials import load_audit_key, load_secrets
from core.errors import ConfigError
from core.store import open_store
from receiver.app import build_app
from receiver.clients import ClientResolver
from receiver.committer import Committer
from receiver.fastpath import FastPath
from receiver.protocol import bounded_protocol
from receiver.ratelimit import RateLimiter
from receiver.record import audit_connection_refusal
from receiver.services import Services

log = structlog.get_logger("edgehook.serve")


def make_services(
    config: Config,
    env: Mapping[str, str],
    *,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    worker: int = 0,
) -> Services:
    """Check secrets, migrate the store, open the audit log (receiver process `worker`'s
    chain: the audit directory itself for the first, `receiver-N` below it for the others).
    Raises EdgehookError."""
    secrets = load_secrets(config, env)
    audit_key = load_audit_key(config, env)
    config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    open_store(config.store_path).close()
    return Services(
        config=config,
        secrets=secrets,
        limiter=RateLimiter(config.rate_limit),
        resolver=ClientResolver(config.server.trusted_proxies, config.server.client_ip_header),
        audit=AuditLog(
            config.audit_dir / f"receiver-{worker}" if worker else config.audit_dir,
            audit_key,
            config.audit,
            clock=clock,
        ),
        committer=Committer(config.store_path, config.duplicate_window_s),
        clock=clock,
        monotonic=monotonic,
    )


def check_bind(
    host: str,
    allow_public: bool,
    key: str = "server.host",
    why: str = "the tunnel is the way in",
    exposed: str = "the receiver is reachable without the tunnel; firewall it",
) -> None:
    if is_loopback(host):
        return
    if not allow_public:
        raise ConfigError(
            key,
            f"{host} is not a loopback address",
            f"keep 127.0.0.1 ({why}) or pass --allow-public-bind",
        )
    log.warning("public_bind", host=host, detail=exposed)


def uvicorn_config(services: Services, host: str, port: int) -> uvicorn.Config:
    server = services.config.server

    def refused(peer: str, status: int, reason: str) -> None:
        audit_connection_refusal(services, peer, status, reason)

    return uvicorn.Config(
        build_app(services),
        host=host,
        port=port,
        server_header=False,  # no banner
        proxy_headers=False,  # forwarding headers are ours to judge (clients.py)
        access_log=False,  # the audit log is the access log
        log_config=None,
        lifespan="on",
        # Capacity is protocol.py's: uvicorn's limit_concurrency counts idle connections,
        # which would let idle sockets shut genuine deliveries out.
        http=bounded_protocol(
            server.max_header_bytes,
            server.header_timeout_s,
            max_connections=connection_capacity(server.max_connections),
            on_refused=refused,
            early=FastPath(services),
        ),
        limit_concurrency=None,
        timeout_keep_alive=5,
    )


# Descriptors besides connections: the store, the audit log, the listener, the event loop.
_SPARE_FDS = 64


def connection_capacity(wanted: int) -> int:
    """Raise the open-files limit so `wanted` connections fit (up to the hard limit, which
    needs root to raise); the capacity that fits, with a warning when it is less."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + _SPARE_FDS
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft != resource.RLIM_INFINITY and soft < needed:
        fits = max(8, soft - _SPARE_FDS)
        log.warning(
            "connection_capacity_reduced",
            wanted=wanted,
            capacity=fits,
            detail="raise the open-files limit (LimitNOFILE=) to serve server.max_connections",
        )
        return fits
    return wanted
