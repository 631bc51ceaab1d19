"""A model on disk: int8 weights (safetensors) plus metadata (JSON), and nothing else.

A model artifact is input from the internet, and torch.load on a pickle, or loading a
TorchScript archive, runs whatever the file says. So a model directory may hold exactly
model.safetensors and model.json (and, with model signing, its signature); anything else (a
.pt pickle, a TorchScript file, an unknown layout) is refused before a byte is loaded. The
architecture is edgehook's own, rebuilt from validated metadata; the weights file holds the
int8 model's numbers (int8 weights with their scales and zero points, float biases, each
layer's output scale and zero point: pipeline.nn.int8.int8_tensors), about a
quarter of the fp32 model's size. Fine-tuning starts from their dequantized values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import socket
import stat
import time
from pathlib import Path
from typing import Any

from core import bounded
from core.errors import JobError
from pipeline.models.metadata import ModelMeta

WEIGHTS = "model.safetensors"
METADATA = "model.json"
SIGNATURE = "model.sig"
ALLOWED = frozenset({WEIGHTS, METADATA, SIGNATURE})
FORMAT = 3  # 3: any architecture (model.ARCHS); 2 held edgehook's first CNN only
# 1,000 classes' confusion matrix (compact JSON, up to 7 digits a count) fits with room.
MAX_METADATA_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 1 << 30
MAX_SIGNATURE_BYTES = 16 << 10
LIMITS = {WEIGHTS: MAX_WEIGHTS_BYTES, METADATA: MAX_METADATA_BYTES, SIGNATURE: MAX_SIGNATURE_BYTES}


def save(
    directory: Path,
    trained: Any,
    *,
    sources: list[str],
    extra: dict[str, Any] | None = None,
    device: str | None = None,
) -> ModelMeta:
    """Write the model; returns its metadata."""
    # torch (through pipeline.nn) only here: readers of metadata (the console, the
    # predictor serving through onnxruntime, signing) must not load it.
    import torch
    from safetensors.torch import save_file

    # pipeline.nn imports torch: only where the weights are written.
    from pipeline.nn.int8 import int8_tensors

    directory.mkdir(parents=True, exist_ok=True)
    save_file(int8_tensors(trained.int8), str(directory / WEIGHTS))
    extra = dict(extra or {})
    meta = ModelMeta(
        format=FORMAT,
        spec=trained.spec.to_dict(),
        classes=list(trained.classes),
        normalisation=trained.normalisation,
        engine=trained.engine,
        quantization=trained.quantization,
        metrics=trained.metrics,
        train_config=dataclasses.asdict(trained.config),
        sources=sources,
        torch=torch.__version__,
        created_at=time.time(),
        device=device or socket.gethostname(),
        weights_sha256=sha256(directory / WEIGHTS),
        latency=extra.pop("latency", {}),
        job_id=extra.pop("job_id", None),
        dataset_layout=extra.pop("dataset_layout", None),
        origin=extra.pop("origin", None),
        extra=extra,
    )
    (directory / METADATA).write_text(meta.to_json(), encoding="utf-8")
    return meta


def read_metadata(directory: Path) -> ModelMeta:
    """The metadata of a model directory that holds only what edgehook accepts (no torch):
    regular files within their sizes (no FIFO, device, directory or link out of the
    directory), JSON of bounded depth with finite numbers, the weights' digest matching."""
    try:
        info = directory.stat()
    except OSError as exc:
        raise JobError(f"{directory} does not exist or cannot be read") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise JobError(f"{directory} is not a model directory")
    names = {p.name for p in directory.iterdir()}
    unexpected = sorted(names - ALLOWED)
    if unexpected:
        raise JobError(
            f"refusing the model: it holds {', '.join(unexpected)}; edgehook loads "
            f"only {WEIGHTS} and {METADATA} (pickles and TorchScript can run code)"
        )
    if WEIGHTS not in names or METADATA not in names:
        raise JobError(f"refusing the model: it needs {WEIGHTS} and {METADATA}")
    try:
        data = bounded.read_json(directory / METADATA, MAX_METADATA_BYTES, inside=directory)
    except bounded.Unreadable as exc:
        raise JobError(f"refusing the model: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise JobError(f"{METADATA} is not an edgehook model (format {FORMAT})")
    meta = ModelMeta.from_json(data)
    if sha256(directory / WEIGHTS) != meta.weights_sha256:
        raise JobError(f"{WEIGHTS} does not match the digest in {METADATA}")
    return meta


def load_parts(directory: Path) -> tuple[ModelMeta, Any, Any, Any]:
    """Validated metadata, the fresh model it describes, its spec and the weights file's
    tensors (safetensors: no pickle)."""
    # torch (through pipeline.nn) only here: readers of metadata (the console, the
    # predictor serving through onnxruntime, signing) must not load it.
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    # pipeline.nn imports torch: only where the weights are loaded.
    from pipeline.nn.model import ModelSpec, build

    meta = read_metadata(directory)
    spec = ModelSpec.from_dict(meta.spec)
    if len(meta.classes) != spec.num_classes:
        raise JobError("model metadata lists the wrong number of classes")
    norm = meta.normalisation
    if not all(
        isinstance(norm.get(k), list) and len(norm[k]) == spec.in_channels for k in ("mean", "std")
    ):
        raise JobError("model metadata has no usable normalisation")
    try:
        tensors = load_file(str(directory / WEIGHTS))
    except (SafetensorError, OSError) as exc:
        raise JobError(f"{WEIGHTS} is not a safetensors file ({exc})") from exc
    return meta, build(spec), spec, tensors


def load_int8(directory: Path) -> tuple[Any, ModelMeta]:
    """The int8 model, rebuilt from validated metadata with its numbers from the weights
    file, for this machine's quantized engine (a model trained on x86 runs on a Jetson's
    qnnpack and the other way round; the inference check and the deploy smoke test judge)."""
    # torch (through pipeline.nn) only here: readers of metadata (the console, the
    # predictor serving through onnxruntime, signing) must not load it.
    from pipeline.nn.int8 import int8_from_tensors
    from pipeline.nn.quantize import backend

    meta, model, _, tensors = load_parts(directory)
    return int8_from_tensors(model, tensors, backend()), meta


def load_for_finetune(directory: Path) -> tuple[Any, ModelMeta, Any]:
    """A QAT model starting from the saved int8 model's dequantized weights, its metadata
    and its spec."""
    # torch (through pipeline.nn) only here: readers of metadata (the console, the
    # predictor serving through onnxruntime, signing) must not load it.
    from pipeline.nn.int8 import qat_from_tensors
    from pipeline.nn.quantize import backend

    meta, model, spec, tensors = load_parts(directory)
    qat = qat_from_tensors(model, tensors, backend(), meta.engine, meta.quantization)
    return qat, meta, spec


def sha256(path: Path) -> str:
    """A file's digest: a regular file (JobError otherwise); one of a model's files also
    within its size and inside its directory."""
    digest = hashlib.sha256()
    model_file = path.name in LIMITS
    limit = LIMITS.get(path.name, MAX_WEIGHTS_BYTES)
    try:
        for block in bounded.chunks(path, limit, inside=path.parent if model_file else None):
            digest.update(block)
    except bounded.Unreadable as exc:
        raise JobError(f"refusing {'the model' if model_file else path.name}: {exc}") from exc
    return digest.hexdigest()


def copy_model(source: Path, target: Path) -> None:
    """Copy a model's files (only those edgehook accepts, each a regular file within its
    size and inside `source`) into the new directory `target`, then check the copy: it is
    what will be verified and loaded, whatever happens to `source` meanwhile."""
    read_metadata(source)
    target.mkdir(mode=0o700)
    for name in sorted(ALLOWED):
        if not (source / name).exists():
            continue
        try:
            blocks = bounded.chunks(source / name, LIMITS[name], inside=source)
            with (target / name).open("xb") as handle:
                for block in blocks:
                    handle.write(block)
        except bounded.Unreadable as exc:
            raise JobError(f"refusing the model: {exc}") from exc
    read_metadata(target)
