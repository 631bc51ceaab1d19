"""The phases of a training run (train.py runs them): fp32 epochs keeping the best, then
batch norm measured and folded, activation ranges calibrated, and quantization-aware epochs
for as long as the quantized model trails the fp32 one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.ao.quantization import FakeQuantizeBase

from pipeline.nn.model import ModelSpec, head_name
from pipeline.nn.quantize import fake_quant_off, freeze_bn, quiet
from pipeline.training.augment import Augment
from pipeline.training.config import TrainConfig
from pipeline.training.datasets import Dataset
from pipeline.training.loop import Inputs, Stepper, batches, evaluate, progress_bar, train_one_epoch

AUGMENT_MIN_SIZE = 16


@dataclass
class Run:
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


def fp32_phase(
    state: Run,
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


# QAT stops once the quantized model is this close to the fp32 model on the held-out
# images (or beats it): more epochs at that point only move it away from the fp32 minimum
# (benchmarks/README.md, issue 24).
QAT_TOLERANCE = 0.005


def qat_phase(
    state: Run, model: nn.Module, epochs: int, *, target: float | None
) -> tuple[nn.Module, float]:
    """Quantization-aware epochs, at most `epochs`; returns the best model and its held-out
    accuracy. From an fp32 model (`target` its held-out accuracy) the ranges are calibrated
    on the training images first and that model is the first candidate: QAT trains only
    while it is more than QAT_TOLERANCE below the target, at 1% of fp32's peak learning
    rate (NVIDIA's QAT guidance), observers frozen after the first epoch. A fine-tune (no
    target) trains all its epochs at a tenth of the peak rate, observers frozen for the last."""
    config = state.config
    steps = math.ceil(len(state.train_idx) / config.batch_size)
    best, best_model = -1.0, model
    if target is not None:
        _calibrate(model, state)
        best, _ = state.validate(model)
        best_model = copy.deepcopy(model)
        state.log(f"qat: calibrated ranges, held-out accuracy {best:.3f} (fp32 {target:.3f})")
    lr = config.lr / (10 if target is None else 100)
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
    for epoch in range(1, epochs + 1):
        if target is not None and best >= target - QAT_TOLERANCE and not config.dry_run:
            state.log(f"qat: within {QAT_TOLERANCE * 100:g} point of fp32 after {epoch - 1}")
            break
        if epoch > 1 and (target is not None or epoch == epochs):
            model.apply(torch.ao.quantization.disable_observer)
        accuracy, seconds = state.epoch(model, stepper, "qat", epoch, epochs)
        if accuracy > best or (target is None and accuracy == best):
            best, best_model = accuracy, copy.deepcopy(model)
        budget = config.time_budget_s
        if budget and epoch < epochs and state.elapsed() + seconds > budget:
            state.log("qat: the time budget is spent; stopping")
            break
    if target is not None:  # the calibrated model may be the best: its ranges stay as measured
        best_model.apply(torch.ao.quantization.disable_observer)
    return best_model, best


def _calibrate(model: nn.Module, state: Run) -> None:
    """Activation ranges measured on the training sample batch norm was measured on: each
    observer's range the mean of the batches' (not the first batch's, as the moving average
    with constant 0.01 would leave it)."""
    observers: list[Any] = [
        m
        for m in model.modules()
        if isinstance(m, FakeQuantizeBase)
        and hasattr(m.activation_post_process, "averaging_constant")  # not fixed ranges
        and not _is_weight_quantizer(model, m)
    ]
    constants = [fq.activation_post_process.averaging_constant for fq in observers]
    model.train()
    try:
        with torch.no_grad(), quiet():
            for i, x in enumerate(_sample_inputs(state)):
                for fq in observers:
                    fq.activation_post_process.averaging_constant = 1.0 / (i + 1)
                model(x)
    finally:
        for fq, constant in zip(observers, constants, strict=True):
            fq.activation_post_process.averaging_constant = constant


def _is_weight_quantizer(model: nn.Module, fake_quant: nn.Module) -> bool:
    return any(getattr(m, "weight_fake_quant", None) is fake_quant for m in model.modules())


def _head_only(model: nn.Module, only: bool) -> None:
    """Train only the head (pretrained weights: the new head first), or everything."""
    head = head_name(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(not only or name.startswith(head + "."))


# Batch norm's statistics are measured on at most this many training images, drawn at
# random: plenty of positions per channel, and a measuring pass far shorter than an epoch.
FREEZE_SAMPLE = 1024


def _sample_inputs(state: Run) -> Iterator[torch.Tensor]:
    """Model input for a random sample of the training images (the same sample each call:
    drawn from the run's seed), unaugmented."""
    limit = state.config.batch_size if state.config.dry_run else FREEZE_SAMPLE
    order = torch.randperm(
        len(state.train_idx), generator=torch.Generator().manual_seed(state.config.seed)
    )[:limit].numpy()
    sample = np.sort(state.train_idx[order])
    inputs = state.inputs(False)
    nothing = torch.Generator()
    for images, _ in batches(state.dataset, sample, state.config.batch_size):
        yield inputs(images, nothing)


def freeze(model: nn.Module, state: Run) -> nn.Module:
    """Measure batch norm on a random sample of the training images and fold it."""
    # Just prepared, the activation quantizers have seen nothing (scale 1): measure the
    # statistics of the float function the fp32 epochs trained, not of that.
    with fake_quant_off(model):
        return freeze_bn(model, _sample_inputs(state))
