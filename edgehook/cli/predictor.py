"""`edgehook predictor`: serve the active model to the device's applications, on loopback."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from edgehook.cli.common import Subparsers, add_bind_options, add_command, bind_address, config


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "predictor",
        "serve the active model over HTTP (loopback :8091), following every promotion",
        "edgehook predictor",
        "edgehook predictor --port 9091",
        "curl --data-binary @door.jpg -H 'Content-Type: image/jpeg' "
        "'http://127.0.0.1:8091/predict?top_k=3'",
    )
    add_bind_options(p, "predictor", 8091)
    p.set_defaults(func=run_predictor)


def run_predictor(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from edgehook import predictor  # numpy, starlette and uvicorn: only for this command

    loaded = config(args, env)
    host, bind_port = bind_address(
        args,
        "predictor",
        loaded.predictor,
        why="the device's applications call it on loopback",
        exposed="the predictor answers anyone who reaches this address; firewall it",
    )
    return predictor.run(loaded, env, host, bind_port)
