"""The active model for the device's applications, followed across promotions: what
`edgehook predictor` serves and what `load_active()` gives a Python program.

A promotion (the worker's, `edgehook model install`, `rollback`) changes registry.json. The
follower looks at it every `interval_s`; a new active model is loaded beside the one
serving, its signature checked (the trusted keys, as `deploy` checks), its engine chosen by
measuring, its output checked on a probe batch, and only then swapped in with one
assignment: a request holds the model it started with, so none fails or waits for a load.
A model that fails any of it leaves the old one serving, reported once (logged, and
audited by the predictor) until its files change.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from core.config import Config, find_config, load_config
from core.errors import EdgehookError, JobError
from pipeline.models import prepared, registry
from pipeline.models.engines import Choice, Engine, choose, choose_prepared
from pipeline.models.metadata import ModelMeta
from pipeline.models.trust import SigningPolicy
from pipeline.nn.images import FORMATS, decode, fit

log = structlog.get_logger("edgehook.serving")
Report = Callable[..., None]  # (kind, **fields): model_loaded, model_swapped, model_refused


@dataclass(frozen=True)
class Prediction:
    """One image's answer: the best label and its probability, and the `top_k` best."""

    label: str
    score: float
    top: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Loaded:
    name: str
    engine: Engine
    meta: ModelMeta
    signer: str
    since: float  # wall-clock time it started serving
    measured_ms: dict[str, float] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        spec = self.meta.spec
        return spec["in_channels"], spec["height"], spec["width"]


