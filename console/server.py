"""`edgehook console`'s process: load what the console needs, index the deliveries in the
background, serve on loopback."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import structlog
import uvicorn

from console.app import Console, build_app
from console.deliveryindex import DeliveryIndex
from core.auditread import Report, verify
from core.config import Config
from core.credentials import load_audit_key, load_console_token
from core.store import open_store

REFRESH_S = 1.0
log = structlog.get_logger("edgehook.console")


def make_console(config: Config, env: Mapping[str, str]) -> Console:
    """Check the secrets and the store first: a bad config fails before the port opens."""
    token = load_console_token(config, env)
    key = load_audit_key(config, env)
    open_store(config.store_path).close()  # created and migrated like every other process
    index = DeliveryIndex(config.data_dir / "console" / "deliveries.db", config.audit_dir)
    return Console(config=config, token=token, audit_key=key, index=index, verifier=verify_apart)


def verify_apart(directory: Path, key: bytes) -> Report:
    """core.auditread.verify in a fresh child process (spawned: this one has threads)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=1, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        return pool.submit(verify, directory, key).result()


def exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """In the verifying child: end when the console does. A console killed (or ending while
    its refresh thread waits on a verify) left this child idle and orphaned for good."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def refresh_in_background(console: Console, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            try:
                console.index.refresh()
                console.chain_reports()  # re-verified when older than a minute
            except Exception:  # a bad segment must not end the indexing for good
                log.exception("background_refresh_failed")
            stop.wait(REFRESH_S)

    thread = threading.Thread(target=run, name="console-refresh", daemon=True)
    thread.start()
    return thread


def serve(console: Console, host: str, port: int) -> int:
    stop = threading.Event()
    refresh_in_background(console, stop)
    log.info("console", url=f"http://{host}:{port}/")
    server = uvicorn.Server(
        uvicorn.Config(
            build_app(console),
            host=host,
            port=port,
            server_header=False,
            access_log=False,
            log_config=None,
            lifespan="off",
            timeout_keep_alive=5,
        )
    )
    try:
        server.run()
    finally:
        stop.set()
        console.index.close()
    return 0
