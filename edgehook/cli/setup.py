"""The operator's commands for setting a device up: init, doctor, tunnel, wandb setup,
send-test."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from core.credentials import load_secrets, load_wandb_key
from core.errors import ConfigError, EdgehookError
from edgehook import doctor, init, sendtest, tunnel, wandbsetup
from edgehook.cli.common import Subparsers, add_command, config
from edgehook.template import sample_body


def register(sub: Subparsers) -> None:
    p = add_command(
        sub,
        "init",
        "write a starter config and fresh secrets, and print what to enter in W&B",
        "edgehook init",
        "edgehook init --dir /etc/edgehook",
    )
    p.add_argument("--dir", default=".", help="where to write edgehook.toml and secrets/")
    p.set_defaults(func=run_init)

    p = add_command(
        sub,
        "send-test",
        "send a delivery exactly as W&B would, and print the answer",
        "edgehook send-test",
        "edgehook send-test https://abc.trycloudflare.com/webhook",
        "edgehook send-test --payload my-template-rendered.json",
    )
    p.add_argument("url", nargs="?", help="default: the local receiver's /webhook")
    p.add_argument("--payload", type=Path, help="JSON file to send instead of the sample")
    p.set_defaults(func=run_send_test)

    p = add_command(
        sub,
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
    p.set_defaults(func=run_tunnel)

    p = add_command(
        sub,
        "doctor",
        "check this installation; one line per finding, exit = the worst",
        "edgehook doctor",
        "edgehook doctor --online   # also checks the W&B key with W&B",
    )
    p.add_argument("--online", action="store_true", help="check the W&B key against W&B")
    p.set_defaults(func=run_doctor)

    _register_wandb(sub)


def _register_wandb(sub: Subparsers) -> None:
    wandb_cmd = add_command(
        sub,
        "wandb",
        "set up W&B for this device",
        "edgehook wandb setup --entity my-team --project edge-demo --dry-run",
        "edgehook wandb setup --entity my-team --project edge-demo --webhook edgehook-jetson",
        "edgehook wandb setup --entity my-team --project edge-demo --collection cifar10-subset",
    )
    wandb_sub = wandb_cmd.add_subparsers(dest="wandb_command", required=True, metavar="ACTION")
    w = add_command(
        wandb_sub,
        "setup",
        "create or update the automation that calls this device (idempotent)",
        "edgehook wandb setup --entity my-team --project edge-demo --dry-run",
        "edgehook wandb setup --entity my-team --project edge-demo --alias retrain",
    )
    w.description = (
        "Create or update the W&B automation: alias added -> this device's webhook, "
        "with the recommended payload. The webhook itself is made once in the W&B UI "
        "(Team Settings > Webhooks). Uses edgehook's W&B key if configured, else the wandb "
        "SDK's own (WANDB_API_KEY, `wandb login`)."
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
    w.set_defaults(func=run_wandb_setup)


def run_init(args: argparse.Namespace, _env: Mapping[str, str]) -> int:
    print(init.run_init(Path(args.dir)), end="")
    return 0


def run_doctor(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    try:
        loaded = config(args, env)
    except ConfigError as exc:
        print(doctor.Finding(doctor.FAIL, "config", str(exc)))
        return 2
    findings = [
        doctor.config_finding(loaded.path),
        *doctor.diagnose(loaded, env, online=args.online),
    ]
    for finding in findings:
        print(finding)
    return doctor.worst(findings)


def run_tunnel(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    return tunnel.run_tunnel(
        config(args, env), env, provider=args.provider, allow_download=args.allow_download
    )


def run_wandb_setup(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    entity = args.entity or env.get("WANDB_ENTITY")
    project = args.project or env.get("WANDB_PROJECT")
    if not entity:
        raise EdgehookError("wandb setup needs --entity (or WANDB_ENTITY): the W&B team")
    if not project:
        raise EdgehookError("wandb setup needs --project (or WANDB_PROJECT): the W&B project")
    request = wandbsetup.Request(
        entity=entity,
        project=project,
        alias=args.alias,
        name=args.name,
        webhook=args.webhook,
        url=args.url or wandbsetup.recorded_webhook_url(loaded.data_dir),
        collection=args.collection,
        artifact_type=args.type,
    )
    wandbsetup.setup(request, api_key=load_wandb_key(loaded, env), dry_run=args.dry_run)
    return 0


def run_send_test(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    secrets = load_secrets(loaded, env)
    host = loaded.server.host if ":" not in loaded.server.host else f"[{loaded.server.host}]"
    url = args.url or f"http://{host}:{loaded.server.port}/webhook"
    if args.payload is not None:
        try:
            body = args.payload.read_bytes()
        except OSError as exc:
            raise EdgehookError(f"cannot read --payload {args.payload}: {exc.strerror}") from exc
    else:
        body = sample_body()
    try:
        reply = sendtest.send(url, body, secrets)
    except OSError as exc:
        raise EdgehookError(
            f"cannot reach {url}: {getattr(exc, 'reason', exc)}; is `edgehook serve` running?"
        ) from exc
    print(f"POST {url}\n{reply.status}  {reply.body}")
    if "X-Request-Id" in reply.headers:
        print(f"request id: {reply.headers['X-Request-Id']} (edgehook audit show)")
    return 0 if 200 <= reply.status < 300 else 1
