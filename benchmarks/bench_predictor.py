"""The predictor against calling the same engine in-process, on real digit scans: latency
(p50/p99) and throughput at batch 1, one client and 8 concurrent clients; requests failed
while `edgehook model install` swaps the active model 10 times under load (target 0) and
how long each swap took to serve; the predictor's RSS; then the hostile-load section
(benchmarks/predictor_hostile.py: 1,000 idle connections, 64 worst-case images at once).

    .venv/bin/python benchmarks/bench_predictor.py            # ~1 minute
    .venv/bin/python benchmarks/bench_predictor.py --smoke    # a few seconds of each

HTTP overhead = the predictor's p50 minus the in-process p50 (decode + engine, the same
PNG): what a loopback request adds (target <= 1 ms). Clients keep their connection open,
as an application's HTTP session does.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import predictor_hostile  # noqa: E402
from benchmarks.reporting import arguments, write  # noqa: E402


def png(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def models(tmp: Path) -> tuple[Path, list[Path], list[bytes]]:
    """An initialised edgehook directory, two signed models trained on the real digits, and
    held-out scans as PNGs."""
    from sklearn.datasets import load_digits

    from edgehook.init import run_init
    from pipeline.models import signing
    from pipeline.models.modelfile import save
    from pipeline.training.datasets import read_dataset
    from pipeline.training.train import TrainConfig, train

    run_init(tmp / "device")
    key = signing.load_private(tmp / "device" / "secrets" / "model_signing_key")
    digits = load_digits()
    x = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.random.default_rng(0).permutation(len(x))
    np.savez(tmp / "d.npz", x=x[order[:1400]], y=digits.target[order[:1400]])
    made = []
    for seed in (0, 1):
        trained = train(read_dataset(tmp), TrainConfig(epochs=4, seed=seed), log=lambda _: None)
        save(tmp / f"model-{seed}", trained, sources=["digits"])
        signing.sign(tmp / f"model-{seed}", key)
        made.append(tmp / f"model-{seed}")
    return tmp / "device", made, [png(i) for i in x[order[1400:]]]


def percentiles(ms: list[float]) -> dict[str, float]:
    ordered = sorted(ms)
    return {
        "p50_ms": round(statistics.median(ordered), 3),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
    }


def load(
    call: Callable[[bytes], Any], images: list[bytes], clients: int, seconds: float
) -> dict[str, Any]:
    """`clients` threads calling `call` for `seconds`: latency percentiles, calls/s, failures."""
    stop = threading.Event()
    times: list[list[float]] = [[] for _ in range(clients)]
    failures = [0] * clients

    def client(i: int) -> None:
        k = i
        while not stop.is_set():
            started = time.perf_counter()
            try:
                call(images[k % len(images)])
            except Exception:  # a failed request is what this counts
                failures[i] += 1
            times[i].append((time.perf_counter() - started) * 1000)
            k += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = [t for per in times for t in per]
    return {
        **percentiles(every),
        "per_s": round(len(every) / elapsed, 1),
        "requests": len(every),
        "failed": sum(failures),
    }


class Client:
    """One kept-alive connection per thread, as an application's session holds one."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.local = threading.local()

    def __call__(self, body: bytes) -> str:
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = self.local.connection = http.client.HTTPConnection(
                "127.0.0.1", self.port, timeout=30
            )
        try:
            connection.request("POST", "/predict", body, {"content-type": "image/png"})
            answer = connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException):
            connection.close()
            self.local.connection = None  # a fresh connection for the next request
            raise
        if answer.status != 200:
            raise RuntimeError(f"{answer.status}: {data[:200]!r}")
        return str(json.loads(data)["model"])


