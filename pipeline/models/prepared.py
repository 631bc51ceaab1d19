"""Engines prepared off the serving path, so the predictor can serve without torch.

Exporting a model to ONNX and timing torch's engines needs torch (about 700 MB of RSS on
import). So a child process (`python -m pipeline.models.prepared DIR --key KEY`, started by
the predictor's follower before a swap, or by an install step) does it once per model: it
exports the int8 QDQ ONNX, checks onnxruntime against the int8 model on the probe batch,
measures every engine this device has at batch 1, and writes a plan beside the models:

    MODELS/.engines/<model digest>/model.onnx   the QDQ export onnxruntime runs
    MODELS/.engines/<model digest>/plan.json    digests, measured ms, skipped, probe answers
    MODELS/.engines/<model digest>/plan.json.sig

The plan is signed with the device's key and names the model's weights and metadata
digests and the ONNX file's digest, so a swapped ONNX file (or a plan for another model)
is refused. The predictor reads the plan, keeps the fastest engine, and imports torch only
when that engine is one of torch's. No torch is imported by this module itself.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import bounded
from core.errors import JobError
from pipeline.models import signing
from pipeline.models.modelfile import METADATA, WEIGHTS, read_metadata, sha256

CACHE = ".engines"
ONNX = "model.onnx"
PLAN = "plan.json"
VERSION = 1
MAX_PLAN_BYTES = 1 << 20
MIN_AGREEMENT = 0.75  # the probe is noise: an engine that disagrees this much is broken
BUILD_TIMEOUT_S = 900.0  # torch's import, one export, a few timings; a Jetson is slow


def model_digest(directory: Path) -> str:
    """One digest for a model: its weights' and its metadata's (what its signature covers)."""
    parts = f"{sha256(directory / WEIGHTS)}\n{sha256(directory / METADATA)}\n"
    return hashlib.sha256(parts.encode()).hexdigest()


def cache_dir(directory: Path) -> Path:
    return directory.parent / CACHE / model_digest(directory)


def tensorrt_key(digest: str, tensorrt_version: str, gpu_name: str) -> str:
    """The file name of a TensorRT engine built for this model on this TensorRT and GPU: an
    engine is only valid for the exact TensorRT and GPU it was built with."""
    gpu = "".join(c if c.isalnum() or c in "-." else "_" for c in gpu_name.strip())[:64]
    version = "".join(c if c.isalnum() or c in "-." else "_" for c in tensorrt_version)[:32]
    return f"{digest[:32]}-trt{version}-{gpu or 'gpu'}.engine"


@dataclass(frozen=True)
class Plan:
    digest: str
    measured_ms: dict[str, float]  # batch-1 milliseconds of every engine that ran
    skipped: dict[str, str]  # engines this device could not run, and why
    probe_top1: tuple[int, ...]  # the int8 model's answers on the probe batch
    onnx: Path | None  # the verified ONNX file, when onnxruntime ran

    def fastest(self, wanted: str = "auto") -> str | None:
        allowed = {n: ms for n, ms in self.measured_ms.items() if wanted in ("auto", n)}
        return min(allowed, key=allowed.__getitem__) if allowed else None


def load(directory: Path, trusted: Iterable[str]) -> Plan:
    """The verified plan for the model in `directory`; JobError when there is none, or it is
    not signed by a trusted key, or it names other files than these."""
    where = cache_dir(directory)
    path = where / PLAN
    if not path.is_file():
        raise JobError(f"no prepared engines for {directory.name}")
    signing.verify_file(path, trusted)
    try:
        record = bounded.read_json(path, MAX_PLAN_BYTES, inside=where)
    except bounded.Unreadable as exc:
        raise JobError(f"refusing the engine plan: {exc}") from exc
    if not isinstance(record, dict) or record.get("version") != VERSION:
        raise JobError("the engine plan is not one this edgehook reads")
    if record.get("weights_sha256") != sha256(directory / WEIGHTS) or record.get(
        "metadata_sha256"
    ) != sha256(directory / METADATA):
        raise JobError(f"the engine plan was made for another model than {directory.name}")
    onnx: Path | None = None
    if record.get("onnx_sha256"):
        onnx = where / ONNX
        if not onnx.is_file() or sha256(onnx) != record["onnx_sha256"]:
            raise JobError(f"{ONNX} does not match the digest its signed plan holds")
    try:
        measured = {str(k): float(v) for k, v in record["measured_ms"].items()}
        skipped = {str(k): str(v) for k, v in record["skipped"].items()}
        top1 = tuple(int(v) for v in record["probe_top1"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise JobError("the engine plan is malformed") from exc
    if "onnxruntime" in measured and onnx is None:
        raise JobError("the engine plan measures onnxruntime but names no ONNX file")
    return Plan(model_digest(directory), measured, skipped, top1, onnx)


def build(directory: Path, key_file: Path) -> Plan:
    """Export, check and measure (this process imports torch), then write and sign the plan."""
    # torch (through engines.choose and onnxexport) only here, in the preparing process.
    from pipeline.models.engines import choose
    from pipeline.models.onnxexport import to_onnx_bytes

    read_metadata(directory)
    key = signing.load_private(key_file)
    where = cache_dir(directory)
    where.mkdir(parents=True, exist_ok=True, mode=0o700)
    data: bytes | None
    try:
        data, _ = to_onnx_bytes(directory)
    except JobError:
        data = None
    choice = choose(directory, "auto", log=lambda _line: None, onnx=data)
    skipped = dict(choice.skipped)
    skipped["tensorrt"] = tensorrt_absent() or "the predictor has no TensorRT engine yet"
    keep_onnx = data is not None and "onnxruntime" in choice.measured_ms
    record: dict[str, Any] = {
        "version": VERSION,
        "model": directory.name,
        "weights_sha256": sha256(directory / WEIGHTS),
        "metadata_sha256": sha256(directory / METADATA),
        "onnx_sha256": hashlib.sha256(data).hexdigest() if keep_onnx and data else None,
        "measured_ms": choice.measured_ms,
        "skipped": skipped,
        "probe_top1": list(choice.probe_top1),
        "built_at": time.time(),
    }
    if keep_onnx and data is not None:
        _atomic(where / ONNX, data)
    _atomic(where / PLAN, json.dumps(record, indent=2).encode())
    signing.sign_file(where / PLAN, key)
    return load(directory, [signing.public_text(key.public_key())])


def prepare(directory: Path, key_file: Path, timeout_s: float = BUILD_TIMEOUT_S) -> None:
    """Build the plan in a child process (torch is loaded there and freed with it)."""
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.models.prepared", str(directory), "--key", str(key_file)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise JobError(f"preparing the engines failed: {last}")


def tensorrt_absent() -> str | None:
    """Why this device cannot run TensorRT, or None when the tensorrt package is installed
    (found without importing it: importing it loads CUDA's libraries)."""
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed (the tensorrt package; JetPack ships it)"
    return None


def _atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--key", type=Path, required=True, help="the device's signing key")
    args = parser.parse_args(argv)
    try:
        plan = build(args.directory, args.key)
    except JobError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"measured_ms": plan.measured_ms, "skipped": plan.skipped}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
