"""edgehook's configuration: one TOML file plus environment overrides, loaded once into
frozen typed objects. Every error names the key, the problem and the fix.

Lookup: `--config PATH`, else $EDGEHOOK_CONFIG, else ./edgehook.toml if present, else the
embedded defaults. Relative paths in the file are relative to the file's directory.
Environment overrides: EDGEHOOK_DATA_DIR, EDGEHOOK_HOST, EDGEHOOK_PORT,
EDGEHOOK_MODEL_SIGNING_KEY_FILE (the other secrets: see credentials.py).
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.rules import Rule, parse_rules
from core.tables import Table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

DEFAULT_CONFIG_NAME = "edgehook.toml"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
CLIENT_IP_HEADERS = ("x-forwarded-for", "cf-connecting-ip")


@dataclass(frozen=True)
class Limits:
    """The receiver's per-client token buckets (receiver/ratelimit.py)."""

    requests_per_second: float = 5.0
    burst: int = 30
    auth_failures_per_minute: float = 6.0
    auth_failure_burst: int = 10
    max_clients: int = 16384


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8090
    allow_public_bind: bool = False
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    client_ip_header: str = "x-forwarded-for"
    max_body_bytes: int = 64 * 1024
    max_json_depth: int = 16
    max_connections: int = 2048
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0


@dataclass(frozen=True)
class AuditConfig:
    max_file_bytes: int = 16 * 1024 * 1024
    keep_files: int = 10
    rejections_per_second: float = 5.0
    rejection_burst: int = 50
    summary_interval_s: float = 10.0


@dataclass(frozen=True)
class WorkerConfig:
    lease_s: float = 30.0
    heartbeat_s: float = 10.0
    poll_s: float = 0.05
    concurrency: int = 1
    max_log_bytes: int = 1024 * 1024
    shutdown_grace_s: float = 30.0
    kill_grace_s: float = 5.0
    retry_base_s: float = 5.0
    retry_max_s: float = 600.0
    job_user: str | None = None
    # 0 = no limit. Address space is unlimited by default: CUDA reserves huge virtual ranges.
    address_space_mb: int = 0
    open_files: int = 1024
    cpu_seconds: int = 0


@dataclass(frozen=True)
class ArtifactsConfig:
    source: str = "wandb"
    local_root: Path | None = None
    download_timeout_s: float = 900.0


@dataclass(frozen=True)
class TunnelConfig:
    provider: str = "cloudflared"
    domain: str | None = None  # ngrok reserved domain
    hostname: str | None = None  # cloudflared named tunnel hostname
    ngrok_path: Path | None = None
    cloudflared_path: Path | None = None
    ngrok_authtoken_file: Path | None = None
    cloudflared_token_file: Path | None = None


@dataclass(frozen=True)
class SecretFiles:
    """Where the file-based secrets live when the environment does not provide them."""

    access_token_file: Path | None = None
    old_access_token_files: tuple[Path, ...] = ()  # still accepted, during a rotation
    signing_secret_files: tuple[Path, ...] = ()
    audit_key_file: Path | None = None
    wandb_api_key_file: Path | None = None
    model_signing_key_file: Path | None = None


@dataclass(frozen=True)
class ModelsConfig:
    promotion_tolerance: float = 0.01
    trusted_keys: tuple[str, ...] = ()  # besides this device's own key
    allow_unsigned: bool = False
    publish: str = "auto"  # auto: publish to W&B when artifacts come from W&B | always | never
    publish_retries: int = 5  # transient W&B failures while publishing


@dataclass(frozen=True)
class Config:
    base_dir: Path
    data_dir: Path
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    rate_limit: Limits = field(default_factory=Limits)
    audit: AuditConfig = field(default_factory=AuditConfig)
    secrets: SecretFiles = field(default_factory=SecretFiles)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    duplicate_window_s: float = 86400.0
    device_id: str = ""  # names this device in the models it makes; default: the hostname
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    rules: tuple[Rule, ...] = ()

    @property
    def store_path(self) -> Path:
        return self.data_dir / "edgehook.db"

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to read, or None for the embedded defaults."""
    chosen = explicit or env.get("EDGEHOOK_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            raise ConfigError(
                "--config",
                f"{chosen} does not exist",
                "give the path of an existing file, or run `edgehook init`",
            )
        return path
    default = cwd / DEFAULT_CONFIG_NAME
    return default if default.is_file() else None


def load_config(
    path: Path | None, env: Mapping[str, str], *, cwd: Path, data_dir: str | None = None
) -> Config:
    """Read, validate and freeze the configuration. Raises ConfigError."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"is not valid TOML ({exc})", "fix the syntax") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(str(path), f"cannot be read ({exc})", "check the path") from exc
    base = (path.parent if path is not None else cwd).resolve()
    top = Table(raw, "")

    device_id = top.text("device_id", None) or socket.gethostname()
    chosen_data_dir = (
        data_dir or env.get("EDGEHOOK_DATA_DIR") or top.text("data_dir", "edgehook-data")
    )
    server = _server(top.table("server"), env)
    rate_limit = _rate_limit(top.table("rate_limit"))
    audit = _audit(top.table("audit"))
    secrets = _secret_files(top.table("secrets"), base, env)
    dedupe = top.table("dedupe")
    window = dedupe.number("window_s", 86400.0, minimum=0.0, maximum=90 * 86400.0)
    dedupe.finish()
    models = _models(top.table("models"))
    tunnel = _tunnel(top.table("tunnel"), base)
    worker = _worker(top.table("worker"))
    artifacts = _artifacts(top.table("artifacts"), base)
    rules = parse_rules(top.tables("rules"))
    top.text("data_dir", None)
    top.finish()
    return Config(
        base_dir=base,
        data_dir=_resolve(base, chosen_data_dir),
        path=path,
        server=server,
        rate_limit=rate_limit,
        audit=audit,
        secrets=secrets,
        worker=worker,
        artifacts=artifacts,
        duplicate_window_s=window,
        device_id=device_id,
        models=models,
        tunnel=tunnel,
        rules=rules,
    )


