"""Training, read top to bottom: train() runs the phases (phases.py) and converts to int8.

The recipe follows torchvision's classification references: AdamW with weight decay, label
smoothing, a linear warm-up then a cosine learning rate, augmentation (augment.py); fp32
(mixed precision on CUDA) for most epochs, keeping the best epoch by held-out accuracy and
stopping early when it no longer improves or the time budget runs short; then from that
model: batch-norm statistics measured exactly and folded into the convs, activation ranges
calibrated, and quantization-aware epochs (at most the last quarter, at 1% of the peak
learning rate, observers frozen after the first) only while the quantized model trails fp32
on the held-out images; the best of those is converted to int8. With pretrained weights the
head trains alone first. A fine-tune is QAT from the previous model for all its epochs.
One TrainConfig (config.py), built once from the settings and stored with the model.
The loop's parts (batches, steps, evaluation) are in loop.py.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import JobError
from pipeline.nn.model import ModelSpec, build
from pipeline.nn.quantize import backend, prepare_qat, scheme_of, to_int8
from pipeline.training.config import Previous as Previous
from pipeline.training.config import TrainConfig as TrainConfig
from pipeline.training.datasets import Dataset, read_dataset, split
from pipeline.training.loop import per_class
from pipeline.training.phases import FREEZE_SAMPLE as FREEZE_SAMPLE
from pipeline.training.phases import Run, fp32_phase, freeze, qat_phase

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@dataclass
class Trained:
    qat: nn.Module
    int8: nn.Module
    spec: ModelSpec
    classes: tuple[str, ...]
    normalisation: dict[str, list[float]]
    engine: str
    config: TrainConfig
    metrics: dict[str, Any]
    held_out: np.ndarray = field(repr=False)  # up to 256 held-out images in [0, 1], for checks
    quantization: str = "symmetric"  # the scheme the QAT model trained in (quantize.SCHEMES)
    fp32: nn.Module | None = field(default=None, repr=False)  # the best fp32 model (not saved)


def auto_epochs(train_images: int) -> int:
    """About 12,000 images seen (190 steps of 64), between 4 and 30 epochs: measured on the
    digits and their photo variant against a strong fp32 reference (benchmarks/README.md)."""
    return min(30, max(4, math.ceil(12_000 / max(1, train_images))))


def qat_epochs(epochs: int) -> int:
    """The last quarter of the epochs (at least one) is quantization-aware."""
    return max(1, round(epochs / 4)) if epochs > 1 else 1


def train(
    dataset: Dataset,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    start_from: Previous | None = None,
    pretrained: dict[str, torch.Tensor] | None = None,
) -> Trained:
    """Train `config.arch` on `dataset` from scratch (or from `pretrained` weights), or
    fine-tune `start_from`; returns the QAT and int8 models with their held-out metrics."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = _device(config.device)
    engine = backend()
    train_idx, held_idx = split(len(dataset), config.holdout, config.seed)
    norm = _normalisation(dataset, start_from, pretrained)
    spec, model = _start_model(dataset, config, start_from, pretrained)
    state = Run(dataset, config, spec, device, generator, train_idx, held_idx, norm, log, started)
    epochs = 1 if config.dry_run else config.epochs or auto_epochs(len(train_idx))
    quantised = epochs if start_from is not None else qat_epochs(epochs)
    plan = (
        f"fine-tuning with QAT for {epochs} epoch(s)"
        if start_from is not None
        else f"{epochs} epochs: fp32 then int8 ({engine}) with QAT for at most the last {quantised}"
    )
    log(
        f"training {spec.arch} ({'x'.join(map(str, dataset.shape))}, {spec.num_classes} "
        f"classes) on {device.type}: {len(train_idx)} images, {len(held_idx)} held out, {plan}"
        + (", from pretrained weights" if pretrained is not None else "")
    )
    log(dataset.balance())
    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} unreadable image(s); the first: {dataset.skipped[0]}")
    model = model.to(device)
    fp32_acc, fp32 = None, None
    if start_from is None:
        model, fp32_acc = fp32_phase(
            state, model, epochs - quantised if epochs > 1 else 1, quantised, pretrained
        )
        fp32 = copy.deepcopy(model).cpu().eval()
        model = freeze(prepare_qat(model, engine, config.quantization), state)
    model, qat_acc = qat_phase(state, model, quantised, target=fp32_acc)
    model = model.cpu()
    int8 = to_int8(copy.deepcopy(model), engine)
    int8_acc, confusion = state.validate(int8, torch.device("cpu"))
    accuracy = {"int8": int8_acc, "qat": qat_acc, "fp32": fp32_acc}
    log(_outcome(int8_acc, qat_acc, fp32_acc, state.elapsed()))
    metrics = _metrics(state, accuracy, confusion, device)
    probe = dataset.floats(held_idx[:256])
    return Trained(
        model, int8, spec, dataset.classes, norm, engine, config, metrics, probe,
        scheme_of(model), fp32,
    )  # fmt: skip