def health(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", "/healthz")
    answer: dict[str, Any] = json.loads(connection.getresponse().read())
    connection.close()
    return answer


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return tuple(round(int(fields[k].split()[0]) / 1024, 1) for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def main() -> int:
    args = arguments(__doc__)
    seconds = 1.0 if args.smoke else 5.0
    swaps = 4 if args.smoke else 10

    from core.config import load_config
    from pipeline.models import prepared, registry
    from pipeline.models.serving import load_active

    tmp = Path(tempfile.mkdtemp(prefix="bench-predictor-"))
    try:
        device, made, images = models(tmp)
        config = load_config(device / "edgehook.toml", {}, cwd=device)
        # As an install step does: both models registered and their engines prepared (in a
        # child with torch) before the predictor starts, so it never imports torch itself.
        assert config.secrets.model_signing_key_file is not None
        for n in (1, 0):
            registry.install(config.models_dir, made[n], f"model-{n}", activate=n == 0)
            prepared.prepare(
                config.models_dir / f"model-{n}", config.secrets.model_signing_key_file
            )
        port = int(os.environ.get("BENCH_PREDICTOR_PORT", "0")) or free_port()
        log = (tmp / "predictor.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "edgehook", "--config", str(device / "edgehook.toml"),
             "predictor", "--port", str(port)],
            cwd=device, stdout=log, stderr=subprocess.STDOUT, env={**os.environ,
                                                                    "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        try:
            call = Client(port)
            deadline = time.monotonic() + 60
            while True:
                try:
                    call(images[0])
                    break
                except (OSError, RuntimeError, http.client.HTTPException):
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit((tmp / "predictor.log").read_text()) from None
                    time.sleep(0.1)
            engine = health(port)["engine"]
            local = load_active(config, follow=False, engine=engine)

            def in_process(body: bytes) -> Any:
                return local.predict([body])

            figures: dict[str, Any] = {"engine": engine, "swaps": {}}
            for clients in (1, 8):
                figures[f"in_process_{clients}"] = load(in_process, images, clients, seconds)
                figures[f"http_{clients}"] = load(call, images, clients, seconds)
            figures["overhead_p50_ms"] = round(
                figures["http_1"]["p50_ms"] - figures["in_process_1"]["p50_ms"], 3
            )
            # Swaps under load: 8 clients throughout; each install is followed until the
            # predictor serves the new model.
            answers: list[str] = []
            stop = threading.Event()
            failed = [0]

            def swap_client(i: int) -> None:
                own = Client(port)
                k = i
                while not stop.is_set():
                    try:
                        answers.append(own(images[k % len(images)]))
                    except Exception:  # counted: the figure is "requests failed"
                        failed[0] += 1
                    k += 8

            threads = [threading.Thread(target=swap_client, args=(i,)) for i in range(8)]
            for thread in threads:
                thread.start()
            took = []
            for n in range(swaps):
                target = made[(n + 1) % 2]
                name = f"model-{(n + 1) % 2}"
                began = time.perf_counter()
                registry.install(config.models_dir, target, name, activate=True)
                while health(port)["model"] != name:
                    if time.perf_counter() - began > 30:
                        raise SystemExit(f"swap {n} did not happen in 30 s")
                    time.sleep(0.01)
                took.append((time.perf_counter() - began) * 1000)
                time.sleep(0.3)
            stop.set()
            for thread in threads:
                thread.join()
            figures["swaps"] = {
                "swaps": swaps,
                "requests": len(answers) + failed[0],
                "failed": failed[0],
                "served_by": sorted(set(answers)),
                "install_to_serving_ms": percentiles(took) | {"max_ms": round(max(took), 1)},
            }
            figures["rss_mb"], figures["peak_rss_mb"] = rss_mb(process.pid)
            if not args.smoke:  # about a minute: 1,000 idle sockets, 64 worst-case images
                figures["hostile"] = predictor_hostile.measure(port, process.pid, images[0])
        finally:
            process.terminate()
            process.wait(timeout=20)
            log.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report(figures, args)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(figures: dict[str, Any], args: argparse.Namespace) -> int:
    f = figures
    rows = []
    for clients in (1, 8):
        h, p = f[f"http_{clients}"], f[f"in_process_{clients}"]
        rows.append(
            (
                f"batch 1, {clients} client{'s' if clients > 1 else ''}: p50 / p99 ms (in-process)",
                f"{h['p50_ms']} / {h['p99_ms']} ({p['p50_ms']} / {p['p99_ms']})",
                "",
            )
        )
        rows.append(
            (
                f"batch 1, {clients} client{'s' if clients > 1 else ''}: images/s (in-process)",
                f"{h['per_s']} ({p['per_s']}); failed {h['failed']}",
                "",
            )
        )
    rows.append(("HTTP overhead at p50, 1 client (ms)", f"{f['overhead_p50_ms']}", "<= 1"))
    s = f["swaps"]
    rows.append(
        (
            f"requests failed during {s['swaps']} swaps under 8 clients",
            f"{s['failed']} of {s['requests']}",
            "0",
        )
    )
    t = s["install_to_serving_ms"]
    rows.append(
        (
            "install -> serving the new model, p50 / max (ms)",
            f"{t['p50_ms']} / {t['max_ms']}",
            "<= 2000",
        )
    )
    rows.append(("predictor RSS / peak (MB)", f"{f['rss_mb']} / {f['peak_rss_mb']}", ""))
    if "hostile" in f:
        rows.extend(predictor_hostile.rows(f["hostile"]))
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"# Predictor ({when})\n\nedgehook-cnn on real 8x8 digit scans (PNG), engine "
        f"{f['engine']} (chosen by measuring), loopback, kept-alive connections\n\n"
        "| figure | value | target |\n| --- | ---: | --- |\n"
        + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    )
    return write(args, "predictor", when, figures, text)


if __name__ == "__main__":
    raise SystemExit(main())
