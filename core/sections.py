"""The config's sections: every setting declared once, with its type, default, bounds and
one line of documentation (core/settings.py turns these into the loader and the settings table
of docs/configuration.md).
The models' sections (models, training, predictor) are in core/modelsections.py.
core/config.py assembles them into the Config and checks what a declaration cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.modelsections import ARCHS as ARCHS
from core.modelsections import ModelsConfig as ModelsConfig
from core.modelsections import PredictorConfig as PredictorConfig
from core.modelsections import TrainingConfig as TrainingConfig
from core.settings import setting

CLIENT_IP_HEADERS = ("x-forwarded-for", "cf-connecting-ip")
MiB = 1024 * 1024


@dataclass(frozen=True)
class General:
    data_dir: str = setting(
        "edgehook-data",
        "store (`edgehook.db`) and audit log (`audit/`); also `--data-dir`, `$EDGEHOOK_DATA_DIR`",
    )
    device_id: str = setting(
        "",
        "names this device in the models it makes (`edgehook_device`)",
        shown="the hostname",
    )


@dataclass(frozen=True)
class ServerConfig:
    host: str = setting(
        "127.0.0.1",
        "also `$EDGEHOOK_HOST`, `serve --host`; a non-loopback host needs `--allow-public-bind`",
    )
    port: int = setting(8090, "also `$EDGEHOOK_PORT`, `serve --port`", minimum=1, maximum=65535)
    allow_public_bind: bool = setting(False, "allow a non-loopback `host` (not recommended)")
    trusted_proxies: tuple[str, ...] = setting(
        ("127.0.0.1/32", "::1/128"), "peers whose forwarding header is believed (the tunnel)"
    )
    client_ip_header: str = setting(
        "x-forwarded-for",
        "right-most untrusted entry; `cf-connecting-ip` for cloudflared",
        choices=CLIENT_IP_HEADERS,
    )
    max_body_bytes: int = setting(
        64 * 1024, "413 above this, counted while reading", minimum=1024, maximum=16 * MiB
    )
    workers: int = setting(
        1,
        "receiver processes, each listening on the port with its own socket (SO_REUSEPORT); "
        "2 or more on a multi-core device answer a forged flood about twice as fast (each "
        "keeps its own rate budgets and audit chain, `audit/receiver-N`)",
        minimum=1,
        maximum=16,
    )
    max_json_depth: int = setting(16, "400 above this", minimum=2, maximum=64)
    max_connections: int = setting(
        2048,
        "connection table; when full, the oldest connection waiting for a request head makes "
        "room (408); 503 only when every place holds a request. The open-files limit is "
        "raised to fit",
        minimum=8,
        maximum=65536,
    )
    max_header_bytes: int = setting(
        16 * 1024, "request line + headers; 431 above this", minimum=1024, maximum=MiB
    )
    header_timeout_s: float = setting(
        10.0, "a head not received in time gets 408", minimum=0.1, maximum=300.0
    )
    body_timeout_s: float = setting(
        10.0, "a body not received in time gets 408", minimum=0.1, maximum=300.0
    )


@dataclass(frozen=True)
class RateLimits:
    """The receiver's per-client token buckets (receiver/ratelimit.py)."""

    requests_per_second: float = setting(
        5.0, "per client, for requests without the right Access token", minimum=0.01
    )
    burst: int = setting(30, "per client", minimum=1)
    auth_failures_per_minute: float = setting(
        6.0, "per client, spent by 401s (wrong token or signature)", minimum=0.0
    )
    auth_failure_burst: int = setting(10, "per client", minimum=1)
    max_clients: int = setting(
        16384, "buckets kept (least recently seen evicted)", minimum=16, maximum=1_000_000
    )


@dataclass(frozen=True)
class AuditConfig:
    max_file_bytes: int = setting(16 * MiB, "segment rotation", minimum=4096)
    keep_files: int = setting(10, "segments kept (`0` keeps all)", minimum=0)
    rejections_per_second: float = setting(
        5.0, "unproven rejections written one by one; the rest summarised", minimum=0.0
    )
    rejection_burst: int = setting(50, "the same, as a burst", minimum=1)
    summary_interval_s: float = setting(
        10.0, "how often suppressed rejections are summarised", minimum=0.1, maximum=3600.0
    )


@dataclass(frozen=True)
class DedupeConfig:
    window_s: float = setting(
        86400.0,
        "deliveries equal to an earlier one (bytes or JSON) within this window are duplicates",
        minimum=0.0,
        maximum=90 * 86400.0,
    )


@dataclass(frozen=True)
class StoreConfig:
    url: str = setting(
        "sqlite",
        "`sqlite` (`edgehook.db` in the data dir) or `postgresql://...` (docs/postgresql.md); "
        "also `$EDGEHOOK_STORE_URL`, `$EDGEHOOK_STORE_URL_FILE` (for a password)",
    )

    def __repr__(self) -> str:  # the URL may hold a password: never printed
        return "StoreConfig(url=<redacted>)"


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float = setting(30.0, "job lease", minimum=2.0, maximum=3600.0)
    heartbeat_s: float = setting(
        10.0, "lease heartbeat (at most `lease_s / 2`)", minimum=0.5, shown="min(10, `lease_s` / 3)"
    )
    poll_s: float = setting(
        0.05, "how often an idle worker looks for work", minimum=0.01, maximum=5.0
    )
    concurrency: int = setting(1, "jobs at once", minimum=1, maximum=64)
    max_log_bytes: int = setting(MiB, "job output kept per attempt", minimum=64 * 1024)
    shutdown_grace_s: float = setting(
        30.0, "on SIGTERM, how long running jobs may finish", minimum=0.0, maximum=3600.0
    )
    kill_grace_s: float = setting(5.0, "SIGTERM-to-SIGKILL for a job", minimum=0.1, maximum=300.0)
    retry_base_s: float = setting(
        5.0,
        "exponential backoff for transient failures: first delay",
        minimum=0.0,
        maximum=3600.0,
    )
    retry_max_s: float = setting(
        600.0, "exponential backoff: longest delay", minimum=0.0, maximum=86400.0
    )
    job_user: str | None = setting(None, "run jobs as this user (worker running as root)")
    # 0 = no limit. Address space is unlimited by default: CUDA reserves huge virtual ranges.
    address_space_mb: int = setting(0, "job rlimit (`0` = none)", minimum=0)
    open_files: int = setting(1024, "job rlimit", minimum=16, maximum=1 << 20)
    cpu_seconds: int = setting(0, "job rlimit (`0` = none)", minimum=0)


