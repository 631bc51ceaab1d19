"""`edgehook serve`: the webhook receiver."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from edgehook.cli.common import Subparsers, add_command, config, port


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "serve",
        "run the webhook receiver (loopback only unless told otherwise)",
        "edgehook serve",
        "edgehook serve --config /etc/edgehook/edgehook.toml --port 8090",
        "EDGEHOOK_PORT=9000 edgehook serve",
    )
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=port, help="port to listen on (default: server.port, 8090)")
    p.add_argument(
        "--allow-public-bind",
        action="store_true",
        help="allow a non-loopback --host or server.host (not recommended)",
    )
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from receiver.server import serve

    return serve(
        config(args, env),
        env,
        allow_public=args.allow_public_bind,
        host=args.host,
        port=args.port,
    )