def _server(t: Table, env: Mapping[str, str]) -> ServerConfig:
    host = env.get("EDGEHOOK_HOST") or t.text("host", "127.0.0.1")
    t.text("host", None)  # read (and type-checked) even when the environment overrides it
    port_text = env.get("EDGEHOOK_PORT")
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError("EDGEHOOK_PORT", f"'{port_text}' is not a port", "use 1-65535")
        port = int(port_text)
        t.integer("port", 8090)
    else:
        port = t.integer("port", 8090, minimum=1, maximum=65535)
    proxies = t.str_list("trusted_proxies", ("127.0.0.1/32", "::1/128"))
    for proxy in proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ConfigError(
                t.key("trusted_proxies"),
                f"'{proxy}' is not an address or network",
                "list addresses like 127.0.0.1 or networks like 10.0.0.0/8",
            ) from exc
    header = t.text("client_ip_header", "x-forwarded-for").lower()
    if header not in CLIENT_IP_HEADERS:
        raise ConfigError(
            t.key("client_ip_header"),
            f"'{header}' is not supported",
            f"use one of {CLIENT_IP_HEADERS} (cf-connecting-ip for cloudflared)",
        )
    config = ServerConfig(
        host=host,
        port=port,
        allow_public_bind=t.flag("allow_public_bind", False),
        trusted_proxies=proxies,
        client_ip_header=header,
        max_body_bytes=t.integer(
            "max_body_bytes", 64 * 1024, minimum=1024, maximum=16 * 1024 * 1024
        ),
        max_json_depth=t.integer("max_json_depth", 16, minimum=2, maximum=64),
        max_connections=t.integer("max_connections", 2048, minimum=8, maximum=65536),
        max_header_bytes=t.integer("max_header_bytes", 16 * 1024, minimum=1024, maximum=1 << 20),
        header_timeout_s=t.number("header_timeout_s", 10.0, minimum=0.1, maximum=300.0),
        body_timeout_s=t.number("body_timeout_s", 10.0, minimum=0.1, maximum=300.0),
    )
    t.finish()
    return config


def _rate_limit(t: Table) -> Limits:
    limits = Limits(
        requests_per_second=t.number("requests_per_second", 5.0, minimum=0.01),
        burst=t.integer("burst", 30, minimum=1),
        auth_failures_per_minute=t.number("auth_failures_per_minute", 6.0, minimum=0.0),
        auth_failure_burst=t.integer("auth_failure_burst", 10, minimum=1),
        max_clients=t.integer("max_clients", 16384, minimum=16, maximum=1_000_000),
    )
    t.finish()
    return limits


def _audit(t: Table) -> AuditConfig:
    audit = AuditConfig(
        max_file_bytes=t.integer("max_file_bytes", 16 * 1024 * 1024, minimum=4096),
        keep_files=t.integer("keep_files", 10, minimum=0),
        rejections_per_second=t.number("rejections_per_second", 5.0, minimum=0.0),
        rejection_burst=t.integer("rejection_burst", 50, minimum=1),
        summary_interval_s=t.number("summary_interval_s", 10.0, minimum=0.1, maximum=3600.0),
    )
    t.finish()
    return audit


