"""Receiver under a forged flood, side by side with adnanh/webhook in the same run.

For each server and each flood (one attacker address through the tunnel; 10,000 addresses;
the very address the genuine deliveries come from, as forgers on W&B's own cloud would):
wrk sends forged deliveries for --duration seconds while a second client sends signed
deliveries at --signed-rate per second. Reports rejection throughput, signed-delivery
latency (p50/p99/max) and outcome, the server's RSS, and audit bytes written. The peer gets
an equivalent rule (bearer value + hex HMAC: it cannot check base64).

Side by side, a stranger's forgeries (wrong token) and forgeries carrying a leaked access
token (right token, wrong signature: body read and HMAC computed before the refusal), from
one address, each at 1 and at 2 wrk threads (on 2 cores the load generator's share of the
CPU moves the ratio), with signed deliveries during each (floods.py).

Then, edgehook alone, genuine deliveries where they used to be lost: a burst of distinct
deliveries from one address at 30/s (--burst of them), and deliveries while 1,000
connections (idle sockets, slow heads, trickling bodies) are held open: every one must be
answered 202, within 2 s, with the receiver's RSS under 80 MB.

  .venv/bin/python benchmarks/bench_receiver.py                 # full: 10 s per flood
  .venv/bin/python benchmarks/bench_receiver.py --smoke         # 1 s per flood (CI)
Needs wrk and webhook (Debian packages of those names; scripts/setup.sh installs them).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.deliveries import (  # noqa: E402
    Genuine,
    SignedSender,
    bench_genuine,
    memory,
    percentile,
    receiver_latencies,
)
from benchmarks.floods import (  # noqa: E402
    PEER_SECRET,
    PEER_TOKEN,
    free_port,
    leaked_script,
    machine,
    run_wrk,
    stranger_scripts,
    wait_http,
    write_peer_hooks,
)
from edgehook.init import run_init  # noqa: E402


@dataclass
class Result:
    server: str
    flood: str
    rejections_per_s: float
    flood_requests: int
    flood_non_2xx: int
    signed_sent: int
    signed_ok: int
    signed_committed: int | None
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    rss_mb: float
    peak_rss_mb: float
    audit_bytes: int | None
    notes: list[str] = field(default_factory=list)
    threads: int = 1  # wrk's
    receiver_p99_ms: float | None = None  # edgehook's own share (its audit lines)


@dataclass(frozen=True)
class Target:
    """One server under test, and how a genuine delivery to it is sent and counted."""

    server: str
    port: int
    path: str
    pid: int
    token: str
    secret: bytes
    encode: str  # the signature's form: base64 (edgehook), hex (the peer)
    ok_status: int
    audit_dir: Path | None = None
    store: Path | None = None


# wrk threads for the side-by-side floods: on 2 cores the load generator's share of the
# CPU changes the ratio, so both are reported.
THREADS = (1, 2)


def measure(
    target: Target,
    flood: str,
    script: str,
    args: argparse.Namespace,
    workdir: Path,
    threads: int = 1,
) -> Result:
    audit_dir, store = target.audit_dir, target.store
    before = dir_bytes(audit_dir) if audit_dir else None
    sender = SignedSender(
        target.port,
        target.path,
        target.token,
        target.secret,
        args.signed_rate,
        target.encode,
        tag=re.sub(r"\W", "", f"{flood}{threads}"),
    )
    sender.start()
    url = f"http://127.0.0.1:{target.port}{target.path}"
    rate, total, non_2xx = run_wrk(url, script, args.duration, workdir, threads)
    sender.stop.set()
    sender.join()
    rss, peak = memory(target.pid)
    time.sleep(0.2)
    committed = None
    if store is not None:
        with sqlite3.connect(store) as conn:
            found = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        committed = sum(1 for job in sender.job_ids if job in found)
    own = receiver_latencies(audit_dir, sender.job_ids) if audit_dir else []
    return Result(
        server=target.server,
        flood=flood,
        rejections_per_s=round(rate, 1),
        flood_requests=total,
        flood_non_2xx=non_2xx,
        signed_sent=len(sender.statuses),
        signed_ok=sum(1 for s in sender.statuses if s == target.ok_status),
        signed_committed=committed,
        latency_p50_ms=round(statistics.median(sender.latencies), 2) if sender.latencies else 0,
        latency_p99_ms=round(percentile(sender.latencies, 0.99), 2),
        latency_max_ms=round(max(sender.latencies, default=0), 2),
        rss_mb=round(rss, 1),
        peak_rss_mb=round(peak, 1),
        audit_bytes=(dir_bytes(audit_dir) - before) if audit_dir and before is not None else None,
        threads=threads,
        receiver_p99_ms=round(percentile(own, 0.99), 2) if own else None,
    )


def flood_all(
    target: Target, args: argparse.Namespace, workdir: Path
) -> tuple[list[Result], list[Result]]:
    """The stranger's three floods (1 wrk thread), then a stranger's and a leaked token's
    forgeries from one address at each of THREADS."""
    strangers = stranger_scripts()
    floods = [measure(target, name, script, args, workdir) for name, script in strangers.items()]
    side_by_side = {
        "stranger's forgeries": strangers["one address"],
        "leaked token": leaked_script(target.token, target.encode),
    }
    threads = [
        measure(target, name, script, args, workdir, count)
        for count in THREADS
        for name, script in side_by_side.items()
    ]
    return floods, threads


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


Ran = tuple[list[Result], list[Result], list[Genuine]]


def bench_edgehook(args: argparse.Namespace, workdir: Path) -> Ran:
    home = workdir / "edgehook"
    run_init(home)
    config = home / "edgehook.toml"
    config.write_text(
        config.read_text().replace("[server]", f"[server]\nworkers = {args.workers}", 1)
    )
    port = free_port()
    env = {**os.environ, "EDGEHOOK_PORT": str(port)}
    log = (home / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgehook", "serve"],
        cwd=home,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port, "/healthz", proc)
        token = (home / "secrets" / "access_token").read_text().strip()
        secret = (home / "secrets" / "signing_secret").read_text().strip().encode()
        target = Target(
            "edgehook",
            port,
            "/webhook",
            proc.pid,
            token,
            secret,
            "base64",
            202,
            home / "data" / "audit",
            home / "data" / "edgehook.db",
        )
        results, threads = flood_all(target, args, workdir)
        genuine = bench_genuine(args, port, proc.pid, home, token, secret)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        heavy = [name for name in ("torch", "wandb") if name in maps]
        results[-1].notes.append("imports torch/wandb: " + (", ".join(heavy) or "no"))
        for result in results + threads:
            result.notes.append(f"{args.workers} receiver process(es), RSS of the largest")
        return results, threads, genuine
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def bench_peer(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], list[Result]]:
    write_peer_hooks(workdir / "hooks.json")
    port = free_port()
    log = (workdir / "webhook.log").open("wb")
    proc = subprocess.Popen(
        ["webhook", "-hooks", str(workdir / "hooks.json"), "-ip", "127.0.0.1", "-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port, "/", proc)
        target = Target(
            "adnanh/webhook",
            port,
            "/hooks/wandb",
            proc.pid,
            PEER_TOKEN,
            PEER_SECRET.encode(),
            "hex",
            200,
        )
        return flood_all(target, args, workdir)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def markdown(
    results: list[Result],
    threads: list[Result],
    genuine: list[Genuine],
    info: dict[str, str],
    when: str,
) -> str:
    lines = [
        f"# Receiver under a forged flood ({when})",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; "
        f"peer: {info['peer']}.",
        "",
        "| server | flood | rejections/s | signed ok/sent | committed | p50 ms | p99 ms "
        "| max ms | RSS MB | peak RSS MB | audit bytes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.server} | {r.flood} | {r.rejections_per_s:,.0f} | "
            f"{r.signed_ok}/{r.signed_sent} | "
            f"{'-' if r.signed_committed is None else r.signed_committed} | "
            f"{r.latency_p50_ms} | {r.latency_p99_ms} | {r.latency_max_ms} | "
            f"{r.rss_mb} | {r.peak_rss_mb} | "
            f"{'-' if r.audit_bytes is None else f'{r.audit_bytes:,}'} |"
        )
    lines.append("")
    for ours, peer in zip(results[: len(results) // 2], results[len(results) // 2 :], strict=True):
        lines.append(
            f"- {ours.flood}: edgehook/webhook rejection throughput = "
            f"{ours.rejections_per_s / peer.rejections_per_s:.2f}x"
        )
    lines += [
        "",
        "## A stranger's forgeries and a leaked token's, at 1 and 2 wrk threads",
        "",
        "Right token, wrong signature: the body is read and its HMAC computed before the "
        "refusal. Signed deliveries are edgehook's, sent during its flood.",
        "",
        "| wrk threads | flood | edgehook rejections/s | adnanh/webhook rejections/s "
        "| edgehook/webhook | signed ok/sent | committed | p50 ms | p99 ms | max ms "
        "| receiver's own p99 ms |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    half = len(threads) // 2
    for ours, peer in zip(threads[:half], threads[half:], strict=True):
        lines.append(
            f"| {ours.threads} | {ours.flood} | {ours.rejections_per_s:,.0f} | "
            f"{peer.rejections_per_s:,.0f} | "
            f"**{ours.rejections_per_s / peer.rejections_per_s:.2f}x** | "
            f"{ours.signed_ok}/{ours.signed_sent} | {ours.signed_committed} | "
            f"{ours.latency_p50_ms} | {ours.latency_p99_ms} | {ours.latency_max_ms} | "
            f"{ours.receiver_p99_ms} |"
        )
    lines += [
        "",
        "## Genuine deliveries where they used to be lost (edgehook)",
        "",
        "| setting | 202/sent | committed | p50 ms | p99 ms | max ms | RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for g in genuine:
        lines.append(
            f"| {g.setting} | {g.accepted}/{g.sent} | {g.committed} | {g.latency_p50_ms} | "
            f"{g.latency_p99_ms} | {g.latency_max_ms} | {g.rss_mb} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per flood")
    # 20/s: about 150 deliveries in a 10 s flood, so p99 is not simply the slowest one.
    parser.add_argument("--signed-rate", type=float, default=20.0, help="signed deliveries/s")
    parser.add_argument("--burst", type=int, default=200, help="genuine deliveries in a burst")
    parser.add_argument(
        "--connections", type=int, default=1000, help="connections held open at once"
    )
    parser.add_argument(
        "--workers", type=int, default=2, help="edgehook's server.workers (receiver processes)"
    )
    parser.add_argument("--smoke", action="store_true", help="1 s floods, a 30-delivery burst (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.smoke:
        args.duration, args.burst = 1.0, 30
    missing = [tool for tool in ("wrk", "webhook") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench_receiver: needs {' and '.join(missing)} (apt-get install {' '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="edgehook-bench-") as tmp:
        ours, our_threads, genuine = bench_edgehook(args, Path(tmp))
        peers, peer_threads = bench_peer(args, Path(tmp))
    results, threads = ours + peers, our_threads + peer_threads
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    report = markdown(results, threads, genuine, info, when)
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "receiver-smoke" if args.smoke else f"receiver-{when[:10]}"
    (args.out / f"{stem}.json").write_text(
        json.dumps(
            {
                "when": when,
                "machine": info,
                "duration_s": args.duration,
                "results": [asdict(r) for r in results],
                # a stranger's and a leaked token's forgeries at 1 and 2 wrk threads
                "threads": [asdict(r) for r in threads],
                "genuine": [asdict(g) for g in genuine],
            },
            indent=2,
        )
    )
    (args.out / f"{stem}.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
