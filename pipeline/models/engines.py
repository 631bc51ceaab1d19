"""The engines a model can run under on this device, and the choice between them by
measuring: torch's int8 model on the CPU (always), onnxruntime running the model's int8
QDQ export (when onnxruntime is installed), and the float model in fp16 or fp32 on CUDA
(a Jetson's GPU: the int8 kernels are CPU-only in torch's eager API).

Every engine takes images as float (N, C, H, W) in [0, 1] and answers probabilities
(N, classes): normalisation is inside, so a swap of engines changes nothing for callers.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import JobError
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import load_for_finetune, load_int8, read_metadata
from pipeline.models.prepared import Plan, tensorrt_absent

ENGINES = ("torch-int8", "onnxruntime", "cuda-fp16", "cuda-fp32")


@dataclass
class Engine:
    name: str
    run: Callable[[np.ndarray], np.ndarray]  # float (N, C, H, W) in [0, 1] -> probabilities


def torch_int8(directory: Path) -> tuple[Engine, ModelMeta]:
    """The int8 model as `edgehook infer` and the inference check run it."""
    import threading

    # inference imports torch: only when torch's engine is built.
    from pipeline.models.inference import predict

    model, meta = load_int8(directory)
    # Quantized modules share packed weights; torch does not promise they are safe to run
    # from two threads at once, so calls take turns (each already uses every core).
    lock = threading.Lock()

    def run(images: np.ndarray) -> np.ndarray:
        with lock:
            return predict(model, images, meta.normalisation)

    return Engine("torch-int8", run), meta


def onnxruntime_engine(directory: Path, data: bytes | None = None) -> Engine:
    """The model's QDQ export (pipeline/models/onnxexport.py, or `data`: a prepared export)
    under onnxruntime's CPU provider; JobError when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise JobError("onnxruntime is not installed (pip install 'edgehook[onnx]')") from exc
    if data is None:
        # onnxexport imports torch: only when no prepared export is given.
        from pipeline.models.onnxexport import to_onnx_bytes

        data, _ = to_onnx_bytes(directory)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initialisers are not ours to show
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {name: images.astype(np.float32)})[0])

    return Engine("onnxruntime", run)


def float_engine(directory: Path, device: str, half: bool) -> Engine:
    """The float model (dequantized int8 weights, every fake quantizer removed) on `device`:
    what a GPU runs fastest. JobError when CUDA is asked for and absent."""
    import torch
    from torch import nn
    from torch.ao.quantization import FakeQuantizeBase

    # pipeline.nn imports torch: only when the float engine is built.
    from pipeline.nn.model import normalise

    if device == "cuda" and not torch.cuda.is_available():
        raise JobError("CUDA is not available on this device")
    qat, meta, _ = load_for_finetune(directory)
    for name, module in list(qat.named_modules()):
        if isinstance(module, FakeQuantizeBase):
            qat.set_submodule(name, nn.Identity())
    dtype = torch.float16 if half else torch.float32
    model = qat.to(device, dtype).eval()

    def run(images: np.ndarray) -> np.ndarray:
        x = normalise(images.astype(np.float32), meta.normalisation).to(device, dtype)
        with torch.inference_mode():
            logits = model(x).float()
        return torch.softmax(logits, dim=1).cpu().numpy()

    precision = "fp16" if half else "fp32"
    return Engine(f"cuda-{precision}" if device == "cuda" else f"cpu-{precision}", run)


def _build(name: str, directory: Path, onnx: bytes | None = None) -> Engine:
    if name == "onnxruntime":
        return onnxruntime_engine(directory, onnx)
    return float_engine(directory, "cuda", half=name == "cuda-fp16")


def batch1_ms(engine: Engine, sample: np.ndarray, repeats: int = 20) -> float:
    """Median milliseconds for one image, after two warm-up calls."""
    for _ in range(2):
        engine.run(sample)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run(sample)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


@dataclass(frozen=True)
class Choice:
    engine: Engine
    meta: ModelMeta
    measured_ms: dict[str, float]  # batch-1 milliseconds of every engine that ran
    skipped: dict[str, str]  # engines this device could not run, and why
    probe_top1: tuple[int, ...] = ()  # the int8 model's answers on the probe batch


