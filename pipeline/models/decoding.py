"""How many images the predictor decodes at once: a cap on concurrent decodes (a short
queue, then 503) and a budget of decoded pixels across them, so a flood of worst-case
images holds memory near one such image rather than one per thread."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from core.errors import Rejection

# Decodes at once, and how many requests may wait for one before the answer is 503 (a
# client retries; memory stays bounded).
DECODERS = max(2, min(8, os.cpu_count() or 2))
MAX_WAITING = 256


class PixelBudget:
    """Decoded pixels held at once across the decoding threads: a decode waits while the
    others hold the budget (an image of the largest size allowed decodes alone), so memory
    stays near one worst-case image however many threads decode."""

    def __init__(self, pixels: int) -> None:
        self.pixels = pixels
        self.in_use = 0
        self._changed = threading.Condition()

    @contextlib.contextmanager
    def taking(self, pixels: int) -> Iterator[None]:
        with self._changed:
            while self.in_use and self.in_use + pixels > self.pixels:
                self._changed.wait()
            self.in_use += pixels
        try:
            yield
        finally:
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()


class Decoders:
    """At most DECODERS requests decode and run at once, their decoded pixels within
    `pixels` together (PixelBudget); up to MAX_WAITING more wait their turn, anything beyond
    is answered 503 at once."""

    def __init__(
        self, decoders: int = DECODERS, waiting: int = MAX_WAITING, pixels: int = 10_000_000
    ) -> None:
        self.limiter = anyio.CapacityLimiter(decoders)
        self.max_waiting = waiting
        self.waiting = 0
        self.budget = PixelBudget(pixels)

    async def run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.limiter.borrowed_tokens >= self.limiter.total_tokens and (
            self.waiting >= self.max_waiting
        ):
            raise Rejection(503, "busy", "too many images are being classified; retry")
        self.waiting += 1
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
        finally:
            self.waiting -= 1
