"""`edgehook predictor`: the active model over HTTP for the device's applications, on
loopback (127.0.0.1:8091) and never what the tunnel exposes.

  POST /predict?top_k=N   an image body (image/png, image/jpeg, netpbm), or JSON
                          {"images": [base64, ...]}  -> 200 predictions
  GET  /healthz           the model serving, its engine and since when
  GET  /metrics           Prometheus text: requests by status, latency, swaps, load failures

Bad input is answered 400 (not an image, bad base64, bad top_k), 413 (too large, too many
images) or 415 (another content type), with {"error", "detail"}; never 500. The model
follows promotions (pipeline/models/serving.py); until one is active, /predict answers 503.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import datetime, timezone
from typing import Any

import numpy as np
import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core import bounded
from core.errors import Rejection
from core.sections import PredictorConfig
from pipeline.models.decoding import Decoders, PixelBudget
from pipeline.models.serving import ActiveModel, Loaded, rank
from pipeline.nn.images import decode, pixels_in

log = structlog.get_logger("edgehook.predictor")
# The body types /predict takes, and the one Pillow format each may hold.
IMAGE_TYPES: dict[str, tuple[str, ...]] = {
    "image/png": ("PNG",),
    "image/jpeg": ("JPEG",),
    "image/x-portable-anymap": ("PPM",),
    "image/x-portable-bitmap": ("PPM",),
    "image/x-portable-graymap": ("PPM",),
    "image/x-portable-pixmap": ("PPM",),
}
BATCH_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "PPM")
MAX_TOP_K = 100
MAX_JSON_DEPTH = 8  # {"images": [...]} is two levels
BATCH_PIXELS = 2  # a batch's images together: at most this many times max_pixels
BODY_TIMEOUT_S = 30.0  # a body still arriving after this is 408
# The connection table below the app (receiver/protocol.py): a head must arrive within
# HEAD_TIMEOUT_S; idle keep-alive connections close after KEEP_ALIVE_S and are the first
# evicted when MAX_CONNECTIONS are open.
HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5
MAX_HEAD_BYTES = 16384
MAX_CONNECTIONS = 4096


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "edgehook_predictor_requests",
            "requests by path and status",
            ["path", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgehook_predictor_request_seconds",
            "time from request to answer, /predict only",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.images = Counter(
            "edgehook_predictor_images", "images classified", registry=self.registry
        )
        self.swaps = Counter(
            "edgehook_predictor_model_swaps",
            "models loaded and swapped in",
            registry=self.registry,
        )
        self.load_failures = Counter(
            "edgehook_predictor_model_load_failures",
            "active models refused (unsigned, untrusted, tampered, unloadable)",
            registry=self.registry,
        )
        self.failures = Counter(
            "edgehook_predictor_failures",
            "errors inside the app or the model follower, by where",
            ["where"],
            registry=self.registry,
        )

    def report(self, kind: str, **_fields: Any) -> None:
        if kind == "model_refused":
            self.load_failures.inc()
        elif kind == "follow_failed":
            self.failures.labels("follower").inc()
        elif kind in ("model_loaded", "model_swapped"):
            self.swaps.inc()


def _error(status: int, error: str, detail: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _top_k(request: Request) -> int:
    text = request.query_params.get("top_k", "5")
    # ASCII digits only: str.isdigit accepts '²' and Arabic-Indic digits, which int() refuses
    # or reads as another number.
    if (
        not (text.isascii() and text.isdigit() and len(text) <= 3)
        or not 1 <= int(text) <= MAX_TOP_K
    ):
        raise Rejection(400, "bad_top_k", f"top_k must be a whole number from 1 to {MAX_TOP_K}")
    return int(text)


async def _body(request: Request, limit: int) -> bytes:
    try:
        return await asyncio.wait_for(_read_body(request, limit), BODY_TIMEOUT_S)
    except asyncio.TimeoutError as exc:
        raise Rejection(
            408, "body_timeout", f"the body did not arrive in {BODY_TIMEOUT_S:g} s"
        ) from exc


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, "too_large", f"the body is over {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "too_large", f"the body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _batch(body: bytes, config: PredictorConfig) -> list[bytes]:
    try:
        data = bounded.loads(body, "the body", MAX_JSON_DEPTH)
    except bounded.Unreadable as exc:
        raise Rejection(400, "bad_json", str(exc)) from exc
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not images:
        raise Rejection(
            400, "bad_json", 'expected {"images": [base64, ...]} with one image or more'
        )
    if len(images) > config.max_batch:
        raise Rejection(413, "too_many_images", f"at most {config.max_batch} images in one batch")
    out = []
    for index, text in enumerate(images):
        if not isinstance(text, str):
            raise Rejection(400, "bad_base64", f"images[{index}] is not a base64 string")
        try:
            # Line breaks are base64's own (MIME, `base64` from coreutils wraps at 76).
            out.append(base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise Rejection(400, "bad_base64", f"images[{index}] is not valid base64") from exc
    return out


def _classify(
    loaded: Loaded,
    blobs: list[bytes],
    formats: tuple[str, ...],
    top_k: int,
    max_pixels: int,
    budget: PixelBudget,
) -> list[list[dict[str, Any]]]:
    channels, size, _ = loaded.shape
    sizes = [pixels_in(blob, formats, max_pixels) for blob in blobs]  # headers only
    if sum(sizes) > BATCH_PIXELS * max_pixels:
        raise Rejection(
            413,
            "too_many_pixels",
            f"the images hold {sum(sizes)} pixels together; at most {BATCH_PIXELS * max_pixels}",
        )
    pixels = []
    with budget.taking(min(max(sizes), max_pixels)):  # a batch decodes one image at a time
        for index, blob in enumerate(blobs):
            try:
                pixels.append(decode(blob, size, channels, formats, max_pixels))
            except ValueError as exc:
                where = f"images[{index}]" if len(blobs) > 1 else "the body"
                kinds = "/".join(formats)
                detail = f"{where} is not a readable {kinds} image: {exc}"
                raise Rejection(400, "not_an_image", detail) from exc
    batch = (np.stack(pixels) / np.float32(255)).astype(np.float32)
    return [
        [{"label": label, "score": score} for label, score in p.top]
        for p in rank(loaded, loaded.engine.run(batch), top_k)
    ]


def build_app(
    active: ActiveModel,
    config: PredictorConfig,
    metrics: Metrics,
    decoders: Decoders | None = None,
) -> Starlette:
    decoding = decoders or Decoders(pixels=config.max_pixels)

    async def predict(request: Request) -> Response:
        top_k = _top_k(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json" and kind not in IMAGE_TYPES:
            raise Rejection(
                415,
                "unsupported_type",
                "send image/png, image/jpeg, a netpbm image, or application/json "
                '{"images": [base64, ...]}',
            )
        body = await _body(request, config.max_body_bytes)
        loaded = active.current
        if loaded is None:
            return _error(503, "no_model", active.refusal or "no model is active yet")
        if kind == "application/json":
            blobs, formats = _batch(body, config), BATCH_FORMATS
        else:
            blobs, formats = [body], IMAGE_TYPES[kind]
        results = await decoding.run(
            _classify, loaded, blobs, formats, top_k, config.max_pixels, decoding.budget
        )
        metrics.images.inc(len(blobs))
        if kind == "application/json":
            return JSONResponse(
                {"model": loaded.name, "results": [{"predictions": r} for r in results]}
            )
        return JSONResponse({"model": loaded.name, "predictions": results[0]})

    async def healthz(_request: Request) -> Response:
        return _health(active)

    async def prometheus(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def refused(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Rejection)
        return _error(exc.status, exc.reason, exc.detail)

    async def disconnected(_request: Request, _exc: Exception) -> Response:
        return Response(status_code=499)

    return Starlette(
        routes=[
            Route("/predict", predict, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", prometheus, methods=["GET"]),
        ],
        exception_handlers={Rejection: refused, ClientDisconnect: disconnected},
    )


def _health(active: ActiveModel) -> Response:
    """/healthz: the model served, its engine and since when; 503 while none is."""
    loaded = active.current
    if loaded is None:
        body = {"model": None, "engine": None, "since": None, "refused": active.refusal}
        return JSONResponse(body, status_code=503)
    since = datetime.fromtimestamp(loaded.since, timezone.utc).isoformat(timespec="seconds")
    return JSONResponse(
        {
            "model": loaded.name,
            "engine": loaded.engine.name,
            "since": since,
            "batch1_ms": loaded.measured_ms,
            "classes": len(loaded.meta.classes),
            "input": list(loaded.shape),
            "signer": loaded.signer,
        }
    )


class Measured:
    """Counts every answer by path and status, and times /predict (pure ASGI). An error the
    app did not answer becomes a 500 here, counted, and reported (logged with its trace
    and audited) once per distinct error, so a request that keeps failing the same way
    cannot flood the log."""

    def __init__(self, app: Any, metrics: Metrics, report: Any = None) -> None:
        self.app = app
        self.metrics = metrics
        self.report = report or (lambda kind, **fields: None)
        self._reported: set[str] = set()

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        started_answer = [False]

        async def sending(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started_answer[0] = True
            await send(message)

        try:
            await self.app(scope, receive, send=sending)
        except Exception as exc:  # Starlette answered 500 already, or nobody did
            self.metrics.failures.labels("app").inc()
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            if error not in self._reported and len(self._reported) < 1000:
                self._reported.add(error)
                log.error("request_failed", error=error, exc_info=True)
                self.report("request_failed", path=scope.get("path", ""), error=error)
            if not started_answer[0]:
                await sending(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"internal"}'})
        finally:
            path = scope.get("path", "")
            known = path if path in ("/predict", "/healthz", "/metrics") else "other"
            self.metrics.requests.labels(known, str(status[0])).inc()
            if known == "/predict":
                self.metrics.latency.observe(time.perf_counter() - started)
