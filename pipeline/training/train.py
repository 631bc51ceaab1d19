"""Training, read top to bottom: batches, train_one_epoch, evaluate, then train(): fp32 first,
quantization-aware fine-tuning for the last part, int8 conversion on the CPU.

The recipe follows torchvision's classification references: AdamW with weight decay, label
smoothing, a linear warm-up then a cosine learning rate, augmentation (augment.py); fp32
(mixed precision on CUDA) for most epochs, keeping the best epoch by held-out accuracy and
stopping early when it no longer improves or the time budget runs short; then QAT from that
model: batch-norm statistics measured exactly and folded into the convs, fake quantization,
a small cosine learning rate, observers frozen for the last QAT epoch; the best QAT epoch is
the one converted to int8. With pretrained weights the head trains alone first.
One TrainConfig (config.py), built once from the settings and stored with the model.
The loop's parts (batches, steps, evaluation) are in loop.py.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import JobError
from pipeline.nn.model import ModelSpec, build, head_name
from pipeline.nn.quantize import backend, fake_quant_off, freeze_bn, prepare_qat, scheme_of, to_int8
from pipeline.training.augment import Augment
from pipeline.training.config import Previous as Previous
from pipeline.training.config import TrainConfig as TrainConfig
from pipeline.training.datasets import Dataset, read_dataset, split
from pipeline.training.loop import (
    Inputs,
    Stepper,
    batches,
    evaluate,
    per_class,
    progress_bar,
    train_one_epoch,
)

AUGMENT_MIN_SIZE = 16
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


def auto_epochs(train_images: int) -> int:
    """About 12,000 images seen (190 steps of 64), between 4 and 30 epochs: measured on the
    digits and their photo variant against a strong fp32 reference (benchmarks/README.md)."""
    return min(30, max(4, math.ceil(12_000 / max(1, train_images))))


def qat_epochs(epochs: int) -> int:
    """The last quarter of the epochs (at least one) is quantization-aware."""
    return max(1, round(epochs / 4)) if epochs > 1 else 1


@dataclass
class _Run:
    """What one training run shares between its phases."""

    dataset: Dataset
    config: TrainConfig
    spec: ModelSpec
    device: torch.device
    generator: torch.Generator
    train_idx: np.ndarray
    held_idx: np.ndarray
    norm: dict[str, list[float]]
    log: Callable[[str], None]
    started: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def loader(self) -> Any:
        return batches(self.dataset, self.train_idx, self.config.batch_size, self.generator)

    def inputs(self, augment: bool) -> Inputs:
        # Below 16 px a crop or a rotation destroys too much of an image: 8 px digits
        # lost 0.3 to 1.1 points with it (benchmarks/README.md).
        on = augment and self.config.augment and self.spec.height >= AUGMENT_MIN_SIZE
        wanted = Augment(hflip=self.config.hflip) if on else None
        return Inputs(self.norm, self.device, wanted)

    def validate(self, model: nn.Module, device: torch.device | None = None) -> tuple[float, Any]:
        where = device or self.device
        loader = batches(self.dataset, self.held_idx, 256)
        return evaluate(model, loader, Inputs(self.norm, where, None), self.spec.num_classes)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def epoch(
        self, model: nn.Module, stepper: Stepper, phase: str, number: int, of: int
    ) -> tuple[float, float]:
        """One epoch of training then validation, logged; (held-out accuracy, seconds)."""
        began = time.perf_counter()
        loss, train_acc = train_one_epoch(
            model,
            self.loader(),
            self.inputs(True),
            stepper,
            self.generator,
            dry_run=self.config.dry_run,
            progress=progress_bar(phase, number, of, len(self.train_idx)),
        )
        seconds = time.perf_counter() - began
        val_acc, _ = self.validate(model)
        images = self.config.batch_size if self.config.dry_run else len(self.train_idx)
        self.history.append(
            {
                "epoch": len(self.history) + 1,
                "phase": phase,
                "loss": round(loss, 4),
                "train_acc": round(train_acc, 4),
                "val_acc": round(val_acc, 4),
                "lr": round(stepper.lr, 6),
                "seconds": round(seconds, 3),
                "images_per_s": round(images / max(seconds, 1e-9), 1),
            }
        )
        self.log(
            f"{phase} epoch {number}/{of}  loss {loss:.4f}  train_acc {train_acc:.3f}  "
            f"val_acc {val_acc:.3f}  {seconds:.1f}s  {images / max(seconds, 1e-9):.0f} img/s"
        )
        return val_acc, seconds


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
    norm = (
        start_from.normalisation
        if start_from is not None
        else IMAGENET
        if pretrained is not None and dataset.shape[0] == 3
        else {"mean": dataset.mean, "std": dataset.std}
    )
    spec, model = _start_model(dataset, config, start_from, pretrained)
    state = _Run(dataset, config, spec, device, generator, train_idx, held_idx, norm, log, started)
    epochs = 1 if config.dry_run else config.epochs or auto_epochs(len(train_idx))
    quantised = epochs if start_from is not None else qat_epochs(epochs)
    log(
        f"training {spec.arch} ({'x'.join(map(str, dataset.shape))}, {spec.num_classes} "
        f"classes) on {device.type}: {len(train_idx)} images, {len(held_idx)} held out, "
        + (
            f"fine-tuning with QAT for {epochs} epoch(s)"
            if start_from is not None
            else f"{epochs} epochs: fp32 then QAT ({engine}) for the last {quantised}"
        )
        + (", from pretrained weights" if pretrained is not None else "")
    )
    log(dataset.balance())
    if dataset.skipped:
        log(f"skipped {len(dataset.skipped)} unreadable image(s); the first: {dataset.skipped[0]}")
    model = model.to(device)
    fp32_acc = None
    if start_from is None:
        model, fp32_acc = _fp32_phase(
            state, model, epochs - quantised if epochs > 1 else 1, quantised, pretrained
        )
        model = _freeze(prepare_qat(model, engine, config.quantization), state)
    model, qat_acc = _qat_phase(state, model, quantised, fine_tune=start_from is not None)
    model = model.cpu()
    int8 = to_int8(copy.deepcopy(model), engine)
    int8_acc, confusion = state.validate(int8, torch.device("cpu"))
    gap = (qat_acc - int8_acc) * 100
    log(
        f"int8: held-out accuracy {int8_acc:.3f} (QAT {qat_acc:.3f}"
        + (f", fp32 {fp32_acc:.3f}" if fp32_acc is not None else "")
        + f"); {state.elapsed():.1f}s in all"
        + (f"; WARNING: int8 is {gap:.1f} points below QAT" if gap > 1 else "")
    )
    metrics = {
        "int8_accuracy": round(int8_acc, 4),
        "qat_accuracy": round(qat_acc, 4),
        "fp32_accuracy": None if fp32_acc is None else round(fp32_acc, 4),
        "confusion": confusion,
        "per_class": per_class(confusion, dataset.classes),
        "epochs": state.history,
        "held_out": len(held_idx),
        "trained": len(train_idx),
        "skipped_images": len(dataset.skipped),
        "device": device.type,
        "seconds": round(state.elapsed(), 2),
    }
    return Trained(
        model,
        int8,
        spec,
        dataset.classes,
        norm,
        engine,
        config,
        metrics,
        dataset.floats(held_idx[:256]),
        scheme_of(model),
    )


def _fp32_phase(
    state: _Run,
    model: nn.Module,
    planned: int,
    quantised: int,
    pretrained: dict[str, torch.Tensor] | None,
) -> tuple[nn.Module, float]:
    """fp32 epochs; returns the best epoch's model and its held-out accuracy."""
    config = state.config
    steps = math.ceil(len(state.train_idx) / config.batch_size)
    stepper = Stepper(
        model,
        config.weight_decay,
        config.label_smoothing,
        config.lr,
        planned * steps,
        state.device,
        warmup=0.1,
        mixed=True,
    )
    head_epochs = max(1, planned // 5) if pretrained is not None and planned > 1 else 0
    patience = config.patience or max(3, planned // 3)
    best, best_state, best_epoch = -1.0, copy.deepcopy(model.state_dict()), 0
    improved = 0  # the last epoch that beat the best strictly: a plateau counts as no better
    epoch = 0
    while epoch < planned:
        epoch += 1
        _head_only(model, epoch <= head_epochs)
        accuracy, seconds = state.epoch(model, stepper, "fp32", epoch, planned)
        if accuracy > best:
            improved = epoch
        if accuracy >= best:  # a tie keeps the later epoch: it has seen more, at a lower rate
            best, best_state, best_epoch = accuracy, copy.deepcopy(model.state_dict()), epoch
        if config.time_budget_s and epoch == 1:
            # Fit the rest to the budget: the QAT epochs cost about one fp32 epoch each.
            room = config.time_budget_s - state.elapsed() - quantised * seconds * 1.2
            planned = max(1, min(planned, epoch + int(room // seconds)))
            stepper.total = planned * steps
        if epoch - improved >= patience:
            state.log(f"fp32: no better for {patience} epochs; stopping early")
            break
    _head_only(model, False)
    model.load_state_dict(best_state)
    state.log(f"fp32: the best epoch is {best_epoch} (held-out accuracy {best:.3f})")
    return model, best


def _qat_phase(
    state: _Run, model: nn.Module, epochs: int, *, fine_tune: bool
) -> tuple[nn.Module, float]:
    """Quantization-aware epochs at a small learning rate, observers frozen for the last
    one; returns the best epoch's model and its held-out accuracy."""
    config = state.config
    steps = math.ceil(len(state.train_idx) / config.batch_size)
    lr = config.lr / (10 if fine_tune else 20)
    stepper = Stepper(
        model,
        config.weight_decay,
        config.label_smoothing,
        lr,
        epochs * steps,
        state.device,
        warmup=0.0,
        mixed=False,
    )
    best, best_model = -1.0, model
    for epoch in range(1, epochs + 1):
        if epoch == epochs and epochs > 1:
            model.apply(torch.ao.quantization.disable_observer)
        accuracy, seconds = state.epoch(model, stepper, "qat", epoch, epochs)
        if accuracy >= best:
            best, best_model = accuracy, copy.deepcopy(model)
        budget = config.time_budget_s
        if budget and epoch < epochs and state.elapsed() + seconds > budget:
            state.log("qat: the time budget is spent; stopping")
            break
    return best_model, best


def _head_only(model: nn.Module, only: bool) -> None:
    """Train only the head (pretrained weights: the new head first), or everything."""
    head = head_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not only or name.startswith(head + "."))


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


# Batch norm's statistics are measured on at most this many training images, drawn at
# random: plenty of positions per channel, and a measuring pass far shorter than an epoch.
FREEZE_SAMPLE = 1024


def _freeze(model: nn.Module, state: _Run) -> nn.Module:
    """Measure batch norm on a random sample of the training images and fold it."""
    limit = state.config.batch_size if state.config.dry_run else FREEZE_SAMPLE
    order = torch.randperm(len(state.train_idx), generator=state.generator)[:limit].numpy()
    sample = np.sort(state.train_idx[order])
    inputs = state.inputs(False)
    nothing = torch.Generator()

    def measured() -> Iterator[torch.Tensor]:
        for images, _ in batches(state.dataset, sample, state.config.batch_size):
            yield inputs(images, nothing)

    # Just prepared, the activation quantizers have seen nothing (scale 1): measure the
    # statistics of the float function the fp32 epochs trained, not of that.
    with fake_quant_off(model):
        return freeze_bn(model, measured())


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
