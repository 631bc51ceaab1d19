"""The `edgehook` command: one entry point, a subcommand per job, one-line errors."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError, EdgehookError
from edgehook import __version__


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgehook",
        description="Receive W&B webhook automations on an edge device and run them safely.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("edgehook init", "edgehook serve", "edgehook audit verify"),
    )
    parser.add_argument("--version", action="version", version=f"edgehook {__version__}")
    _add_global_options(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str, *examples: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=_examples(*examples),
        )

    p = add(
        "init",
        "write a starter config and fresh secrets, and print what to enter in W&B",
        "edgehook init",
        "edgehook init --dir /etc/edgehook",
    )
    p.add_argument("--dir", default=".", help="where to write edgehook.toml and secrets/")

    p = add(
        "serve",
        "run the webhook receiver (loopback only unless told otherwise)",
        "edgehook serve",
        "edgehook --config /etc/edgehook/edgehook.toml serve",
        "EDGEHOOK_PORT=9000 edgehook serve",
    )
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to listen on (default: server.port, 8090)")
    p.add_argument(
        "--allow-public-bind",
        action="store_true",
        help="allow a non-loopback --host or server.host (not recommended)",
    )

    p = add(
        "send-test",
        "send a delivery exactly as W&B would, and print the answer",
        "edgehook send-test",
        "edgehook send-test https://abc.trycloudflare.com/webhook",
        "edgehook send-test --payload my-template-rendered.json",
    )
    p.add_argument("url", nargs="?", help="default: the local receiver's /webhook")
    p.add_argument("--payload", type=Path, help="JSON file to send instead of the sample")

    p = add(
        "tunnel",
        "open the tunnel (ngrok or cloudflared) to the local receiver",
        "edgehook tunnel",
        "edgehook tunnel --provider ngrok",
        "scripts/start_tunnel.sh cloudflared",
    )
    p.add_argument(
        "--provider",
        choices=["cloudflared", "ngrok"],
        help="default: tunnel.provider in the config (cloudflared)",
    )
    p.add_argument(
        "--allow-download",
        action="store_true",
        help="let pyngrok download the ngrok binary if it is missing",
    )

    p = add(
        "doctor",
        "check this installation; one line per finding, exit = the worst",
        "edgehook doctor",
        "edgehook doctor --online   # also checks the W&B key with W&B",
    )
    p.add_argument("--online", action="store_true", help="check the W&B key against W&B")

    p = add(
        "worker",
        "run queued jobs, each in an isolated child process",
        "edgehook worker",
        "edgehook worker --once   # drain what is runnable, then exit",
    )
    p.add_argument("--once", action="store_true", help="exit when nothing is runnable")

    jobs = add(
        "jobs",
        "list, inspect, cancel and retry jobs",
        "edgehook jobs list",
        "edgehook jobs list --state failed --json",
        "edgehook jobs show 12",
        "edgehook jobs logs 12",
        "edgehook jobs cancel 12",
        "edgehook jobs retry 12",
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    j = jobs_sub.add_parser(
        "list",
        help="recent jobs, newest first",
        epilog=_examples("edgehook jobs list --state running"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    j.add_argument(
        "--state", choices=["queued", "running", "succeeded", "failed", "cancelled", "superseded"]
    )
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--json", action="store_true")
    for name, text in (
        ("show", "one job and its attempts"),
        ("logs", "a job's output"),
        ("cancel", "cancel a queued job, or kill a running one"),
        ("retry", "queue a failed, cancelled or superseded job again"),
    ):
        j = jobs_sub.add_parser(
            name,
            help=text,
            epilog=_examples(f"edgehook jobs {name} 12"),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        j.add_argument("job_id", type=int)
        if name == "show":
            j.add_argument("--json", action="store_true")
        if name == "logs":
            j.add_argument("--attempt", type=int, help="default: the latest")

    p = add(
        "train",
        "train a quantized model on a local dataset, without a webhook",
        "edgehook train --data ./images --out ./model",
        "edgehook train --data ./cifar-10-batches-py --epochs 5 --dry-run",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="an image-folder tree, CIFAR-10 python batches, or a .npz",
    )
    p.add_argument("--out", type=Path, required=True, help="where to write the model")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--dry-run", action="store_true", help="one batch of one epoch")

    p = add(
        "infer",
        "classify images with the active (or a given) int8 model",
        "edgehook infer photo.png",
        "edgehook infer ./images --top-k 1 --json",
        "edgehook infer --model ./model photo.png",
    )
    p.add_argument("paths", nargs="*", type=Path, help="images or folders of images")
    p.add_argument(
        "--benchmark",
        action="store_true",
        help="measure int8 vs fp32 latency (batch 1) and throughput (batch 64)",
    )
    p.add_argument("--model", type=Path, help="a model directory (default: the active model)")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--json", action="store_true")

    model = add(
        "model",
        "the device's models: list them, roll back the active one",
        "edgehook model list",
        "edgehook model rollback",
    )
    model_sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    model_sub.add_parser("list", help="models, the active one starred")
    model_sub.add_parser("rollback", help="make the previous model active again")
    verify = model_sub.add_parser(
        "verify",
        help="check a model's signature: a directory, or an artifact name (configured source)",
        epilog=_examples(
            "edgehook model verify ./model", "edgehook model verify team/proj/shapes-int8:v3"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verify.add_argument("path", type=Path)

    keys = add(
        "keys", "this device's model signing key", "edgehook keys init", "edgehook keys show"
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_sub.add_parser("init", help="make the key (refuses to overwrite one)")
    keys_sub.add_parser("show", help="print the public key and its id")

    wandb_cmd = add(
        "wandb",
        "set up W&B for this device",
        "edgehook wandb setup --entity my-team --project edge-demo --dry-run",
        "edgehook wandb setup --entity my-team --project edge-demo --webhook edgehook-jetson",
        "edgehook wandb setup --entity my-team --project edge-demo --collection cifar10-subset",
    )
    wandb_sub = wandb_cmd.add_subparsers(dest="wandb_command", required=True, metavar="ACTION")
    w = wandb_sub.add_parser(
        "setup",
        help="create or update the automation that calls this device (idempotent)",
        description="Create or update the W&B automation: alias added -> this device's webhook, "
        "with the recommended payload. The webhook itself is made once in the W&B UI "
        "(Team Settings > Webhooks). Uses edgehook's W&B key if configured, else the wandb "
        "SDK's own (WANDB_API_KEY, `wandb login`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(
            "edgehook wandb setup --entity my-team --project edge-demo --dry-run",
            "edgehook wandb setup --entity my-team --project edge-demo --alias retrain",
        ),
    )
    w.add_argument("--entity", help="W&B team (default: $WANDB_ENTITY)")
    w.add_argument("--project", help="W&B project (default: $WANDB_PROJECT)")
    w.add_argument(
        "--collection", help="only this artifact collection (default: the whole project)"
    )
    w.add_argument("--type", default="dataset", help="the collection's artifact type")
    w.add_argument("--alias", default="retrain", help="the alias that triggers (default: retrain)")
    w.add_argument(
        "--name", default="edgehook-retrain", help="the automation's name (default: %(default)s)"
    )
    w.add_argument("--webhook", help="the W&B webhook's name (default: the one at --url)")
    w.add_argument(
        "--url", help="the webhook URL to look for (default: the one `edgehook tunnel` recorded)"
    )
    w.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")

    audit = add(
        "audit",
        "review and verify the audit log",
        "edgehook audit verify",
        "edgehook audit show --since 1h --decision rejected",
        "edgehook audit tail -f",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a = audit_sub.add_parser(
        "verify",
        help="check the chain; exit 1 naming the first damage",
        epilog=_examples("edgehook audit verify"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a = audit_sub.add_parser(
        "show",
        help="list audit lines, filtered",
        epilog=_examples(
            "edgehook audit show --since 2h",
            "edgehook audit show --decision accepted --json",
            "edgehook audit show --client 203.0.113.9",
            "edgehook audit show --event retrain",
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--since", help="ISO time or relative (30m, 2h, 7d)")
    a.add_argument("--until", help="ISO time or relative (30m, 2h, 7d)")
    a.add_argument(
        "--decision",
        choices=["accepted", "duplicate", "ignored", "rejected", "unavailable", "error", "health"],
    )
    a.add_argument("--client", help="client address, exactly")
    a.add_argument("--event", help="text in the event summary (type, artifact, alias)")
    a.add_argument(
        "--lost",
        action="store_true",
        help="genuine deliveries (valid token and signature) that were refused: send them "
        "again from the W&B automation's history",
    )
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a = audit_sub.add_parser(
        "tail",
        help="print the last lines; -f follows new ones",
        epilog=_examples("edgehook audit tail", "edgehook audit tail -f -n 50"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("-f", "--follow", action="store_true")
    a.add_argument("-n", "--lines", type=int, default=10)
    a.add_argument("--json", action="store_true")
    _accept_global_options_after(parser)
    return parser


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
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


def _accept_global_options_after(parser: argparse.ArgumentParser) -> None:
    """Every subcommand, at every depth, takes the global options too (`edgehook serve
    --config F` as well as `edgehook --config F serve`). argparse has no public way to
    list subparsers, hence the walk over `_actions`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_global_options(child, top=False)
                _accept_global_options_after(child)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port (use 1-65535)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from core import logs

    logs.configure(args.log_level)
    # Everything edgehook creates (store, audit log, job dirs) is private to its user.
    os.umask(0o077)
    try:
        return _dispatch(args, dict(os.environ))
    except ConfigError as exc:
        print(f"edgehook: {exc}", file=sys.stderr)
        return 2
    except EdgehookError as exc:
        print(f"edgehook: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
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
        return 70


def _dispatch(args: argparse.Namespace, env: dict[str, str]) -> int:
    if args.command == "init":
        from edgehook.init import run_init

        print(run_init(Path(args.dir)), end="")
        return 0
    if args.command == "doctor":
        return _doctor(args, env)
    config = _config(args, env)
    if args.command == "serve":
        from receiver.server import serve

        return serve(
            config, env, allow_public=args.allow_public_bind, host=args.host, port=args.port
        )
    if args.command == "send-test":
        return _send_test(args, config, env)
    if args.command == "tunnel":
        from edgehook.tunnel import run_tunnel

        return run_tunnel(config, env, provider=args.provider, allow_download=args.allow_download)
    if args.command == "worker":
        from pipeline.worker import run_worker

        return run_worker(config, env, once=args.once)
    if args.command == "train":
        from edgehook.cli.models import run_train

        return run_train(args, config)
    if args.command == "infer":
        from edgehook.cli.models import run_infer

        return run_infer(args, config)
    if args.command == "model":
        from edgehook.cli.models import run_model

        return run_model(args, config)
    if args.command == "keys":
        from edgehook.cli.models import run_keys

        return run_keys(args, config)
    if args.command == "jobs":
        from edgehook.cli.jobs import run_jobs

        return run_jobs(args, config, env)
    if args.command == "wandb":
        return _wandb_setup(args, config, env)
    return _audit(args, config, env)


def _config(args: argparse.Namespace, env: dict[str, str]) -> Any:
    from core.config import find_config, load_config

    cwd = Path.cwd()
    return load_config(find_config(args.config, env, cwd), env, cwd=cwd, data_dir=args.data_dir)


def _doctor(args: argparse.Namespace, env: dict[str, str]) -> int:
    from edgehook import doctor

    try:
        config = _config(args, env)
    except ConfigError as exc:
        print(doctor.Finding(doctor.FAIL, "config", str(exc)))
        return 2
    findings = [
        doctor.config_finding(config.path),
        *doctor.diagnose(config, env, online=args.online),
    ]
    for finding in findings:
        print(finding)
    return doctor.worst(findings)


def _wandb_setup(args: argparse.Namespace, config: Any, env: dict[str, str]) -> int:
    from core.credentials import load_wandb_key
    from edgehook.wandbsetup import Request, recorded_webhook_url, setup

    entity = args.entity or env.get("WANDB_ENTITY")
    project = args.project or env.get("WANDB_PROJECT")
    if not entity:
        raise EdgehookError("wandb setup needs --entity (or WANDB_ENTITY): the W&B team")
    if not project:
        raise EdgehookError("wandb setup needs --project (or WANDB_PROJECT): the W&B project")
    request = Request(
        entity=entity,
        project=project,
        alias=args.alias,
        name=args.name,
        webhook=args.webhook,
        url=args.url or recorded_webhook_url(config.data_dir),
        collection=args.collection,
        artifact_type=args.type,
    )
    setup(request, api_key=load_wandb_key(config, env), dry_run=args.dry_run)
    return 0


def _send_test(args: argparse.Namespace, config: Any, env: dict[str, str]) -> int:
    from core.credentials import load_secrets
    from edgehook.sendtest import send
    from edgehook.template import sample_body

    secrets = load_secrets(config, env)
    host = config.server.host if ":" not in config.server.host else f"[{config.server.host}]"
    url = args.url or f"http://{host}:{config.server.port}/webhook"
    if args.payload is not None:
        try:
            body = args.payload.read_bytes()
        except OSError as exc:
            raise EdgehookError(f"cannot read --payload {args.payload}: {exc.strerror}") from exc
    else:
        body = sample_body()
    try:
        reply = send(url, body, secrets)
    except OSError as exc:
        raise EdgehookError(
            f"cannot reach {url}: {getattr(exc, 'reason', exc)}; is `edgehook serve` running?"
        ) from exc
    print(f"POST {url}\n{reply.status}  {reply.body}")
    if "X-Request-Id" in reply.headers:
        print(f"request id: {reply.headers['X-Request-Id']} (edgehook audit show)")
    return 0 if 200 <= reply.status < 300 else 1


def _audit(args: argparse.Namespace, config: Any, env: dict[str, str]) -> int:
    from core import auditread
    from core.credentials import load_audit_key

    if args.audit_command == "verify":
        key = load_audit_key(config, env)
        found = auditread.chains(config.audit_dir)
        if not found:
            raise EdgehookError(f"no audit log under {config.audit_dir}; has edgehook run here?")
        reports = {name: auditread.verify(path, key) for name, path in found}
        if args.json:
            print(
                json.dumps(
                    {
                        name: {
                            "ok": r.ok,
                            "lines": r.lines,
                            "last_seq": r.last_seq,
                            "segments": r.segments,
                            "notes": r.notes,
                            "damage": None if r.damage is None else vars(r.damage),
                        }
                        for name, r in reports.items()
                    }
                )
            )
        else:
            for name, report in reports.items():
                for note in report.notes:
                    print(f"{name}: note: {note}")
                if report.ok:
                    print(
                        f"{name}: ok: {report.lines} lines in {report.segments} segment(s), "
                        f"chain intact through seq {report.last_seq}"
                    )
                else:
                    print(f"{name}: DAMAGED: {report.damage}")
        return 0 if all(r.ok for r in reports.values()) else 1

    def out(record: dict[str, Any]) -> None:
        print(json.dumps(record) if args.json else auditread.table_row(record), flush=True)

    if args.audit_command == "show":
        now = time.time()
        try:
            chosen = auditread.Filter(
                since=auditread.parse_time(args.since, now) if args.since else None,
                until=auditread.parse_time(args.until, now) if args.until else None,
                decision=args.decision,
                client=args.client,
                event=args.event,
                lost=args.lost,
            )
        except ValueError as exc:
            raise EdgehookError(f"--since/--until: {exc}; use ISO time or 30m, 2h, 7d") from exc
        columns = auditread.LOST_COLUMNS if args.lost else auditread.COLUMNS
        if not args.json:
            print(auditread.table_header(columns))
        for record in auditread.merged_records(config.audit_dir):
            if chosen.accepts(record):
                print(json.dumps(record) if args.json else auditread.table_row(record, columns))
        return 0
    if not args.json:
        print(auditread.table_header())
    auditread.tail(config.audit_dir, out, follow=args.follow, lines=args.lines)
    return 0
