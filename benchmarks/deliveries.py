"""Genuine deliveries for the receiver benchmark (bench_receiver.py): one signed request as
W&B sends it, runs of them at a set rate, and connections held open around them."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import re
import socket
import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edgehook.template import sample_body

FORGED_HEADERS = {
    "Content-Type": "application/json",
    "Authorization": "Bearer forged-forged-forged-forged-forged",
    "X-Wandb-Signature": "A" * 43 + "=",
}
LEGIT_CLIENT = "203.0.113.200"


def memory(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) in MB of `pid`, or of its largest child process where it has children
    (`server.workers` > 1: a supervisor and its receivers); the other processes are alike."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    pids = [int(p) for p in children.read_text().split()] if children.exists() else []
    figures = []
    for one in pids or [pid]:
        status = Path(f"/proc/{one}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        figures.append((rss / 1024, peak / 1024))
    return max(figures)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def signed_request(
    port: int, path: str, token: str, secret: bytes, encode: str, tag: str
) -> tuple[int, float, int | None]:
    """One genuine delivery on a new connection (as W&B sends them): status, ms, job id."""
    body = sample_body(event_author=tag)
    digest = hmac.new(secret, body, hashlib.sha256).digest()
    signature = base64.b64encode(digest).decode() if encode == "base64" else digest.hex()
    headers = {
        "Content-Type": "application/json",
        "X-Wandb-Signature": signature,
        "Authorization": f"Bearer {token}",
        "X-Forwarded-For": LEGIT_CLIENT,
    }
    started = time.perf_counter()
    job_id = None
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("POST", path, body=body, headers=headers)
        reply = conn.getresponse()
        text = reply.read()
        conn.close()
        status = reply.status
        if status == 202:
            job_id = int(json.loads(text)["job_id"])
    except OSError:
        status = 0
    return status, (time.perf_counter() - started) * 1000, job_id


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
        i, due = 0, time.perf_counter()
        while not self.stop.is_set():
            i += 1
            # On a schedule (not a pause after each answer), so a slow answer does not thin
            # out the sample.
            due += self.interval
            status, ms, job_id = signed_request(
                self.port, self.path, self.token, self.secret, self.encode, f"bench{self.tag}{i}"
            )
            self.statuses.append(status)
            self.latencies.append(ms)
            if job_id is not None:
                self.job_ids.append(job_id)
            self.stop.wait(max(0.0, due - time.perf_counter()))


@dataclass
class Genuine:
    """Genuine deliveries in one hostile setting (edgehook alone)."""

    setting: str
    sent: int
    accepted: int
    committed: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    rss_mb: float


def genuine_run(
    setting: str,
    port: int,
    count: int,
    rate: float,
    token: str,
    secret: bytes,
    pid: int,
    store: Path,
) -> Genuine:
    statuses, latencies, jobs = [], [], []
    tag = re.sub(r"\W", "", setting)
    for i in range(count):
        started = time.perf_counter()
        status, ms, job_id = signed_request(port, "/webhook", token, secret, "base64", f"{tag}{i}")
        statuses.append(status)
        latencies.append(ms)
        if job_id is not None:
            jobs.append(job_id)
        time.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - started)))
    rss, _ = memory(pid)
    with sqlite3.connect(store) as conn:
        found = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    return Genuine(
        setting=setting,
        sent=count,
        accepted=statuses.count(202),
        committed=sum(1 for job in jobs if job in found),
        latency_p50_ms=round(statistics.median(latencies), 2),
        latency_p99_ms=round(percentile(latencies, 0.99), 2),
        latency_max_ms=round(max(latencies), 2),
        rss_mb=round(rss, 1),
    )


def receiver_latencies(audit_dir: Path, job_ids: list[int]) -> list[float]:
    """The receiver's own latency (head parsed to answer, its audit lines' `latency_ms`) of
    the deliveries that made these jobs: what the client's figure holds besides its own
    connection, scheduling and reading."""
    wanted, found = set(job_ids), []
    for path in audit_dir.rglob("*.jsonl"):
        for line in path.read_text(errors="replace").splitlines():
            if '"job_id"' not in line:
                continue
            fields = json.loads(line)
            if fields.get("job_id") in wanted and "latency_ms" in fields:
                found.append(float(fields["latency_ms"]))
    return found


def hold_connections(port: int, count: int) -> list[socket.socket]:
    """Idle sockets, heads that never end, and bodies trickling after a forged head."""
    held = []
    trickle = (
        "POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: {FORGED_HEADERS['Authorization']}\r\nContent-Length: 900\r\n\r\n{{"
    ).encode()
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 3 == 1:
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: x\r\n")
        elif i % 3 == 2:
            sock.sendall(trickle)
        held.append(sock)
    return held


def bench_genuine(
    args: argparse.Namespace, port: int, pid: int, home: Path, token: str, secret: bytes
) -> list[Genuine]:
    store = home / "data" / "edgehook.db"
    count = max(5, round(args.duration * args.signed_rate))
    results = [
        # The floods' deliveries without a flood, same rate and sender: their baseline.
        genuine_run(
            f"no flood, {args.signed_rate:g}/s (the floods' baseline)",
            port,
            count,
            args.signed_rate,
            token,
            secret,
            pid,
            store,
        ),
        genuine_run(
            f"burst of {args.burst} from one address at 30/s",
            port,
            args.burst,
            30.0,
            token,
            secret,
            pid,
            store,
        ),
    ]
    held = hold_connections(port, args.connections)
    try:
        results.append(
            genuine_run(
                f"{args.connections:,} idle / slow-head / trickling connections held",
                port,
                count,
                args.signed_rate,
                token,
                secret,
                pid,
                store,
            )
        )
    finally:
        for sock in held:
            sock.close()
    return results