def probe_batch(meta: ModelMeta) -> np.ndarray:
    """The probe every engine is checked on: 8 images of noise, the same every time."""
    spec = meta.spec
    shape = (spec["in_channels"], spec["height"], spec["width"])
    return np.random.default_rng(0).random((8, *shape), dtype=np.float32)


def choose(
    directory: Path,
    wanted: str = "auto",
    log: Callable[[str], None] = print,
    onnx: bytes | None = None,
) -> Choice:
    """Load the model under every engine this device has (or only `wanted`) and keep the
    fastest at batch 1. torch's int8 model always loads first: it is the reference the
    others are checked against (same top-1 answer on a probe batch, or they are skipped).
    `onnx`: the model's export, when the caller made it already."""
    reference, meta = torch_int8(directory)
    probe = probe_batch(meta)
    expected = reference.run(probe).argmax(1)
    candidates: dict[str, Engine] = {}
    if wanted in ("auto", "torch-int8"):
        candidates["torch-int8"] = reference
    skipped: dict[str, str] = {}
    for name in ENGINES[1:]:
        if wanted not in ("auto", name):
            continue
        try:
            engine = _build(name, directory, onnx)
            agree = float((engine.run(probe).argmax(1) == expected).mean())
        except (JobError, ImportError, RuntimeError, ValueError) as exc:
            skipped[name] = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            continue
        if agree < 0.75:  # a probe of noise: an engine that disagrees this much is broken
            skipped[name] = f"agrees with the int8 model on {agree:.0%} of a probe batch"
            continue
        candidates[name] = engine
    if not candidates:
        raise JobError(f"engine {wanted} cannot run here: {skipped.get(wanted, 'unknown')}")
    measured = {name: round(batch1_ms(e, probe[:1]), 3) for name, e in candidates.items()}
    best = min(measured, key=measured.__getitem__)
    log(
        f"engine {best} ("
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in measured.items())
        + " at batch 1)"
    )
    top1 = tuple(int(i) for i in expected)
    return Choice(candidates[best], meta, measured, skipped, top1)


def choose_prepared(
    directory: Path, plan: Plan, wanted: str = "auto", log: Callable[[str], None] = print
) -> Choice:
    """The fastest engine a verified plan (pipeline/models/prepared.py) measured. torch is
    imported only when that engine is one of torch's; onnxruntime runs the plan's ONNX file
    after agreeing again with the int8 model's recorded answers on the probe batch."""
    best = plan.fastest(wanted)
    if best != "onnxruntime" or plan.onnx is None:
        return choose(directory, best or wanted, log)
    meta = read_metadata(directory)
    engine = onnxruntime_engine(directory, plan.onnx.read_bytes())
    agree = float((engine.run(probe_batch(meta)).argmax(1) == np.array(plan.probe_top1)).mean())
    if len(plan.probe_top1) != len(probe_batch(meta)) or agree < 0.75:
        raise JobError(f"the prepared ONNX agrees with the int8 model on {agree:.0%} of the probe")
    log(
        "engine onnxruntime, prepared ("
        + ", ".join(f"{name} {ms:.2f} ms" for name, ms in plan.measured_ms.items())
        + " at batch 1)"
    )
    return Choice(engine, meta, plan.measured_ms, plan.skipped, plan.probe_top1)


def device_engines() -> tuple[list[str], dict[str, str]]:
    """The engines this device can run, and why not the others (`edgehook doctor`): found
    from the installed packages and, when torch is there, CUDA."""
    can: list[str] = []
    cannot: dict[str, str] = {}
    if importlib.util.find_spec("torch") is None:
        cannot["torch-int8"] = "torch is not installed"
        cuda = False
    else:
        # torch only here, for a command (doctor), never in the predictor's process.
        import torch

        can.append("torch-int8")
        cuda = torch.cuda.is_available()
    if importlib.util.find_spec("onnxruntime") is None:
        cannot["onnxruntime"] = "onnxruntime is not installed"
    else:
        can.append("onnxruntime")
    for name in ("cuda-fp16", "cuda-fp32"):
        if cuda:
            can.append(name)
        else:
            cannot[name] = "no CUDA device"
    # The predictor has no TensorRT engine yet (docs/tensorrt.md); say what is missing.
    cannot["tensorrt"] = tensorrt_absent() or "the predictor has no TensorRT engine yet"
    return can, cannot
