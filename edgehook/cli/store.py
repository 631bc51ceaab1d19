"""`edgehook store migrate`: bring the store's schema up to date (SQLite or PostgreSQL)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from core.store import migrate_target
from edgehook.cli.common import Subparsers, add_command, config


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "store",
        "the store's schema (every process also migrates it at start)",
        "edgehook store migrate",
    )
    actions = p.add_subparsers(dest="store_command", metavar="ACTION", required=True)
    migrate = add_command(actions, "migrate", "apply the schema migrations, then exit",
                          "edgehook store migrate")  # fmt: skip
    migrate.set_defaults(func=run_migrate)


def run_migrate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    before, after, where = migrate_target(loaded.store_target)
    if before == after:
        print(f"{where}: schema version {after}, current")
    else:
        print(f"{where}: schema migrated from version {before} to {after}")
    return 0
