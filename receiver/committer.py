"""Group commit: one writer thread turns concurrent deliveries into few durable transactions.

With synchronous=FULL each transaction costs an fsync (a few ms on eMMC or an SD card). The
event loop hands deliveries to this thread and awaits a future; the thread takes everything
queued, commits it in one transaction, and resolves the futures only after COMMIT returns,
so a 202 is never sent for an event that is not on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import structlog

from core.errors import StoreUnavailable
from core.store import Committed, Connection, Delivery, commit_deliveries, connect, open_store

log = structlog.get_logger("edgehook.committer")
_Item = tuple[Delivery, asyncio.Future[Committed], asyncio.AbstractEventLoop]
_STOP = None


class Committer:
    def __init__(
        self,
        path: Path | str,
        duplicate_window_s: float,
        *,
        max_batch: int = 512,
        busy_timeout_s: float = 2.0,
        connect_fn: Callable[[Path | str], Connection] | None = None,
    ) -> None:
        self._path = path
        self._window = duplicate_window_s
        self._max_batch = max_batch
        self._connect = connect_fn or (lambda p: _connect(p, busy_timeout_s))
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgehook-committer", daemon=True)
        self._conn: Connection | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    async def commit(self, delivery: Delivery) -> Committed:
        """Committed (new or duplicate) once durable; raises StoreUnavailable otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Committed] = loop.create_future()
        self._queue.put((delivery, future, loop))
        return await asyncio.shield(future)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)
        if self._conn is not None:
            self._conn.close()

    def _commit(self, batch: list[_Item]) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect(self._path)
            results: list[Committed] | BaseException = commit_deliveries(
                self._conn, [item[0] for item in batch], self._window
            )
        except (sqlite3.Error, OSError, StoreUnavailable) as exc:
            log.warning("store_commit_failed", error=str(exc), batch=len(batch))
            self._drop_connection()
            results = StoreUnavailable(str(exc))
        for index, (_, future, loop) in enumerate(batch):
            outcome = results if isinstance(results, BaseException) else results[index]
            loop.call_soon_threadsafe(_resolve, future, outcome)

    def _drop_connection(self) -> None:
        # A failed connection may be in a bad state (read-only, disk full): reopen next time.
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error, StoreUnavailable):
                self._conn.close()
            self._conn = None


def _connect(target: Path | str, busy_timeout_s: float) -> Connection:
    # SQLite: a plain connection (the server migrated at start); PostgreSQL: a pool
    if isinstance(target, str):
        return open_store(target, busy_timeout_s=busy_timeout_s)
    return connect(target, busy_timeout_s=busy_timeout_s)


def _resolve(future: asyncio.Future[Committed], outcome: Committed | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
