"""`edgehook doctor`: check an installation and explain, one line per finding.

Exit status is the worst finding: 0 all pass, 1 a warning, 2 a failure. torch and wandb are
imported only for their own checks (this is a command, not the receiver process).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from core import auditread, watched
from core.config import Config, is_loopback
from core.credentials import load_audit_key, load_secrets, load_wandb_key, read_secret_file_bytes
from core.errors import EdgehookError, StoreUnavailable
from core.store import SCHEMA_VERSION, open_read_only, open_store, schema_version

PASS, WARN, FAIL = "pass", "warn", "fail"
SEVERITY = {PASS: 0, WARN: 1, FAIL: 2}
MIN_FREE_BYTES, LOW_FREE_BYTES = 100 * 2**20, 2**30
TUNNEL_STATE = "tunnel.json"


@dataclass(frozen=True)
class Finding:
    status: str
    check: str
    detail: str

    def __str__(self) -> str:
        return f"{self.status.upper():4}  {self.check:10} {self.detail}"


def diagnose(config: Config, env: Mapping[str, str], *, online: bool = False) -> list[Finding]:
    checks: list[Callable[[], Iterator[Finding]]] = [
        lambda: _secrets(config, env),
        lambda: _bind(config),
        lambda: _data_dir(config),
        lambda: _store(config),
        lambda: _audit(config, env),
        lambda: _tunnel(config),
        lambda: _watch(config),
        _torch,
        _engines,
        lambda: _wandb(config, env, online),
    ]
    findings: list[Finding] = []
    for check in checks:
        try:
            findings.extend(check())
        except EdgehookError as exc:
            findings.append(Finding(FAIL, "check", str(exc)))
    return findings


def worst(findings: list[Finding]) -> int:
    return max((SEVERITY[f.status] for f in findings), default=0)


def _secrets(config: Config, env: Mapping[str, str]) -> Iterator[Finding]:
    for name, load in (
        ("webhook", lambda: load_secrets(config, env)),
        ("audit key", lambda: load_audit_key(config, env)),
    ):
        try:
            load()
            yield Finding(PASS, "secrets", f"{name}: present, long enough, private")
        except EdgehookError as exc:
            yield Finding(FAIL, "secrets", f"{name}: {exc}")
    key = config.secrets.model_signing_key_file
    if key is None or not key.exists():
        yield Finding(
            WARN, "secrets", "no model signing key: models cannot be signed (edgehook keys init)"
        )
    else:
        try:
            read_secret_file_bytes(key, "secrets.model_signing_key_file")
            yield Finding(PASS, "secrets", "model signing key: present, private")
        except EdgehookError as exc:
            yield Finding(FAIL, "secrets", f"model signing key: {exc}")
    try:
        wandb_key = load_wandb_key(config, env)
    except EdgehookError as exc:
        yield Finding(FAIL, "secrets", f"W&B key: {exc}")
    else:
        if wandb_key is None:
            yield Finding(
                WARN,
                "secrets",
                "no W&B API key for jobs (EDGEHOOK_WANDB_API_KEY_FILE "
                "or secrets.wandb_api_key_file); W&B artifacts cannot be fetched",
            )


def _bind(config: Config) -> Iterator[Finding]:
    host = config.server.host
    if is_loopback(host):
        yield Finding(PASS, "bind", f"receiver binds {host}:{config.server.port} (loopback)")
    elif config.server.allow_public_bind:
        yield Finding(WARN, "bind", f"receiver binds {host}, reachable without the tunnel")
    else:
        yield Finding(FAIL, "bind", f"server.host {host} is not loopback; serve will refuse it")


def _data_dir(config: Config) -> Iterator[Finding]:
    directory = config.data_dir
    probe = directory if directory.exists() else directory.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        test = directory / ".doctor-write-test"
        test.write_bytes(b"x")
        test.unlink()
    except OSError as exc:
        yield Finding(FAIL, "data dir", f"{directory} is not writable ({exc.strerror})")
        return
    free = shutil.disk_usage(probe).free
    status = PASS if free >= LOW_FREE_BYTES else WARN if free >= MIN_FREE_BYTES else FAIL
    yield Finding(status, "data dir", f"{directory}: writable, {free / 2**30:.1f} GiB free")


def _store(config: Config) -> Iterator[Finding]:
    if isinstance(config.store_target, str):
        yield from _postgres(config, config.store_target)
        return
    path = config.store_path
    if not path.exists():
        yield Finding(WARN, "store", f"{path} does not exist yet (created by the first serve)")
        return
    try:
        version = schema_version(path)
    except StoreUnavailable as exc:
        yield Finding(FAIL, "store", str(exc))
        return
    if version == SCHEMA_VERSION:
        yield Finding(PASS, "store", f"schema version {version} (current)")
    elif version < SCHEMA_VERSION:
        yield Finding(
            WARN,
            "store",
            f"schema version {version}; the next start migrates it to {SCHEMA_VERSION}",
        )
    else:
        yield Finding(
            FAIL,
            "store",
            f"schema version {version} is newer than this edgehook "
            f"({SCHEMA_VERSION}): upgrade edgehook",
        )


def _postgres(config: Config, url: str) -> Iterator[Finding]:
    """Reachable, the schema's version, and this host's clock against the database's: a
    skew near the lease lets one host's worker requeue another's live job."""
    from core import pgstore  # psycopg: only for a PostgreSQL store

    try:
        store = pgstore.PgStore(url, timeout_s=5.0)
    except StoreUnavailable as exc:
        yield Finding(FAIL, "store", str(exc))
        return
    try:
        version = pgstore.schema_version(store)
        before = time.time()
        database = pgstore.database_time(store)
        skew = abs(database - (before + time.time()) / 2)
    except StoreUnavailable as exc:
        yield Finding(FAIL, "store", str(exc))
        return
    finally:
        store.close()
    current = pgstore.SCHEMA_VERSION
    if version == current:
        yield Finding(PASS, "store", f"{store.where}: reachable, schema version {version}")
    elif version < current:
        yield Finding(WARN, "store", f"{store.where}: schema version {version}; run "
                      f"`edgehook store migrate` (or the next start) for {current}")  # fmt: skip
    else:
        yield Finding(FAIL, "store", f"schema version {version} is newer than this edgehook "
                      f"({current}): upgrade edgehook")  # fmt: skip
    lease = config.worker.lease_s
    status = PASS if skew < lease / 10 else WARN if skew < lease / 2 else FAIL
    yield Finding(status, "clock", f"{skew:.2f} s from the database's clock (lease {lease:g} s)")


def _watch(config: Config) -> Iterator[Finding]:
    """Per watched alias: the version acted on, the last good poll, the last error."""
    if not config.watch.artifacts:
        return

    def when(ts: object) -> str:
        if not isinstance(ts, (int, float)):
            return "never"
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    rows: dict[str, dict[str, object]] = {}
    if isinstance(config.store_target, str):
        with contextlib.closing(open_store(config.store_target)) as pg:
            rows = watched.all_rows(pg)
    elif config.store_path.exists():
        with contextlib.closing(open_read_only(config.store_path)) as conn:
            try:
                rows = watched.all_rows(conn)
            except sqlite3.OperationalError:  # a store from before pull mode: no table yet
                rows = {}
    for name in config.watch.artifacts:
        row = rows.get(name)
        if row is None:
            yield Finding(WARN, "watch", f"{name}: never polled (edgehook watch)")
            continue
        acted = f"acted on {row['version_string']}" if row["version_string"] else "nothing acted on"
        line = f"{name}: {acted}; last good poll {when(row['last_ok_at'])}"
        if row["last_error"]:
            yield Finding(
                WARN,
                "watch",
                f"{line}; last error {when(row['last_error_at'])}: {row['last_error']} "
                f"({row['failures']} in a row)",
            )
        else:
            yield Finding(PASS, "watch", line)


def _audit(config: Config, env: Mapping[str, str]) -> Iterator[Finding]:
    found = auditread.chains(config.audit_dir)
    if not found:
        yield Finding(WARN, "audit", "no audit log yet")
        return
    key = load_audit_key(config, env)
    for name, path in found:
        report = auditread.verify(path, key)
        if report.ok:
            yield Finding(PASS, "audit", f"{name} chain intact ({report.lines} lines)")
        else:
            yield Finding(FAIL, "audit", f"{name} chain damaged: {report.damage}")


def _tunnel(config: Config) -> Iterator[Finding]:
    state = config.data_dir / TUNNEL_STATE
    if not state.exists():
        yield Finding(
            WARN,
            "tunnel",
            "no tunnel recorded: W&B cannot reach this device (start one; see README)",
        )
        return
    try:
        url = str(json.loads(state.read_text())["url"]).rstrip("/")
    except (OSError, ValueError, KeyError) as exc:
        yield Finding(FAIL, "tunnel", f"{state} is unreadable ({exc})")
        return
    if not url.startswith(("http://", "https://")):
        yield Finding(FAIL, "tunnel", f"{state} records '{url[:60]}', not an http(s) URL")
        return
    try:
        # Bandit B310 (urlopen schemes): the scheme is checked just above.
        with urllib.request.urlopen(f"{url}/healthz", timeout=5) as reply:  # noqa: S310  # nosec B310
            ok = reply.status == 200
    except OSError:
        ok = False
    yield Finding(
        PASS if ok else WARN,
        "tunnel",
        f"{url} {'answers /healthz' if ok else 'does not answer /healthz'}",
    )


def _torch() -> Iterator[Finding]:
    try:
        import torch
    except ImportError:
        yield Finding(
            WARN, "torch", "not installed: this device cannot train (pip install 'edgehook[train]')"
        )
        return
    yield Finding(PASS, "torch", f"torch {torch.__version__}")
    if torch.cuda.is_available():
        yield Finding(PASS, "cuda", f"CUDA: {torch.cuda.get_device_name(0)}")
    else:
        yield Finding(WARN, "cuda", "no CUDA device: training runs on the CPU")
    from pipeline.nn.quantize import backend  # torch, like the check itself

    engine = backend()
    if engine in torch.backends.quantized.supported_engines:
        yield Finding(PASS, "quantize", f"int8 backend {engine} available")
    else:
        yield Finding(FAIL, "quantize", f"no int8 backend ({engine}) in this torch build")


def _engines() -> Iterator[Finding]:
    # The pipeline's serving modules: loaded for this check only, as torch is for _torch.
    from pipeline.models.engines import device_engines

    can, cannot = device_engines()
    why = "; ".join(f"not {name}: {reason}" for name, reason in cannot.items())
    runs = f"this device runs {', '.join(can)}" if can else "this device runs no engine"
    yield Finding(PASS if can else FAIL, "engines", f"{runs}; {why}" if why else runs)


def _wandb(config: Config, env: Mapping[str, str], online: bool) -> Iterator[Finding]:
    if not online:
        return
    key = load_wandb_key(config, env)
    if key is None:
        yield Finding(FAIL, "wandb", "--online: no W&B key to check")
        return
    try:
        import wandb

        api = wandb.Api(api_key=key, timeout=15)
        yield Finding(PASS, "wandb", f"W&B key valid for {api.viewer.username}")
    except Exception as exc:
        yield Finding(FAIL, "wandb", f"W&B key check failed: {type(exc).__name__}: {exc}")


def config_finding(path: Path | None) -> Finding:
    where = str(path) if path is not None else "embedded defaults"
    return Finding(PASS, "config", f"valid ({where})")
