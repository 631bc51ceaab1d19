"""edgehook's configuration: one TOML file plus environment overrides, loaded once into
frozen typed objects. Every error names the key, the problem and the fix.

Each setting is declared once, in core/sections.py, with its type, default, bounds and one
line of documentation (core/settings.py reads them; the table in docs/configuration.md is made
from them). What a declaration cannot say (a default computed from another setting, a value
checked against the system) is checked after the section is read, in `_checks`.

Lookup: `--config PATH`, else $EDGEHOOK_CONFIG, else ./edgehook.toml if present, else the
embedded defaults. Relative paths in the file are relative to the file's directory.
Environment overrides: EDGEHOOK_DATA_DIR, EDGEHOOK_HOST, EDGEHOOK_PORT,
EDGEHOOK_MODEL_SIGNING_KEY_FILE (the other secrets: see credentials.py).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from core import bounded
from core.errors import ConfigError
from core.names import ALIAS_FORBIDDEN, COLLECTION_FORBIDDEN, PROJECT_FORBIDDEN, name_problem
from core.rules import Rule, parse_rules
from core.secretfiles import read_secret_file_bytes
from core.sections import (
    CLIENT_IP_HEADERS,
    SECTIONS,
    ArtifactsConfig,
    AuditConfig,
    ConsoleConfig,
    DedupeConfig,
    General,
    ModelsConfig,
    PredictorConfig,
    RateLimits,
    SecretFiles,
    ServerConfig,
    StoreConfig,
    TrainingConfig,
    TunnelConfig,
    WatchConfig,
    WorkerConfig,
)
from core.settings import markdown_table, read_section, resolve
from core.tables import Table

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "CLIENT_IP_HEADERS",
    "ArtifactsConfig",
    "AuditConfig",
    "Config",
    "ConsoleConfig",
    "DedupeConfig",
    "ModelsConfig",
    "PredictorConfig",
    "RateLimits",
    "SecretFiles",
    "ServerConfig",
    "StoreConfig",
    "TrainingConfig",
    "TunnelConfig",
    "WatchConfig",
    "WorkerConfig",
    "find_config",
    "is_loopback",
    "load_config",
    "settings_markdown",
]
DEFAULT_CONFIG_NAME = "edgehook.toml"
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32  # tables and arrays; tomllib recurses once per level
# TOML strings (basic, literal, multi-line), removed before brackets are counted.
_TOML_STRINGS = re.compile(rb'""".*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'', re.S)
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Config:
    base_dir: Path
    data_dir: Path
    path: Path | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    rate_limit: RateLimits = field(default_factory=RateLimits)
    audit: AuditConfig = field(default_factory=AuditConfig)
    secrets: SecretFiles = field(default_factory=SecretFiles)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    dedupe: DedupeConfig = field(default_factory=DedupeConfig)
    device_id: str = ""  # General.device_id, or the hostname
    models: ModelsConfig = field(default_factory=ModelsConfig)
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    predictor: PredictorConfig = field(default_factory=PredictorConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    rules: tuple[Rule, ...] = ()

    @property
    def duplicate_window_s(self) -> float:
        return self.dedupe.window_s

    @property
    def store_path(self) -> Path:
        return self.data_dir / "edgehook.db"

    @property
    def store_target(self) -> Path | str:
        """What open_store opens: the SQLite file, or the PostgreSQL URL."""
        return self.store.url if self.store.url != "sqlite" else self.store_path

    @property
    def audit_dir(self) -> Path:
        return self.data_dir / "audit"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"


def settings_markdown() -> str:
    """docs/configuration.md's settings table (tests/core/test_settings.py keeps it in step)."""
    return markdown_table(SECTIONS)


def find_config(explicit: str | None, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The config file to read, or None for the embedded defaults."""
    chosen = explicit or env.get("EDGEHOOK_CONFIG")
    if chosen:
        path = Path(chosen)
        if not path.is_file():
            problem = (
                "is a directory"
                if path.is_dir()
                else "is not a regular file"
                if path.exists()
                else "does not exist"
            )
            raise ConfigError(
                "--config" if explicit else "EDGEHOOK_CONFIG",
                f"{chosen} {problem}",
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
            text = bounded.read_bytes(path, MAX_CONFIG_BYTES).decode("utf-8")
            bounded.check_depth(_TOML_STRINGS.sub(b"", text.encode()), MAX_DEPTH, "the file")
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(str(path), f"is not valid TOML ({exc})", "fix the syntax") from exc
        except (bounded.Unreadable, UnicodeDecodeError, RecursionError) as exc:
            why = str(exc) if isinstance(exc, bounded.Unreadable) else type(exc).__name__
            raise ConfigError(str(path), f"cannot be read ({why})", "check the path") from exc
    base = (path.parent if path is not None else cwd).resolve()
    top = Table(raw, "")
    read: dict[str, Any] = {}
    for name, cls in SECTIONS[1:]:
        section = top.table(name)
        read[name] = _checks.get(name, _unchanged)(read_section(cls, section, base), section, env)
    rules = parse_rules(top.tables("rules"))
    general = read_section(General, top, base)  # the top table's own keys, then finish()
    # --data-dir and $EDGEHOOK_DATA_DIR are typed in a shell: relative to where it runs;
    # the file's data_dir relative to the file.
    given = data_dir or env.get("EDGEHOOK_DATA_DIR")
    chosen = resolve(cwd.resolve(), given) if given else resolve(base, general.data_dir)
    if chosen.exists() and not chosen.is_dir():
        raise ConfigError(
            "--data-dir" if data_dir else "EDGEHOOK_DATA_DIR" if given else "data_dir",
            f"{chosen} is not a directory",
            "name a directory (edgehook creates it when missing)",
        )
    return Config(
        base_dir=base,
        data_dir=chosen,
        path=path,
        device_id=general.device_id or socket.gethostname(),
        rules=rules,
        **read,
    )


def _unchanged(section: Any, _t: Table, _env: Mapping[str, str]) -> Any:
    return section


def _server(server: ServerConfig, t: Table, env: Mapping[str, str]) -> ServerConfig:
    for proxy in server.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError as exc:
            raise ConfigError(
                t.key("trusted_proxies"),
                f"'{proxy}' is not an address or network",
                "list addresses like 127.0.0.1 or networks like 10.0.0.0/8",
            ) from exc
    port_text = env.get("EDGEHOOK_PORT")
    if port_text is not None and (not port_text.isdigit() or not 1 <= int(port_text) <= 65535):
        raise ConfigError("EDGEHOOK_PORT", f"'{port_text}' is not a port", "use 1-65535")
    return replace(
        server,
        host=env.get("EDGEHOOK_HOST") or server.host,
        port=int(port_text) if port_text is not None else server.port,
    )


def _worker(worker: WorkerConfig, t: Table, _env: Mapping[str, str]) -> WorkerConfig:
    if t.raw("heartbeat_s") is None:
        worker = replace(worker, heartbeat_s=min(10.0, worker.lease_s / 3))
    if worker.heartbeat_s > worker.lease_s / 2:
        raise ConfigError(
            t.key("heartbeat_s"),
            f"is {worker.heartbeat_s}, above the maximum {worker.lease_s / 2} (lease_s / 2)",
            f"use <= {worker.lease_s / 2}",
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
    return worker


def _artifacts(artifacts: ArtifactsConfig, t: Table, _env: Mapping[str, str]) -> ArtifactsConfig:
    if artifacts.source == "local" and artifacts.local_root is None:
        raise ConfigError(
            t.key("local_root"),
            'is required with source = "local"',
            "give the directory that holds entity/project/collection/version",
        )
    return artifacts


def _models(models: ModelsConfig, t: Table, _env: Mapping[str, str]) -> ModelsConfig:
    for key in models.trusted_keys:
        if not key.startswith("ed25519:") or len(key) != len("ed25519:") + 44:
            raise ConfigError(
                t.key("trusted_keys"),
                f"'{key[:30]}' is not an ed25519 public key",
                "paste the line `edgehook keys show` prints on the signing machine",
            )
    return models


def is_artifact_name(text: str) -> bool:
    """entity/project/name:alias (a W&B artifact), as opposed to a file path: each part a
    name W&B allows (core/names.py: no newline, NUL or control character), and neither
    entity nor project `.` or `..` (they become path components of a local source)."""
    found = re.fullmatch(r"([^/:]+)/([^/:]+)/([^/:]+):([^/:]+)", text)
    if found is None:
        return False
    entity, project, collection, alias = found.groups()
    problems = (
        name_problem(entity, PROJECT_FORBIDDEN),
        name_problem(project, PROJECT_FORBIDDEN),
        name_problem(collection, COLLECTION_FORBIDDEN),
        name_problem(alias, ALIAS_FORBIDDEN),
    )
    dots = {entity, project, collection} & {".", ".."}
    return not dots and all(problem is None for problem in problems)


def _training(training: TrainingConfig, t: Table, _env: Mapping[str, str]) -> TrainingConfig:
    pin = training.pretrained_sha256
    if pin is not None and re.fullmatch(r"[0-9a-f]{64}", pin) is None:
        raise ConfigError(
            t.key("pretrained_sha256"),
            "is not a SHA-256 in hex",
            "use the 64 lowercase hex digits `sha256sum FILE` prints",
        )
    path, artifact = training.pretrained_file, training.pretrained_artifact
    if path is not None and artifact is not None:
        raise ConfigError(
            t.key("pretrained_artifact"), "is set as well as pretrained_file", "keep one of them"
        )
    if path is not None and (not path.is_file() or path.suffix != ".safetensors"):
        raise ConfigError(
            t.key("pretrained_file"),
            f"{path} is not a .safetensors file",
            "give a file `edgehook model import-weights` wrote",
        )
    if artifact is not None and not is_artifact_name(artifact):
        raise ConfigError(
            t.key("pretrained_artifact"),
            f"{artifact[:80]!r} is not an artifact name",
            "use entity/project/name:alias",
        )
    return training


def _watch(watch: WatchConfig, t: Table, _env: Mapping[str, str]) -> WatchConfig:
    for name in watch.artifacts:
        if not is_artifact_name(name):
            raise ConfigError(
                t.key("artifacts"),
                f"{name[:80]!r} is not an artifact alias",
                "use entity/project/name:alias, as in W&B's artifact page",
            )
    if len(set(watch.artifacts)) != len(watch.artifacts):
        raise ConfigError(t.key("artifacts"), "names an artifact twice", "list each once")
    return watch


def _secrets(secrets: SecretFiles, _t: Table, env: Mapping[str, str]) -> SecretFiles:
    # The other secrets' *_FILE variables are read in credentials.py; this one is a path the
    # worker hands to pipeline.models.signing, so the override lives here (systemd: %d/...).
    override = env.get("EDGEHOOK_MODEL_SIGNING_KEY_FILE")
    return replace(secrets, model_signing_key_file=Path(override)) if override else secrets


def _store(store: StoreConfig, t: Table, env: Mapping[str, str]) -> StoreConfig:
    url = env.get("EDGEHOOK_STORE_URL") or store.url
    file_name = env.get("EDGEHOOK_STORE_URL_FILE")
    if file_name:
        url = read_secret_file_bytes(Path(file_name), "EDGEHOOK_STORE_URL_FILE").decode().strip()
    if url != "sqlite" and not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(
            t.key("url"), "is neither `sqlite` nor a postgresql:// URL", "see docs/postgresql.md"
        )
    return replace(store, url=url)


_Check = Callable[[Any, Table, Mapping[str, str]], Any]
_checks: dict[str, _Check] = {
    "server": _server,
    "worker": _worker,
    "artifacts": _artifacts,
    "models": _models,
    "secrets": _secrets,
    "store": _store,
    "training": _training,
    "watch": _watch,
}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
