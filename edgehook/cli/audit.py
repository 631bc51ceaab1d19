"""`edgehook audit verify|show|tail`: reviewing and verifying the audit chains."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from typing import Any

from core import auditread
from core.credentials import load_audit_key
from core.errors import EdgehookError
from edgehook.cli.common import Subparsers, add_command, config

DECISIONS = ["accepted", "duplicate", "ignored", "rejected", "unavailable", "error", "health"]


def register(sub: Subparsers) -> None:
    audit = add_command(
        sub,
        "audit",
        "review and verify the audit log",
        "edgehook audit verify",
        "edgehook audit show --since 1h --decision rejected",
        "edgehook audit show --lost",
        "edgehook audit tail -f",
    )
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    a = add_command(
        audit_sub,
        "verify",
        "check the chain; exit 1 naming the first damage",
        "edgehook audit verify",
    )
    a.add_argument("--json", action="store_true", help="print the report as JSON")
    a.set_defaults(func=run_verify)
    a = add_command(
        audit_sub,
        "show",
        "list audit lines, filtered",
        "edgehook audit show --since 2h",
        "edgehook audit show --decision accepted --json",
        "edgehook audit show --client 203.0.113.9",
        "edgehook audit show --event retrain",
        "edgehook audit show --lost",
    )
    a.add_argument("--since", help="ISO time or relative (30m, 2h, 7d)")
    a.add_argument("--until", help="ISO time or relative (30m, 2h, 7d)")
    a.add_argument("--decision", choices=DECISIONS)
    a.add_argument("--client", help="client address, exactly")
    a.add_argument("--event", help="text in the event summary (type, artifact, alias)")
    a.add_argument(
        "--lost",
        action="store_true",
        help="genuine deliveries (valid token and signature) that were refused: send them "
        "again from the W&B automation's history",
    )
    a.add_argument("--json", action="store_true", help="one JSON object per line")
    a.set_defaults(func=run_show)
    a = add_command(
        audit_sub,
        "tail",
        "print the last lines; -f follows new ones",
        "edgehook audit tail",
        "edgehook audit tail -f -n 50",
    )
    a.add_argument("-f", "--follow", action="store_true")
    a.add_argument("-n", "--lines", type=int, default=10)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=run_tail)


def run_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
    key = load_audit_key(loaded, env)
    found = auditread.chains(loaded.audit_dir)
    if not found:
        raise EdgehookError(f"no audit log under {loaded.audit_dir}; has edgehook run here?")
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


def run_show(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)
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
    for record in auditread.merged_records(loaded.audit_dir):
        if chosen.accepts(record):
            print(json.dumps(record) if args.json else auditread.table_row(record, columns))
    return 0


def run_tail(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    loaded = config(args, env)

    def out(record: dict[str, Any]) -> None:
        print(json.dumps(record) if args.json else auditread.table_row(record), flush=True)

    if not args.json:
        print(auditread.table_header())
    auditread.tail(loaded.audit_dir, out, follow=args.follow, lines=args.lines)
    return 0
