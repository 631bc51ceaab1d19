"""An idle worker on PostgreSQL wakes on the store's NOTIFY (core.pgstore's trigger on a job
becoming queued) instead of waiting out its poll interval.

A thread holds a dedicated connection (LISTEN needs one connection for its whole life, not a
pooled one) and writes a byte to a pipe whenever a notification arrives; the worker's loop
has that pipe in its selector (sandbox.OutputPump), so it stays single-threaded. If the
connection drops, the thread reconnects with a back-off; meanwhile the worker's poll_s
polling still finds every job, just later. Imported only for a PostgreSQL store.
"""

from __future__ import annotations

import contextlib
import os
import threading

import psycopg
import structlog

from core.pgstore import CHANNEL

log = structlog.get_logger("edgehook.worker")
LISTEN_CHECK_S = 0.5  # how often the thread looks at its stop flag while nothing arrives
RECONNECT_MAX_S = 5.0


class JobListener:
    """LISTEN on the jobs channel; `fileno()` becomes readable when a job was queued."""

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        self._url = url
        self._connect_timeout = max(1, round(connect_timeout_s))
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)
        self._stop = threading.Event()
        self.listening = threading.Event()  # set while the LISTEN connection is up
        self._thread = threading.Thread(target=self._run, name="edgehook-listen", daemon=True)

    def start(self) -> JobListener:
        self._thread.start()
        return self

    def fileno(self) -> int:
        return self._read

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=LISTEN_CHECK_S * 4)
        os.close(self._read)
        os.close(self._write)

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # a full pipe: the loop is awake already
            os.write(self._write, b"!")

    def _run(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url, autocommit=True, connect_timeout=self._connect_timeout
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    delay = 0.1
                    self._wake()  # a job queued while we were not listening: look now
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=LISTEN_CHECK_S):
                            self._wake()
            except psycopg.Error as exc:
                # the class, not the text: a driver message can quote the connection string
                log.warning("worker_listen_lost", error=type(exc).__name__, retry_in_s=delay)
            finally:
                self.listening.clear()
            self._stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)
