"""The console at size: p95 time of the first page of each list and of each filter, with
1,000,000 receiver audit lines and 100,000 jobs, through a real `edgehook console` process
on loopback (HTTP included), and that process's memory.

    nice -n 10 .venv/bin/python benchmarks/bench_console.py           # full size (~3 min)
    .venv/bin/python benchmarks/bench_console.py --smoke               # 20,000 lines, 2,000 jobs

The audit lines are written as the receiver writes them (same fields, chained seq) but with
a placeholder MAC: the deliveries index does not judge authenticity (/audit does, and is
not timed here). The index is built once before the console starts, as a running console
keeps it; its build time is reported too.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.reporting import arguments, write  # noqa: E402

TARGET_MS, RSS_TARGET_MB = 150.0, 80.0
DECISIONS = [("accepted", 202, "queued"), ("rejected", 401, "bad_token"),
             ("rejected", 401, "bad_signature"), ("ignored", 200, "no_rule"),
             ("duplicate", 200, "duplicate"), ("rejected", 429, "rate_limited"),
             ("error", 503, "store_unavailable")]  # fmt: skip
STATES = ["succeeded"] * 80 + ["failed"] * 10 + ["cancelled"] * 4 + ["superseded"] * 4 + [
    "queued", "running"]  # fmt: skip


def write_audit(audit_dir: Path, lines: int, start: float) -> None:
    rng = random.Random(1)
    audit_dir.mkdir(parents=True)
    per_segment = 200_000
    for segment in range(lines // per_segment + 1):
        count = min(per_segment, lines - segment * per_segment)
        if count <= 0:
            break
        out = []
        for i in range(segment * per_segment, segment * per_segment + count):
            decision, status, reason = DECISIONS[rng.randrange(len(DECISIONS))]
            ts = datetime.fromtimestamp(start + i * 0.5, timezone.utc).isoformat(
                timespec="milliseconds")  # fmt: skip
            record: dict[str, Any] = {"v": 1, "seq": i + 1, "ts": ts, "kind": "request",
                                      "request_id": f"{i:016x}",
                                      "client": f"198.51.100.{rng.randrange(1, 60)}",
                                      "method": "POST", "path": "/webhook", "status": status,
                                      "decision": decision, "reason": reason}  # fmt: skip
            if decision != "rejected":
                record["event"] = f"ADD_ARTIFACT_ALIAS team/p{i % 7}/data:v{i} +retrain"
                record["body_sha256"] = hashlib.sha256(str(i).encode()).hexdigest()
                record["proven"] = True
            if decision == "accepted":
                record["job_id"] = i
            record["prev"], record["mac"] = "0" * 64, "0" * 64
            out.append(json.dumps(record, separators=(",", ":")))
        path = audit_dir / f"audit-{segment + 1:06d}.jsonl"
        path.write_text("\n".join(out) + "\n", encoding="utf-8")


def write_jobs(store: Path, jobs: int, start: float) -> None:
    from core.store import open_store, transaction

    rng = random.Random(2)
    conn = open_store(store)
    with transaction(conn):
        conn.executemany(
            "INSERT INTO events (id, received_at, request_id, client, body_sha256, event_type, "
            "version_string, event_json) VALUES (?, ?, ?, '198.51.100.1', ?, "
            "'ADD_ARTIFACT_ALIAS', ?, '{}')",
            ((i, start + i, f"r{i}", f"{i:064x}", f"team/p/data:v{i}") for i in range(1, jobs + 1)),
        )
        rows = []
        for i in range(1, jobs + 1):
            state = STATES[rng.randrange(len(STATES))]
            reason = "artifact missing" if state == "failed" else None
            rows.append((i, i, f"rule-{i % 3}", "retrain" if i % 4 else "deploy", state,
                         start + i, start + i + 60, reason, "promoted" if state == "succeeded"
                         else None))  # fmt: skip
        conn.executemany(
            "INSERT INTO jobs (id, event_id, rule, action, args_json, state, created_at, "
            "updated_at, reason, summary) VALUES (?, ?, ?, ?, '{}', ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO attempts (job_id, number, worker, started_at, finished_at, outcome) "
            "VALUES (?, 1, 'w', ?, ?, ?)",
            ((r[0], r[5] + 2, r[5] + 50, r[4]) for r in rows if r[4] not in ("queued",)),
        )
    conn.close()


def main() -> int:
    args = arguments(__doc__)
    lines, jobs, repeats = (20_000, 2_000, 10) if args.smoke else (1_000_000, 100_000, 40)
    from console.deliveryindex import DeliveryIndex
    from edgehook.init import run_init
    from tests.conftest import free_port

    with tempfile.TemporaryDirectory(prefix="edgehook-bench-console-") as tmp:
        base = Path(tmp)
        run_init(base)
        data = base / "data"
        start = 1_800_000_000.0
        began = time.perf_counter()
        write_audit(data / "audit", lines, start)
        write_jobs(data / "edgehook.db", jobs, start)
        generated_s = time.perf_counter() - began
        began = time.perf_counter()
        index = DeliveryIndex(data / "console" / "deliveries.db", data / "audit")
        indexed = index.refresh()
        index.close()
        build_s = time.perf_counter() - began
        port = free_port()
        with (base / "console.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgehook", "--config", str(base / "edgehook.toml"),
                 "console", "--port", str(port)],
                cwd=base, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ),
            )  # fmt: skip
        try:
            figures = measure(base, port, repeats, process.pid, start)
        finally:
            process.terminate()
            process.wait(timeout=20)
    figures.update(lines=lines, jobs=jobs, indexed=indexed, repeats=repeats,
                   index_build_s=round(build_s, 1), generate_s=round(generated_s, 1))  # fmt: skip
    return report(figures, args)


def measure(base: Path, port: int, repeats: int, pid: int, start: float) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}"
    token = (base / "secrets" / "console_token").read_text().strip()
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/login", timeout=2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit((base / "console.log").read_text()) from None
            time.sleep(0.05)
    jar = CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    form = urllib.parse.urlencode({"token": token}).encode()
    opener.open(f"{url}/login", data=form, timeout=10).close()
    since = datetime.fromtimestamp(start + 3600, timezone.utc).strftime("%Y-%m-%dT%H:%M")
    until = datetime.fromtimestamp(start + 7200, timezone.utc).strftime("%Y-%m-%dT%H:%M")
    queries = {
        "deliveries": "", "deliveries decision=rejected": "decision=rejected",
        "deliveries status=503": "status=503", "deliveries reason=no_rule": "reason=no_rule",
        "deliveries client": "client=198.51.100.7",
        "deliveries event_type": "event_type=ADD_ARTIFACT_ALIAS", "deliveries lost": "lost=1",
        "deliveries since+until": f"since={since}&until={until}",
        "deliveries decision+client": "decision=accepted&client=198.51.100.7",
    }  # fmt: skip
    paths = {name: f"/api/deliveries?{q}" for name, q in queries.items()}
    paths["jobs"] = "/api/jobs"
    for state in ("queued", "running", "succeeded", "failed", "cancelled", "superseded"):
        paths[f"jobs state={state}"] = f"/api/jobs?state={state}"
    paths["overview"] = "/api/overview"  # the live page's poll (chains verified apart)
    paths["page /"] = "/"
    paths["page /deliveries"] = "/deliveries"
    paths["page /deliveries?decision=rejected"] = "/deliveries?decision=rejected"
    paths["page /jobs?state=failed"] = "/jobs?state=failed"
    results: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        times = []
        for _ in range(repeats):
            request = urllib.request.Request(url + path)
            if path.startswith("/api/"):
                request.add_header("Authorization", f"Bearer {token}")
            began = time.perf_counter()
            with opener.open(request, timeout=30) as answer:
                body = answer.read()
            times.append((time.perf_counter() - began) * 1000)
        data = json.loads(body) if path.startswith("/api/") else {}
        rows = data.get("deliveries", data.get("jobs"))
        results[name] = {"p95_ms": round(statistics.quantiles(times, n=20)[-1], 1),
                         "median_ms": round(statistics.median(times), 1),
                         "rows": None if rows is None else len(rows)}  # fmt: skip
    status = Path(f"/proc/{pid}/status").read_text()
    rss = {k: int(line.split()[1]) / 1024 for line in status.splitlines()
           for k in ("VmRSS", "VmHWM") if line.startswith(k + ":")}  # fmt: skip
    return {"lists": results, "rss_mb": round(rss["VmRSS"], 1), "peak_rss_mb": round(
        rss["VmHWM"], 1), "worst_p95_ms": max(r["p95_ms"] for r in results.values())}  # fmt: skip


def report(figures: dict[str, Any], args: Any) -> int:
    f = figures
    rows = [(name, f"{r['p95_ms']} ms", f"{r['median_ms']} ms", str(r["rows"] or "page"))
            for name, r in f["lists"].items()]  # fmt: skip
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Console ({when})\n\n{f['lines']:,} receiver audit lines, {f['jobs']:,} jobs; a real "
        f"`edgehook console` on loopback, {f['repeats']} requests each (first page, 50 rows)."
        f"\nIndex built in {f['index_build_s']} s ({f['indexed']:,} lines). Worst p95 "
        f"{f['worst_p95_ms']} ms (target <= {TARGET_MS:g}); RSS {f['rss_mb']} MB, peak "
        f"{f['peak_rss_mb']} MB (target < {RSS_TARGET_MB:g}).\n\n"
        "| list | p95 | median | rows |\n| --- | ---: | ---: | ---: |\n"
        + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows)
    )
    return write(args, "console", when, figures, text)


if __name__ == "__main__":
    raise SystemExit(main())
