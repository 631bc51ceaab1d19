"""The predictor under hostile load (issue 21 item 4), loopback only and bounded in count
and time: 1,000 idle connections held open while a genuine /predict is timed (target: an
answer within 1 s), how many of them the predictor closes once its head timeout passes;
64 concurrent worst-case images (PNGs of 4000x2500, the default max_pixels: 16-bit
greyscale as issue 21 sent, and 8-bit RGB, which Pillow holds at 4 bytes a pixel; tens of
KB each) with the predictor's peak RSS against its idle RSS (target: under 1.5x).

    .venv/bin/python benchmarks/predictor_hostile.py           # ~1 minute on 2 cores

bench_predictor.py runs the same section (`measure`) against its own predictor.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

IDLE = 1000
CONCURRENT = 64
WORST_SIDE = (4000, 2500)  # 10,000,000 pixels: the default predictor.max_pixels


def worst_png(width: int = WORST_SIDE[0], height: int = WORST_SIDE[1], rgb: bool = False) -> bytes:
    """A PNG that compresses to under 200 KB and decodes to width x height: 16-bit
    greyscale (the issue's attack), or 8-bit RGB (Pillow holds 4 bytes a pixel of it)."""
    from PIL import Image

    row = (np.arange(width, dtype=np.uint32) * 65535 // max(1, width - 1)).astype(np.uint16)
    if rgb:
        line = np.stack([row >> 8, row[::-1] >> 8, row >> 9], axis=-1).astype(np.uint8)
        image = Image.fromarray(np.broadcast_to(line, (height, width, 3)).copy())
    else:
        image = Image.fromarray(np.broadcast_to(row, (height, width)).copy())  # I;16
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=9)
    return buffer.getvalue()


def status_of(port: int, body: bytes, timeout: float = 60.0) -> tuple[int, float]:
    """One /predict on a fresh connection: (status, seconds); status 0 when none came."""
    began = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/predict", body, {"content-type": "image/png"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, time.perf_counter() - began
    except (OSError, http.client.HTTPException):
        return 0, time.perf_counter() - began
    finally:
        connection.close()


def vm(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise KeyError(key)


def idle_connections(port: int, genuine: bytes, count: int = IDLE) -> dict[str, Any]:
    """`count` connections that never send a byte, then genuine requests beside them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 256:  # this process holds the client ends
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 256), hard))
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        timings = [status_of(port, genuine, timeout=10) for _ in range(5)]
        # Wait (bounded) for the predictor to close the connections that sent no head.
        began = time.monotonic()
        closed: set[int] = set()
        while len(closed) < count and time.monotonic() - began < 20:
            ready, _, _ = select.select([s for s in held if s.fileno() not in closed], [], [], 1)
            for sock in ready:
                with_data = sock.recv(4096)
                if not with_data or with_data.startswith(b"HTTP/1.1 408"):
                    closed.add(sock.fileno())
        return {
            "idle": count,
            "genuine_statuses": sorted({s for s, _ in timings}),
            "genuine_max_s": round(max(t for _, t in timings), 3),
            "closed_by_server": len(closed),
            "closed_within_s": round(time.monotonic() - began, 1),
        }
    finally:
        for sock in held:
            sock.close()


def concurrent_worst(port: int, pid: int, body: bytes, count: int = CONCURRENT) -> dict[str, Any]:
    """`count` clients each sending a worst-case image at once; peak RSS over idle RSS."""
    idle = vm(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM restarts from the current RSS
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    start = threading.Barrier(count)

    def client() -> None:
        start.wait()
        outcome = status_of(port, body, timeout=120)
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    peak = vm(pid, "VmHWM")
    statuses: dict[str, int] = {}
    for status, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "clients": count,
        "statuses": statuses,
        "slowest_s": round(max(t for _, t in results), 2),
        "idle_rss_mb": idle,
        "peak_rss_mb": peak,
        "ratio": round(peak / idle, 2),
    }


def measure(port: int, pid: int, genuine: bytes) -> dict[str, Any]:
    worst = {"16-bit grey": worst_png(), "8-bit RGB": worst_png(rgb=True)}
    return {
        "idle_connections": idle_connections(port, genuine),
        "worst_png_bytes": {kind: len(body) for kind, body in worst.items()},
        "concurrent_worst": {
            kind: concurrent_worst(port, pid, body) for kind, body in worst.items()
        },
    }


def rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The section's lines for a report table: (figure, value, target)."""
    idle = figures["idle_connections"]
    lines = [
        (
            f"{idle['idle']} idle connections: genuine /predict, slowest of 5 (s)",
            f"{idle['genuine_max_s']} (status {idle['genuine_statuses']})",
            "<= 1",
        ),
        (
            "idle connections closed by the predictor (head timeout)",
            f"{idle['closed_by_server']} of {idle['idle']} within {idle['closed_within_s']} s",
            "all",
        ),
    ]
    for kind, worst in figures["concurrent_worst"].items():
        side = "x".join(str(n) for n in WORST_SIDE)
        lines += [
            (
                f"{worst['clients']} concurrent {kind} {side} PNGs "
                f"({figures['worst_png_bytes'][kind]} bytes): answers",
                ", ".join(f"{k}: {v}" for k, v in sorted(worst["statuses"].items()))
                + f"; slowest {worst['slowest_s']} s",
                "200 or 503",
            ),
            (
                "  peak RSS / idle RSS (MB)",
                f"{worst['peak_rss_mb']} / {worst['idle_rss_mb']} = {worst['ratio']}x",
                "< 1.5x",
            ),
        ]
    return lines


def low_open_files() -> None:
    """A soft open-files limit of 512 in the predictor (under the 1,000 idle connections):
    the figures then show the predictor raising its own limit, as a unit without
    LimitNOFILE needs."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))


def main() -> int:
    from benchmarks.bench_predictor import free_port, models

    tmp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    try:
        from core.config import load_config
        from pipeline.models import registry

        device, made, images = models(tmp)
        config = load_config(device / "edgehook.toml", {}, cwd=device)
        registry.install(config.models_dir, made[0], "model-0", activate=True)
        port = free_port()
        with (tmp / "predictor.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "edgehook", "--config", str(device / "edgehook.toml"),
                 "predictor", "--port", str(port)],
                cwd=device, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=low_open_files,
            )  # fmt: skip
            try:
                deadline = time.monotonic() + 120
                while status_of(port, images[0], timeout=10)[0] != 200:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit((tmp / "predictor.log").read_text())
                    time.sleep(0.2)
                figures = measure(port, process.pid, images[0])
            finally:
                process.terminate()
                process.wait(timeout=30)
        print(json.dumps(figures, indent=2))
        for figure, value, target in rows(figures):
            print(f"| {figure} | {value} | {target} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
