"""The receiver's secrets: read from the environment or from files, checked at start-up.

EDGEHOOK_ACCESS_TOKEN[_FILE]   the W&B webhook's Access token (the bearer credential); the
                               config's secrets.old_access_token_files are accepted too,
                               while a rotation is under way
EDGEHOOK_SIGNING_SECRET[_FILE] the W&B webhook's Secret (HMAC key); the config file's
                               secrets.signing_secret_files adds more, for rotation
EDGEHOOK_AUDIT_KEY[_FILE]      the audit log's HMAC key, kept apart from the log
EDGEHOOK_WANDB_API_KEY[_FILE]  the worker's W&B API key, given only to jobs whose rule
                               lists WANDB_API_KEY in env_allow
EDGEHOOK_CONSOLE_TOKEN[_FILE]  the operator console's token (its API's bearer token and its
                               login password)
EDGEHOOK_STORE_URL[_FILE]      a postgresql:// store URL (it may hold a password): read
                               with the config (core/config.py), checked the same way

A secret shorter than MIN_LENGTH, or in a file that group or others may read or write, is
refused: a leaked or guessable secret lets anyone queue jobs on the device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.config import Config
from core.errors import ConfigError
from core.secretfiles import read_secret_file_bytes

__all__ = ["Secrets", "load_audit_key", "load_secrets", "load_wandb_key", "read_secret_file",
           "read_secret_file_bytes", "write_secret_file"]  # fmt: skip

MIN_LENGTH = 24


@dataclass(frozen=True)
class Secrets:
    access_tokens: tuple[bytes, ...]  # the current one first, then those being retired
    signing_secrets: tuple[bytes, ...]

    @property
    def access_token(self) -> bytes:
        return self.access_tokens[0]

    def __repr__(self) -> str:  # never print secret values, even by accident
        return (
            f"Secrets(access_tokens=<{len(self.access_tokens)} redacted>, "
            f"signing_secrets=<{len(self.signing_secrets)} redacted>)"
        )


def load_secrets(config: Config, env: Mapping[str, str]) -> Secrets:
    access = _one(
        "EDGEHOOK_ACCESS_TOKEN", config.secrets.access_token_file, "secrets.access_token_file", env
    )
    retiring = [
        read_secret_file(path, f"secrets.old_access_token_files[{index}]")
        for index, path in enumerate(config.secrets.old_access_token_files)
    ]
    signing: list[bytes] = []
    if env.get("EDGEHOOK_SIGNING_SECRET") or env.get("EDGEHOOK_SIGNING_SECRET_FILE"):
        signing.append(_one("EDGEHOOK_SIGNING_SECRET", None, "", env))
    for index, path in enumerate(config.secrets.signing_secret_files):
        signing.append(read_secret_file(path, f"secrets.signing_secret_files[{index}]"))
    if not signing:
        raise ConfigError(
            "EDGEHOOK_SIGNING_SECRET",
            "no signing secret is configured",
            "set EDGEHOOK_SIGNING_SECRET_FILE or secrets.signing_secret_files "
            "(`edgehook init` makes one)",
        )
    return Secrets(access_tokens=(access, *retiring), signing_secrets=tuple(signing))


def load_wandb_key(config: Config, env: Mapping[str, str]) -> str | None:
    """The W&B API key for jobs whose rule allows it (the worker's own secret), or None."""
    if not (
        env.get("EDGEHOOK_WANDB_API_KEY")
        or env.get("EDGEHOOK_WANDB_API_KEY_FILE")
        or config.secrets.wandb_api_key_file
    ):
        return None
    key = _one(
        "EDGEHOOK_WANDB_API_KEY",
        config.secrets.wandb_api_key_file,
        "secrets.wandb_api_key_file",
        env,
    )
    return key.decode("utf-8")


def load_audit_key(config: Config, env: Mapping[str, str]) -> bytes:
    return _one("EDGEHOOK_AUDIT_KEY", config.secrets.audit_key_file, "secrets.audit_key_file", env)


def load_console_token(config: Config, env: Mapping[str, str]) -> bytes:
    return _one(
        "EDGEHOOK_CONSOLE_TOKEN",
        config.secrets.console_token_file,
        "secrets.console_token_file",
        env,
    )


def _one(env_name: str, config_file: Path | None, config_key: str, env: Mapping[str, str]) -> bytes:
    value = env.get(env_name)
    if value:
        return _checked(env_name, value.strip().encode("utf-8"), f"set a longer {env_name}")
    file_name = env.get(f"{env_name}_FILE")
    if file_name:
        return read_secret_file(Path(file_name), f"{env_name}_FILE")
    if config_file is not None:
        return read_secret_file(config_file, config_key)
    where = f"{env_name}, {env_name}_FILE" + (f" or {config_key}" if config_key else "")
    raise ConfigError(env_name, "is not set", f"set {where} (`edgehook init` makes one)")


def read_secret_file(path: Path, key: str) -> bytes:
    data = read_secret_file_bytes(path, key)
    return _checked(key, data.strip(), f"write a longer secret to {path}")


def _checked(key: str, value: bytes, fix: str) -> bytes:
    if len(value) < MIN_LENGTH:
        raise ConfigError(key, f"the secret is shorter than {MIN_LENGTH} characters", fix)
    return value


def write_secret_file(path: Path, value: str) -> None:
    """Create `path` with mode 0600 from the start (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
