"""What every command group shares: the subcommand builder, the global options, the config."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from core.config import Config, find_config, load_config
from core.credentials import load_audit_key
from pipeline import operator

# What add_subparsers returns (argparse's _SubParsersAction, not part of its public API).
Subparsers = Any


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_command(
    sub: Subparsers, name: str, help_text: str, *example_lines: str
) -> argparse.ArgumentParser:
    """A subcommand with its help, description and examples, taking the global options too."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        description=help_text,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(*example_lines),
    )
    add_global_options(parser, top=False)
    return parser


def add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--config, --data-dir, --log-level. Below the top they default to SUPPRESS, so a value
    given after the subcommand wins and an absent one leaves the top's value alone."""

    def default(value: str | None) -> Any:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config",
        default=default(None),
        help="config file (default: $EDGEHOOK_CONFIG or "
        "./edgehook.toml if present, else embedded defaults)",
    )
    parser.add_argument(
        "--data-dir",
        default=default(None),
        help="where the store and audit log live "
        "(default: $EDGEHOOK_DATA_DIR or the config's data_dir)",
    )
    parser.add_argument(
        "--log-level", default=default("info"), choices=["debug", "info", "warning"]
    )


def config(args: argparse.Namespace, env: Mapping[str, str]) -> Config:
    cwd = Path.cwd()
    return load_config(find_config(args.config, env, cwd), env, cwd=cwd, data_dir=args.data_dir)


def whole(low: int, high: int) -> Any:
    """An argparse type: a whole number of ASCII digits from `low` to `high` (a job id past
    SQLite's 64 bits, or '²', is refused by argparse in one line, exit 2)."""

    def parse(text: str) -> int:
        digits = text[1:] if text.startswith("-") else text
        if not (digits.isascii() and digits.isdigit()) or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"'{text[:40]}' is not a whole number from {low} to {high}"
            )
        return int(text)

    return parse


def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (use 1-65535)")
    return int(text)


def add_bind_options(parser: argparse.ArgumentParser, section: str, default_port: int) -> None:
    """--host, --port and --allow-public-bind for a server command, defaulting to `section`."""
    parser.add_argument("--host", help=f"address to listen on (default: {section}.host, 127.0.0.1)")
    parser.add_argument(
        "--port", type=port, help=f"port to listen on (default: {section}.port, {default_port})"
    )
    parser.add_argument(
        "--allow-public-bind",
        action="store_true",
        help=f"allow a non-loopback --host or {section}.host (not recommended)",
    )


class BindSettings(Protocol):
    """A server section of the config (console, predictor; frozen, so read-only here)."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def allow_public_bind(self) -> bool: ...


def bind_address(
    args: argparse.Namespace, section: str, settings: BindSettings, *, why: str, exposed: str
) -> tuple[str, int]:
    """The address a server command listens on: --host and --port over the config's
    `section`, refused in one line when not loopback unless public binding is allowed."""
    from receiver.server import check_bind  # uvicorn: only the server commands load it

    host = settings.host if args.host is None else args.host
    check_bind(
        host,
        args.allow_public_bind or settings.allow_public_bind,
        f"{section}.host" if args.host is None else "--host",
        why=why,
        exposed=exposed,
    )
    return host, settings.port if args.port is None else args.port


def operator_audit(loaded: Config, env: Mapping[str, str], **fields: Any) -> None:
    """A line in the operator chain (audit/operator/): who did what, by hand."""
    operator.record(loaded, load_audit_key(loaded, env), shell_operator(), **fields)


def shell_operator() -> operator.Operator:
    return operator.Operator(user=_user(), via="cli")


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