def _worker(t: Table) -> WorkerConfig:
    lease = t.number("lease_s", 30.0, minimum=2.0, maximum=3600.0)
    worker = WorkerConfig(
        lease_s=lease,
        heartbeat_s=t.number("heartbeat_s", min(10.0, lease / 3), minimum=0.5, maximum=lease / 2),
        poll_s=t.number("poll_s", 0.05, minimum=0.01, maximum=5.0),
        concurrency=t.integer("concurrency", 1, minimum=1, maximum=64),
        max_log_bytes=t.integer("max_log_bytes", 1024 * 1024, minimum=64 * 1024),
        shutdown_grace_s=t.number("shutdown_grace_s", 30.0, minimum=0.0, maximum=3600.0),
        kill_grace_s=t.number("kill_grace_s", 5.0, minimum=0.1, maximum=300.0),
        retry_base_s=t.number("retry_base_s", 5.0, minimum=0.0, maximum=3600.0),
        retry_max_s=t.number("retry_max_s", 600.0, minimum=0.0, maximum=86400.0),
        job_user=t.text("job_user", None) or None,
        address_space_mb=t.integer("address_space_mb", 0, minimum=0),
        open_files=t.integer("open_files", 1024, minimum=16, maximum=1 << 20),
        cpu_seconds=t.integer("cpu_seconds", 0, minimum=0),
    )
    if worker.job_user is not None:
        import pwd

        try:
            pwd.getpwnam(worker.job_user)
        except KeyError as exc:
            raise ConfigError(
                t.key("job_user"),
                f"no user named '{worker.job_user}'",
                "create the user or remove the setting",
            ) from exc
    t.finish()
    return worker


def _artifacts(t: Table, base: Path) -> ArtifactsConfig:
    source = t.text("source", "wandb")
    if source not in ("wandb", "local"):
        raise ConfigError(t.key("source"), f"'{source}' is not a source", 'use "wandb" or "local"')
    root = t.text("local_root", None)
    if source == "local" and root is None:
        raise ConfigError(
            t.key("local_root"),
            'is required with source = "local"',
            "give the directory that holds entity/project/collection/version",
        )
    timeout = t.number("download_timeout_s", 900.0, minimum=1.0, maximum=86400.0)
    artifacts = ArtifactsConfig(
        source=source,
        local_root=_resolve(base, root) if root else None,
        download_timeout_s=timeout,
    )
    t.finish()
    return artifacts


def _models(t: Table) -> ModelsConfig:
    keys = t.str_list("trusted_keys", ())
    for key in keys:
        if not key.startswith("ed25519:") or len(key) != len("ed25519:") + 44:
            raise ConfigError(
                t.key("trusted_keys"),
                f"'{key[:30]}' is not an ed25519 public key",
                "paste the line `edgehook keys show` prints on the signing machine",
            )
    models = ModelsConfig(
        promotion_tolerance=t.number("promotion_tolerance", 0.01, minimum=0.0, maximum=1.0),
        trusted_keys=keys,
        allow_unsigned=t.flag("allow_unsigned", False),
        publish=t.text("publish", "auto"),
        publish_retries=t.integer("publish_retries", 5, minimum=0, maximum=20),
    )
    if models.publish not in ("auto", "always", "never"):
        raise ConfigError(
            t.key("publish"),
            f"'{models.publish}' is not a choice",
            'use "auto", "always" or "never"',
        )
    t.finish()
    return models


def _tunnel(t: Table, base: Path) -> TunnelConfig:
    provider = t.text("provider", "cloudflared")
    if provider not in ("cloudflared", "ngrok"):
        raise ConfigError(
            t.key("provider"),
            f"'{provider}' is not a tunnel provider",
            'use "cloudflared" or "ngrok"',
        )

    def path(name: str) -> Path | None:
        value = t.text(name, None)
        return _resolve(base, value) if value else None

    tunnel = TunnelConfig(
        provider=provider,
        domain=t.text("domain", None),
        hostname=t.text("hostname", None),
        ngrok_path=path("ngrok_path"),
        cloudflared_path=path("cloudflared_path"),
        ngrok_authtoken_file=path("ngrok_authtoken_file"),
        cloudflared_token_file=path("cloudflared_token_file"),
    )
    t.finish()
    return tunnel


def _secret_files(t: Table, base: Path, env: Mapping[str, str]) -> SecretFiles:
    access = t.text("access_token_file", None)
    audit_key = t.text("audit_key_file", None)
    wandb_key = t.text("wandb_api_key_file", None)
    # The other secrets' *_FILE variables are read in credentials.py; this one is a path the
    # worker hands to pipeline.models.signing, so the override lives here (systemd: %d/...).
    signing_key_in_file = t.text("model_signing_key_file", None)
    signing_key = env.get("EDGEHOOK_MODEL_SIGNING_KEY_FILE") or signing_key_in_file
    files = SecretFiles(
        access_token_file=_resolve(base, access) if access else None,
        old_access_token_files=tuple(
            _resolve(base, p) for p in t.str_list("old_access_token_files", ())
        ),
        signing_secret_files=tuple(
            _resolve(base, p) for p in t.str_list("signing_secret_files", ())
        ),
        audit_key_file=_resolve(base, audit_key) if audit_key else None,
        wandb_api_key_file=_resolve(base, wandb_key) if wandb_key else None,
        model_signing_key_file=_resolve(base, signing_key) if signing_key else None,
    )
    t.finish()
    return files


def _resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
