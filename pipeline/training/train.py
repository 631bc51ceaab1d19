"""Quantization-aware training, read top to bottom: train_one_epoch, evaluate, train.

One flat TrainConfig, captured once and stored with the model. CUDA when available (Jetson),
else CPU; the int8 conversion always happens on the CPU. One line per epoch in job logs; a
live progress line when stderr is a terminal.
"""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import JobError
from pipeline.training.datasets import Dataset, split
from pipeline.training.model import ModelSpec, SmallCNN
from pipeline.training.quantize import backend, freeze_bn, prepare_qat, run, to_int8


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 0.01
    batch_size: int = 64
    seed: int = 0
    holdout: float = 0.2
    channels: int = 32
    device: str = "auto"  # auto | cpu | cuda
    dry_run: bool = False  # one batch of one epoch: check the plumbing


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
    held_out: np.ndarray = field(repr=False)  # un-normalised held-out images, for checks


def normalise(images: np.ndarray, normalisation: dict[str, list[float]]) -> torch.Tensor:
    mean = np.asarray(normalisation["mean"], dtype=np.float32)[None, :, None, None]
    std = np.asarray(normalisation["std"], dtype=np.float32)[None, :, None, None]
    return torch.from_numpy(np.ascontiguousarray((images - mean) / std))


