"""`edgehook console`: the operator's pages and JSON API on loopback (:8092)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from edgehook.cli.common import Subparsers, add_bind_options, add_command, bind_address, config


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "console",
        "the operator console: overview, deliveries, jobs, models, audit (loopback :8092)",
        "edgehook console",
        "edgehook console --port 9092",
        'curl -H "Authorization: Bearer $(cat secrets/console_token)" '
        "'http://127.0.0.1:8092/api/jobs?state=failed'",
    )
    add_bind_options(p, "console", 8092)
    p.set_defaults(func=run_console)


def run_console(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    # uvicorn and the console's pages load only for this command
    from console.server import make_console, serve

    loaded = config(args, env)
    host, bind_port = bind_address(
        args,
        "console",
        loaded.console,
        why="it can retry, cancel and roll back, and shows the whole audit log",
        exposed="the console answers anyone who reaches this address; firewall it",
    )
    return serve(make_console(loaded, env), host, bind_port)