def _outcome(int8: float, qat: float, fp32: float | None, seconds: float) -> str:
    gap = (qat - int8) * 100
    return (
        f"int8: held-out accuracy {int8:.3f} (QAT {qat:.3f}"
        + (f", fp32 {fp32:.3f}" if fp32 is not None else "")
        + f"); {seconds:.1f}s in all"
        + (f"; WARNING: int8 is {gap:.1f} points below QAT" if gap > 1 else "")
    )


def _normalisation(
    dataset: Dataset, start_from: Previous | None, pretrained: dict[str, torch.Tensor] | None
) -> dict[str, list[float]]:
    """A fine-tune keeps its model's normalisation; pretrained RGB weights expect ImageNet's;
    otherwise the dataset's own."""
    if start_from is not None:
        return start_from.normalisation
    if pretrained is not None and dataset.shape[0] == 3:
        return IMAGENET
    return {"mean": dataset.mean, "std": dataset.std}


def _metrics(
    state: Run,
    accuracy: dict[str, float | None],
    confusion: list[list[int]],
    device: torch.device,
) -> dict[str, Any]:
    """What model.json records of the run (the console draws its curves from `epochs`)."""
    return {
        **{
            f"{phase}_accuracy": None if value is None else round(value, 4)
            for phase, value in accuracy.items()
        },
        "confusion": confusion,
        "per_class": per_class(confusion, state.dataset.classes),
        "epochs": state.history,
        "held_out": len(state.held_idx),
        "trained": len(state.train_idx),
        "skipped_images": len(state.dataset.skipped),
        "device": device.type,
        "seconds": round(state.elapsed(), 2),
    }


def _start_model(
    dataset: Dataset,
    config: TrainConfig,
    start_from: Previous | None,
    pretrained: dict[str, torch.Tensor] | None,
) -> tuple[ModelSpec, nn.Module]:
    """A fresh float model sized from the data (from pretrained weights if given), or the
    previous QAT model if it fits the data."""
    channels, height, width = dataset.shape
    spec = ModelSpec(config.arch, channels, height, width, len(dataset.classes), config.stem_width)
    if start_from is None:
        return spec, build(spec, weights=pretrained)
    previous = start_from.spec
    shape = (previous.in_channels, previous.height, previous.width, previous.num_classes)
    if shape != (channels, height, width, spec.num_classes):
        raise JobError(
            f"the previous model ({previous.in_channels}x{previous.height}x{previous.width}, "
            f"{previous.num_classes} classes) does not fit the dataset "
            f"({channels}x{height}x{width}, {spec.num_classes} classes)"
        )
    return previous, start_from.model


def _device(wanted: str) -> torch.device:
    """CUDA when asked for (or "auto") and present, else the CPU."""
    use_cuda = wanted in ("auto", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def load_data(root: Path, config: TrainConfig, workdir: Path | None) -> Dataset:
    """The dataset under `root`, decoded for `config`'s architecture, input size and colour."""
    return read_dataset(
        root,
        arch=config.arch,
        size=config.input_size,
        channels=config.in_channels,
        max_unreadable_share=config.max_unreadable_share,
        workdir=workdir,
    )
