"""Receiver under a forged flood, side by side with adnanh/webhook in the same run.

For each server and each flood (one attacker address through the tunnel; 10,000 addresses;
the very address the genuine deliveries come from, as forgers on W&B's own cloud would):
wrk sends forged deliveries for --duration seconds while a second client sends signed
deliveries at --signed-rate per second. Reports rejection throughput, signed-delivery
latency (p50/p99/max) and outcome, the server's RSS, and audit bytes written. The peer gets
an equivalent rule (bearer value + hex HMAC: it cannot check base64).

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
import http.client
import json
import os
import platform
import re
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.deliveries import (  # noqa: E402
    FORGED_HEADERS,
    LEGIT_CLIENT,
    Genuine,
    bench_genuine,
    memory,
    percentile,
    signed_request,
)
from edgehook.init import run_init  # noqa: E402

FORGED_BODY = '{"event_type":"ADD_ARTIFACT_ALIAS","alias":"retrain"}'

ONE_ADDRESS_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
%(headers)s
wrk.headers["X-Forwarded-For"] = "198.51.100.1"
"""
MANY_ADDRESSES_LUA = """
local i = 0
local headers = {}
%(table_headers)s
request = function()
  i = i + 1
  local n = i %% 10000
  headers["X-Forwarded-For"] = "10.1." .. math.floor(n / 256) .. "." .. (n %% 256)
  return wrk.format("POST", nil, headers, '%(body)s')
end
"""


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited early")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not answer")


def run_wrk(url: str, script: str, duration: float, workdir: Path) -> tuple[float, int, int]:
    lua = workdir / "flood.lua"
    lua.write_text(script)
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{max(1, round(duration))}s", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, total, int(non_2xx.group(1)) if non_2xx else 0


def lua_scripts() -> dict[str, str]:
    single = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in FORGED_HEADERS.items())
    table = "\n".join(f'headers["{k}"] = "{v}"' for k, v in FORGED_HEADERS.items())
    one = ONE_ADDRESS_LUA % {"body": FORGED_BODY, "headers": single}
    return {
        "one address": one,
        "10,000 addresses": MANY_ADDRESSES_LUA % {"body": FORGED_BODY, "table_headers": table},
        "the genuine address": one.replace("198.51.100.1", LEGIT_CLIENT),
    }


class SignedSender(threading.Thread):
    """Signed deliveries from another address, one new connection each (as W&B would)."""

    def __init__(
        self, port: int, path: str, token: str, secret: bytes, rate: float, encode: str, tag: str
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.token, self.secret = port, path, token, secret
        self.interval, self.encode, self.tag = 1.0 / rate, encode, tag
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.job_ids: list[int] = []

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            i += 1
            status, ms, job_id = signed_request(
                self.port, self.path, self.token, self.secret, self.encode, f"bench{self.tag}{i}"
            )
            self.statuses.append(status)
            self.latencies.append(ms)
            if job_id is not None:
                self.job_ids.append(job_id)
            self.stop.wait(self.interval)


def measure(
    server: str,
    flood: str,
    port: int,
    path: str,
    pid: int,
    script: str,
    args: argparse.Namespace,
    token: str,
    secret: bytes,
    encode: str,
    workdir: Path,
    audit_dir: Path | None,
    store: Path | None,
    ok_status: int,
) -> Result:
    before = dir_bytes(audit_dir) if audit_dir else None
    sender = SignedSender(
        port, path, token, secret, args.signed_rate, encode, tag=re.sub(r"\W", "", flood)
    )
    sender.start()
    rate, total, non_2xx = run_wrk(f"http://127.0.0.1:{port}{path}", script, args.duration, workdir)
    sender.stop.set()
    sender.join()
    rss, peak = memory(pid)
    time.sleep(0.2)
    committed = None
    if store is not None:
        with sqlite3.connect(store) as conn:
            found = {row[0] for row in conn.execute("SELECT id FROM jobs")}
        committed = sum(1 for job in sender.job_ids if job in found)
    return Result(
        server=server,
        flood=flood,
        rejections_per_s=round(rate, 1),
        flood_requests=total,
        flood_non_2xx=non_2xx,
        signed_sent=len(sender.statuses),
        signed_ok=sum(1 for s in sender.statuses if s == ok_status),
        signed_committed=committed,
        latency_p50_ms=round(statistics.median(sender.latencies), 2) if sender.latencies else 0,
        latency_p99_ms=round(percentile(sender.latencies, 0.99), 2),
        latency_max_ms=round(max(sender.latencies, default=0), 2),
        rss_mb=round(rss, 1),
        peak_rss_mb=round(peak, 1),
        audit_bytes=(dir_bytes(audit_dir) - before) if audit_dir and before is not None else None,
    )


def dir_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def bench_edgehook(args: argparse.Namespace, workdir: Path) -> tuple[list[Result], list[Genuine]]:
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
        results = [
            measure(
                "edgehook",
                name,
                port,
                "/webhook",
                proc.pid,
                script,
                args,
                token,
                secret,
                "base64",
                workdir,
                home / "data" / "audit",
                home / "data" / "edgehook.db",
                202,
            )
            for name, script in lua_scripts().items()
        ]
        genuine = bench_genuine(args, port, proc.pid, home, token, secret)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        heavy = [name for name in ("torch", "wandb") if name in maps]
        results[-1].notes.append("imports torch/wandb: " + (", ".join(heavy) or "no"))
        for result in results:
            result.notes.append(f"{args.workers} receiver process(es), RSS of the largest")
        return results, genuine
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def bench_peer(args: argparse.Namespace, workdir: Path) -> list[Result]:
    token, secret = "t" * 43, "s" * 43
    hooks = [
        {
            "id": "wandb",
            "execute-command": "/bin/true",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "and": [
                    {
                        "match": {
                            "type": "value",
                            "value": f"Bearer {token}",
                            "parameter": {"source": "header", "name": "Authorization"},
                        }
                    },
                    {
                        "match": {
                            "type": "payload-hmac-sha256",
                            "secret": secret,
                            "parameter": {"source": "header", "name": "X-Wandb-Signature"},
                        }
                    },
                ]
            },
        }
    ]
    (workdir / "hooks.json").write_text(json.dumps(hooks))
    port = free_port()
    log = (workdir / "webhook.log").open("wb")
    proc = subprocess.Popen(
        ["webhook", "-hooks", str(workdir / "hooks.json"), "-ip", "127.0.0.1", "-port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port, "/", proc)
        return [
            measure(
                "adnanh/webhook",
                name,
                port,
                "/hooks/wandb",
                proc.pid,
                script,
                args,
                token,
                secret.encode(),
                "hex",
                workdir,
                None,
                None,
                200,
            )
            for name, script in lua_scripts().items()
        ]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    peer = subprocess.run(["webhook", "-version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "peer": peer,
    }


def markdown(results: list[Result], genuine: list[Genuine], info: dict[str, str], when: str) -> str:
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
    parser.add_argument("--signed-rate", type=float, default=4.0, help="signed deliveries/s")
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
        ours, genuine = bench_edgehook(args, Path(tmp))
        results = ours + bench_peer(args, Path(tmp))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    report = markdown(results, genuine, info, when)
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
                "genuine": [asdict(g) for g in genuine],
            },
            indent=2,
        )
    )
    (args.out / f"{stem}.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