class ActiveModel:
    """The device's active model, loaded and checked, following the registry."""

    def __init__(
        self,
        models_dir: Path,
        policy: SigningPolicy,
        *,
        engine: str = "auto",
        interval_s: float = 0.5,
        report: Report | None = None,
        clock: Callable[[], float] = time.time,
        key_file: Path | None = None,
    ) -> None:
        self.models_dir = models_dir
        # The device's signing key: engines are prepared (and their plan signed) in a child
        # process with it, so this one need not import torch. None: choose in-process.
        self.key_file = key_file
        self.policy = policy
        self.engine = engine
        self.interval_s = interval_s
        self.report = report or (lambda kind, **fields: None)
        self.clock = clock
        self.current: Loaded | None = None
        self._refused: tuple[str, tuple[Any, ...]] | None = None
        self.refusal: str | None = None  # why the last candidate was refused
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()
        self._failing: str | None = None  # the follower's last failure, reported once

    # -- following ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """One look at the registry; loads and swaps in a new active model. True if it did."""
        with self._refresh_lock:
            name = registry.state(self.models_dir).get("active")
            if not isinstance(name, str) or (self.current and self.current.name == name):
                return False
            directory = self.models_dir / name
            stamp = _stamp(directory)
            if self._refused == (name, stamp):
                return False  # reported already; tried again when its files change
            try:
                loaded = self._load(name, directory)
            except Exception as exc:  # any model that does not load is refused, not raised
                self._refused = (name, stamp)
                self.refusal = reason = (
                    str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                )
                serving = self.current.name if self.current else None
                log.warning("model_refused", model=name, reason=reason, serving=serving)
                self.report("model_refused", model=name, reason=reason, serving=serving)
                return False
            previous, self.current = self.current, loaded
            self._refused = None
            kind = "model_swapped" if previous else "model_loaded"
            fields = {
                "model": name,
                "engine": loaded.engine.name,
                "signer": loaded.signer,
                "previous": previous.name if previous else None,
            }
            log.info(kind, **fields)
            self.report(kind, **fields)
            return True

    def _load(self, name: str, directory: Path) -> Loaded:
        signer = self.policy.accept(directory)
        choice = self._choose(name, directory)
        meta = choice.meta
        spec = meta.spec
        probe = np.random.default_rng(1).random(
            (4, spec["in_channels"], spec["height"], spec["width"]), dtype=np.float32
        )
        out = choice.engine.run(probe)
        if out.shape != (4, len(meta.classes)) or not np.isfinite(out).all():
            raise JobError(f"the model answers {out.shape} values, not a probability per class")
        return Loaded(name, choice.engine, meta, signer, self.clock(), choice.measured_ms)

    def _choose(self, name: str, directory: Path) -> Choice:
        """The engine, from the model's signed plan (made in a child first if there is none)
        where the device key is at hand and an engine other than torch's may be wanted."""
        say: Callable[[str], None] = lambda line: log.info("engine", detail=line)  # noqa: E731
        if self.key_file is None or self.engine == "torch-int8":
            return choose(directory, self.engine, log=say)
        trusted = self.policy.trusted_keys
        try:
            plan = prepared.load(directory, trusted)
        except JobError:
            try:
                prepared.prepare(directory, self.key_file)
                plan = prepared.load(directory, trusted)
            except (JobError, OSError, subprocess.TimeoutExpired) as exc:
                log.warning("engines_not_prepared", model=name, reason=str(exc)[:300])
                return choose(directory, self.engine, log=say)
        return choose_prepared(directory, plan, self.engine, log=say)

    def start(self) -> ActiveModel:
        """Follow the registry in a background thread (stopped by close())."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._follow, name="edgehook-follow", daemon=True
            )
            self._thread.start()
        return self

    def _follow(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.refresh()
                self._failing = None
            except Exception as exc:  # the follower must outlive any one bad look at the registry
                # Reported (logged with its trace, and audited) once while it keeps failing
                # the same way: out of descriptors, it would otherwise log every interval.
                first = str(exc).splitlines()[0][:300] if str(exc) else ""
                error = f"{type(exc).__name__}: {first}"
                if error != self._failing:
                    self._failing = error
                    log.error("follow_failed", error=error, exc_info=True)
                    self.report("follow_failed", error=error)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> ActiveModel:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- predicting -----------------------------------------------------------------------

    def model(self) -> Loaded:
        loaded = self.current
        if loaded is None:
            raise EdgehookError(
                f"no active model in {self.models_dir}: train one (edgehook train), or "
                "install one (edgehook model install DIR)"
            )
        return loaded

    def predict(self, images: Sequence[Any], top_k: int = 5) -> list[Prediction]:
        """One Prediction per image: encoded bytes (PNG, JPEG, netpbm, BMP), a path, a PIL
        image, or a uint8 array (H, W), (H, W, C) or (C, H, W). Fitted to the model's input
        as training fitted its images."""
        loaded = self.model()
        batch = np.stack([self._pixels(image, loaded) for image in images]) / np.float32(255)
        return rank(loaded, loaded.engine.run(batch.astype(np.float32)), top_k)

    @staticmethod
    def _pixels(image: Any, loaded: Loaded) -> np.ndarray:
        channels, size, _ = loaded.shape
        if isinstance(image, (str, os.PathLike)):
            image = Path(image).read_bytes()
        if isinstance(image, (bytes, bytearray, memoryview)):
            return decode(bytes(image), size, channels, FORMATS)
        if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] in (1, 3, 4):
            image = image.transpose(2, 0, 1)[:3] if image.shape[0] not in (1, 3) else image
        return fit(image, size, channels)


def rank(loaded: Loaded, probabilities: np.ndarray, top_k: int) -> list[Prediction]:
    classes = loaded.meta.classes
    out = []
    for row in probabilities:
        best = np.argsort(row)[::-1][: max(1, top_k)]
        top = tuple((classes[i], round(float(row[i]), 6)) for i in best)
        out.append(Prediction(top[0][0], top[0][1], top))
    return out


def _stamp(directory: Path) -> tuple[Any, ...]:
    """What changes when a model's files do: their names, sizes and modification times."""
    try:
        return tuple(
            sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir())
        )
    except OSError:
        return ()


def load_active(
    config: Any = None, *, follow: bool = True, engine: str | None = None
) -> ActiveModel:
    """The device's active model for in-process use, following promotions when `follow`.

    `config`: a loaded core.config.Config, a config file's path, or None for edgehook's own
    lookup ($EDGEHOOK_CONFIG, ./edgehook.toml, the embedded defaults). Raises EdgehookError
    when no model is active or the active one does not verify.

        with load_active() as model:
            for p in model.predict([Path("door.jpg")]):
                print(p.label, p.score)
    """
    if not isinstance(config, Config):
        cwd = Path.cwd()
        explicit = None if config is None else str(config)
        config = load_config(find_config(explicit, os.environ, cwd), os.environ, cwd=cwd)
    active = ActiveModel(
        config.models_dir,
        SigningPolicy.from_config(config),
        engine=engine or config.predictor.engine,
        interval_s=config.predictor.follow_interval_s,
        key_file=config.secrets.model_signing_key_file,
    )
    active.refresh()
    if active.current is None:
        why = f": {active.refusal}" if active.refusal else ""
        raise EdgehookError(f"no usable active model in {config.models_dir}{why}")
    return active.start() if follow else active