@dataclass(frozen=True)
class ArtifactsConfig:
    source: str = setting(
        "wandb", "or `local` (air-gapped devices, the demo)", choices=("wandb", "local")
    )
    local_root: Path | None = setting(
        None,
        "`entity/project/collection/<version>/` with `manifest.json`, `aliases.json` per "
        'collection; required with `source = "local"`',
    )
    download_timeout_s: float = setting(
        900.0,
        "a W&B download that has not finished by then fails the attempt as transient (the "
        "SDK alone retries a dropping server for ~20 min)",
        minimum=1.0,
        maximum=86400.0,
    )


@dataclass(frozen=True)
class TunnelConfig:
    provider: str = setting("cloudflared", "or `ngrok`", choices=("cloudflared", "ngrok"))
    domain: str | None = setting(None, "ngrok's reserved domain")
    hostname: str | None = setting(None, "a named cloudflared tunnel's hostname")
    ngrok_path: Path | None = setting(None, "the ngrok binary (default: PATH)")
    cloudflared_path: Path | None = setting(None, "the cloudflared binary (default: PATH)")
    ngrok_authtoken_file: Path | None = setting(None, "ngrok's token")
    cloudflared_token_file: Path | None = setting(None, "a named cloudflared tunnel's token")


@dataclass(frozen=True)
class SecretFiles:
    """Where the file-based secrets live when the environment does not provide them."""

    access_token_file: Path | None = setting(
        None, "the W&B webhook's Access token; or `$EDGEHOOK_ACCESS_TOKEN[_FILE]`"
    )
    old_access_token_files: tuple[Path, ...] = setting(
        (), "Access tokens still accepted while a rotation is under way (SECURITY.md)"
    )
    signing_secret_files: tuple[Path, ...] = setting(
        (),
        "the W&B webhook's Secret(s); several for rotation; plus `$EDGEHOOK_SIGNING_SECRET[_FILE]`",
    )
    audit_key_file: Path | None = setting(
        None, "the audit log's HMAC key; or `$EDGEHOOK_AUDIT_KEY[_FILE]`"
    )
    wandb_api_key_file: Path | None = setting(
        None, "the worker's W&B API key; or `$EDGEHOOK_WANDB_API_KEY[_FILE]`"
    )
    model_signing_key_file: Path | None = setting(
        None,
        "this device's Ed25519 key (`edgehook init` / `keys init` make it); or "
        "`$EDGEHOOK_MODEL_SIGNING_KEY_FILE`",
    )
    console_token_file: Path | None = setting(
        None, "the operator console's token; or `$EDGEHOOK_CONSOLE_TOKEN[_FILE]`"
    )


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = setting(
        "127.0.0.1",
        "`edgehook console --host`; a non-loopback host needs `--allow-public-bind`",
    )
    port: int = setting(8092, "`edgehook console --port`", minimum=1, maximum=65535)
    allow_public_bind: bool = setting(
        False, "allow a non-loopback `host` (the console can retry, cancel and roll back)"
    )
    session_hours: float = setting(
        12.0,
        "how long a login lasts (sessions also end when the console restarts)",
        minimum=0.1,
        maximum=720.0,
    )
    login_attempts_per_minute: float = setting(
        5.0,
        "wrong-token logins allowed per minute (per address and in all)",
        minimum=0.1,
        maximum=600.0,
    )


@dataclass(frozen=True)
class WatchConfig:
    artifacts: tuple[str, ...] = setting(
        (),
        "aliases `edgehook watch` polls: `entity/project/name:alias`, each matched against the "
        "rules as an `ADD_ARTIFACT_ALIAS` event",
    )
    interval_s: float = setting(
        60.0,
        "seconds between polls (each waits 0-10% longer: jitter)",
        minimum=10.0,
        maximum=86400.0,
    )
    on_first_sight: str = setting(
        "act",
        "the first version seen: `act` (queue it: a fresh device converges) or `record`",
        choices=("act", "record"),
    )
    backoff_max_s: float = setting(
        900.0,
        "after failed polls the interval doubles, up to this",
        minimum=10.0,
        maximum=86400.0,
    )
    summary_interval_s: float = setting(
        3600.0,
        "polls that change nothing are counted into one audit line this often",
        minimum=60.0,
        maximum=86400.0,
    )


# The config's tables, in the settings table's order: (TOML table, its settings).
SECTIONS: list[tuple[str, type[Any]]] = [
    ("", General),
    ("server", ServerConfig),
    ("rate_limit", RateLimits),
    ("audit", AuditConfig),
    ("dedupe", DedupeConfig),
    ("store", StoreConfig),
    ("secrets", SecretFiles),
    ("worker", WorkerConfig),
    ("models", ModelsConfig),
    ("training", TrainingConfig),
    ("predictor", PredictorConfig),
    ("console", ConsoleConfig),
    ("watch", WatchConfig),
    ("tunnel", TunnelConfig),
    ("artifacts", ArtifactsConfig),
]