def train_one_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimiser: torch.optim.Optimizer,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    *,
    dry_run: bool,
    progress: Callable[[int], None],
) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total_loss, correct, seen = 0.0, 0, 0
    for start in range(0, len(x), batch_size):
        index = order[start : start + batch_size]
        inputs, targets = x[index].to(device), y[index].to(device)
        optimiser.zero_grad()
        logits = model(inputs)
        loss = nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimiser.step()
        total_loss += loss.item() * len(index)
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(index)
        progress(seen)
        if dry_run:
            break
    return total_loss / seen, correct / seen


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    device: torch.device,
    batch_size: int = 256,
) -> tuple[float, list[list[int]]]:
    """Accuracy and the confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    for start in range(0, len(x), batch_size):
        logits = run(model, x[start : start + batch_size].to(device))
        predicted = logits.argmax(1).cpu().numpy()
        np.add.at(confusion, (y[start : start + batch_size].numpy(), predicted), 1)
    return float(np.trace(confusion) / max(1, confusion.sum())), confusion.tolist()


# Batch norm's statistics are measured on at most this many training images, drawn at
# random: plenty of positions per channel, and a measuring pass far shorter than an epoch.
FREEZE_SAMPLE = 1024


def bn_epochs(epochs: int) -> int:
    """Epochs in which batch norm learns its statistics: the first half (at least one); they
    are frozen (folded into the convs) for the rest, as torch's QAT recipe does."""
    return max(1, epochs // 2)


@dataclass(frozen=True)
class Previous:
    """A model to fine-tune: its QAT module (batch norm already folded), its spec, and the
    normalisation it learned with."""

    model: nn.Module
    spec: ModelSpec
    normalisation: dict[str, list[float]]


@dataclass(frozen=True)
class _Split:
    """The training and held-out images, normalised, with their labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_held: torch.Tensor
    y_held: torch.Tensor
    held_images: np.ndarray
    normalisation: dict[str, list[float]]


def _split(dataset: Dataset, config: TrainConfig, start_from: Previous | None) -> _Split:
    """Hold out `config.holdout` of the images; normalise with the training images' mean
    and spread (or, when fine-tuning, with the previous model's)."""
    train_idx, held_idx = split(len(dataset.labels), config.holdout, config.seed)
    train_images = dataset.images[train_idx]
    flat = train_images.transpose(1, 0, 2, 3).reshape(train_images.shape[1], -1)
    norm = (
        start_from.normalisation
        if start_from is not None
        else {
            "mean": flat.mean(axis=1).tolist(),
            "std": np.maximum(flat.std(axis=1), 1e-6).tolist(),
        }
    )
    return _Split(
        normalise(train_images, norm),
        torch.from_numpy(dataset.labels[train_idx]),
        normalise(dataset.images[held_idx], norm),
        torch.from_numpy(dataset.labels[held_idx]),
        dataset.images[held_idx],
        norm,
    )


def _start_model(
    dataset: Dataset, config: TrainConfig, start_from: Previous | None, engine: str
) -> tuple[ModelSpec, nn.Module]:
    """A fresh QAT model sized from the data, or the previous model if it fits the data."""
    channels, height, width = dataset.shape
    spec = ModelSpec(channels, height, width, len(dataset.classes), config.channels)
    if start_from is None:
        return spec, prepare_qat(SmallCNN(spec), engine)
    previous = start_from.spec
    shape = (previous.in_channels, previous.height, previous.width, previous.num_classes)
    if shape != (channels, height, width, spec.num_classes):
        raise JobError(
            f"the previous model ({previous.in_channels}x{previous.height}x{previous.width}, "
            f"{previous.num_classes} classes) does not fit the dataset "
            f"({channels}x{height}x{width}, {spec.num_classes} classes)"
        )
    return previous, start_from.model


def train(
    dataset: Dataset,
    config: TrainConfig,
    log: Callable[[str], None] = print,
    start_from: Previous | None = None,
) -> Trained:
    """QAT from scratch, or fine-tuning `start_from` on `dataset`."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = _device(config.device)
    data = _split(dataset, config, start_from)
    engine = backend()
    spec, model = _start_model(dataset, config, start_from, engine)
    model = model.to(device)
    epochs = 1 if config.dry_run else config.epochs
    learning_bn = 0 if start_from is not None else bn_epochs(epochs)
    optimiser = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    log(
        f"training {spec.family} ({'x'.join(map(str, dataset.shape))}, {spec.num_classes} "
        f"classes) on {device.type}: {len(data.x_train)} images, {len(data.x_held)} held out, "
        f"QAT backend {engine}, "
        + (
            f"batch norm learning for {learning_bn} epoch(s), then frozen"
            if learning_bn
            else "batch norm frozen (fine-tuning)"
        )
    )
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        loss, train_acc = train_one_epoch(
            model,
            data.x_train,
            data.y_train,
            optimiser,
            config.batch_size,
            generator,
            device,
            dry_run=config.dry_run,
            progress=_progress(epoch, epochs, len(data.x_train)),
        )
        seconds = time.perf_counter() - started
        val_acc, _ = evaluate(model, data.x_held, data.y_held, spec.num_classes, device)
        images = config.batch_size if config.dry_run else len(data.x_train)
        history.append(_epoch_record(epoch, loss, train_acc, val_acc, seconds, images))
        log(
            f"epoch {epoch}/{epochs}  loss {loss:.4f}  train_acc {train_acc:.3f}  "
            f"val_acc {val_acc:.3f}  {seconds:.1f}s  {images / seconds:.0f} img/s"
        )
        if epoch == learning_bn:
            model = _freeze(model, data.x_train, config, generator, device)
            optimiser = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9)
    qat_acc, _ = evaluate(model, data.x_held, data.y_held, spec.num_classes, device)
    model = model.cpu()
    int8 = to_int8(copy.deepcopy(model), engine)
    int8_acc, confusion = evaluate(
        int8, data.x_held, data.y_held, spec.num_classes, torch.device("cpu")
    )
    log(f"int8: held-out accuracy {int8_acc:.3f} (QAT model {qat_acc:.3f})")
    metrics = {
        "qat_accuracy": round(qat_acc, 4),
        "int8_accuracy": round(int8_acc, 4),
        "confusion": confusion,
        "epochs": history,
        "bn_epochs": learning_bn,
        "held_out": len(data.x_held),
        "trained": len(data.x_train),
        "device": device.type,
    }
    return Trained(
        model,
        int8,
        spec,
        dataset.classes,
        data.normalisation,
        engine,
        config,
        metrics,
        data.held_images,
    )


def _device(wanted: str) -> torch.device:
    """CUDA when asked for (or "auto") and present, else the CPU."""
    use_cuda = wanted in ("auto", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if use_cuda else "cpu")


def _epoch_record(
    epoch: int, loss: float, train_acc: float, val_acc: float, seconds: float, images: int
) -> dict[str, float]:
    return {
        "epoch": epoch,
        "loss": round(loss, 4),
        "train_acc": round(train_acc, 4),
        "val_acc": round(val_acc, 4),
        "seconds": round(seconds, 3),
        "images_per_s": round(images / seconds, 1),
    }


def _freeze(
    model: nn.Module,
    x_train: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    device: torch.device,
) -> nn.Module:
    """Measure batch norm on a random sample of the training images and fold it (new
    parameters: the caller makes a new optimiser)."""
    limit = config.batch_size if config.dry_run else FREEZE_SAMPLE
    sample = torch.randperm(len(x_train), generator=generator)[:limit]
    batches = (
        x_train[sample[start : start + config.batch_size]].to(device)
        for start in range(0, len(sample), config.batch_size)
    )
    return freeze_bn(model, batches)


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)


def _progress(epoch: int, epochs: int, total: int) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda _seen: None

    def show(seen: int) -> None:
        filled = int(30 * seen / total)
        sys.stderr.write(
            f"\repoch {epoch}/{epochs} [{'#' * filled}{'.' * (30 - filled)}] {seen}/{total}"
        )
        if seen >= total:
            sys.stderr.write("\r" + " " * 70 + "\r")
        sys.stderr.flush()

    return show
