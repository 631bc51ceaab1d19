"""`edgehook serve`: the webhook receiver."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from edgehook.cli.common import Subparsers, add_bind_options, add_command, config


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "serve",
        "run the webhook receiver (loopback only unless told otherwise)",
        "edgehook serve",
        "edgehook serve --config /etc/edgehook/edgehook.toml --port 8090",
        "EDGEHOOK_PORT=9000 edgehook serve",
    )
    add_bind_options(p, "server", 8090)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from receiver.processes import serve  # uvicorn and starlette: only for this command

    return serve(
        config(args, env),
        env,
        allow_public=args.allow_public_bind,
        host=args.host,
        port=args.port,
    )
