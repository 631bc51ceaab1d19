"""The `edgehook` command: one entry point, a module per command group, one-line errors.

Each group (setup, serve, watch, jobs, models, predictor, audit) registers its subcommands with
`set_defaults(func=...)`; `main` runs the chosen one and is the one place that turns an
error into a line on stderr and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from core import logs
from core.errors import ConfigError, EdgehookError
from edgehook import __version__
from edgehook.cli import audit, console, jobs, models, predictor, serve, setup, store, watch
from edgehook.cli.common import add_global_options, examples

GROUPS = (setup, serve, watch, jobs, models, predictor, console, audit, store)
EXIT_CONFIG, EXIT_ERROR, EXIT_INTERNAL, EXIT_INTERRUPTED = 2, 1, 70, 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgehook",
        description="Receive W&B webhook automations on an edge device and run them safely.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples("edgehook init", "edgehook serve", "edgehook audit verify"),
    )
    parser.add_argument("--version", action="version", version=f"edgehook {__version__}")
    add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.log_level)
    # Everything edgehook creates (store, audit log, job dirs) is private to its user.
    os.umask(0o077)
    try:
        code: int = args.func(args, dict(os.environ))
        return code
    except ConfigError as exc:
        print(f"edgehook: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except EdgehookError as exc:
        print(f"edgehook: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except OSError as exc:  # the machine's answer (read-only, not a directory, disk full)
        if isinstance(exc, BrokenPipeError):
            return 0
        where = f": {exc.filename}" if exc.filename else ""
        print(f"edgehook: {exc.strerror or type(exc).__name__}{where}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return 0
    except Exception as exc:
        if args.log_level == "debug":
            raise
        print(
            f"edgehook: internal error: {type(exc).__name__}: {exc} "
            "(run again with --log-level debug for the details)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
