"""The training loop's parts: uint8 batches from the dataset's cache, the model's input
(normalised, augmented), one optimiser step with its learning-rate schedule, one epoch, and
evaluation with per-class figures. train.py runs them in phases.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.nn.quantize import run
from pipeline.training.augment import Augment
from pipeline.training.datasets import Dataset


class _Images(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """The cached images at `index` with their labels; a batch is one read of the cache."""

    def __init__(self, dataset: Dataset, index: np.ndarray) -> None:
        self.dataset, self.index = dataset, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        picked = self.index[rows]
        labels = torch.from_numpy(self.dataset.labels[picked])
        return torch.from_numpy(self.dataset.read(picked)), labels


def batches(
    dataset: Dataset,
    index: np.ndarray,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> torch.utils.data.DataLoader[Any]:
    """uint8 image batches and labels; shuffled when a generator is given."""
    return torch.utils.data.DataLoader(
        _Images(dataset, index),
        batch_size=batch_size,
        shuffle=generator is not None,
        generator=generator,
        collate_fn=lambda batch: batch,
    )


class Inputs:
    """uint8 batches -> normalised float model input on the device, augmented if asked."""

    def __init__(
        self, norm: dict[str, list[float]], device: torch.device, augment: Augment | None
    ) -> None:
        self.mean = torch.tensor(norm["mean"], device=device).reshape(1, -1, 1, 1)
        self.std = torch.tensor(norm["std"], device=device).reshape(1, -1, 1, 1)
        self.device, self.augment = device, augment

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255.0)
        if self.augment is not None:
            x = self.augment(x, generator)
        return (x - self.mean) / self.std


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    inputs: Inputs,
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    generator: torch.Generator,
    *,
    dry_run: bool,
    progress: Callable[[int], None],
) -> tuple[float, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        targets = labels.to(inputs.device)
        logits = step(inputs(images, generator), targets)
        total_loss += float(nn.functional.cross_entropy(logits.detach().float(), targets)) * len(
            labels
        )
        correct += int((logits.argmax(1) == targets).sum())
        seen += len(labels)
        progress(seen)
        if dry_run:
            break
    return total_loss / max(1, seen), correct / max(1, seen)


def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    inputs: Inputs,
    num_classes: int,
) -> tuple[float, list[list[int]]]:
    """Accuracy and the confusion matrix (rows: true class, columns: predicted); never moves
    a QAT model's ranges (quantize.run)."""
    model.eval()
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    nothing = torch.Generator()
    for images, labels in loader:
        predicted = run(model, inputs(images, nothing)).argmax(1).cpu().numpy()
        np.add.at(confusion, (labels.numpy(), predicted), 1)
    return float(np.trace(confusion) / max(1, confusion.sum())), confusion.tolist()


def per_class(confusion: list[list[int]], classes: tuple[str, ...]) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class, from the confusion matrix."""
    matrix = np.asarray(confusion, dtype=np.float64)
    rows = []
    for i, name in enumerate(classes):
        hits, truth, said = matrix[i, i], matrix[i].sum(), matrix[:, i].sum()
        precision = hits / said if said else 0.0
        recall = hits / truth if truth else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "class": name,
                "precision": round(precision, 4),
                "recall": round(recall, 4),
                "f1": round(f1, 4),
                "support": int(truth),
            }
        )
    return rows


class Stepper:
    """One optimiser step with a warm-up-then-cosine learning rate whose length can shrink
    (the time budget) and, on CUDA, mixed precision."""

    def __init__(
        self,
        model: nn.Module,
        weight_decay: float,
        label_smoothing: float,
        lr: float,
        total_steps: int,
        device: torch.device,
        warmup: float,
        mixed: bool,
    ) -> None:
        self.model, self.total, self.warmup = model, max(1, total_steps), warmup
        self.optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        self.loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimiser, self._factor)
        self.mixed = mixed and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.mixed)
        self.device = device

    def _factor(self, step: int) -> float:
        warm = max(1, int(self.total * self.warmup))
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, self.total - warm))
        return 0.5 * (1 + math.cos(math.pi * progress))

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.optimiser.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.mixed):
            logits = self.model(x)
            loss = self.loss(logits.float(), y)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.scheduler.step()
        return logits

    @property
    def lr(self) -> float:
        return float(self.optimiser.param_groups[0]["lr"])


def progress_bar(phase: str, epoch: int, epochs: int, total: int) -> Callable[[int], None]:
    if not sys.stderr.isatty():
        return lambda _seen: None

    def show(seen: int) -> None:
        filled = int(30 * seen / total)
        sys.stderr.write(
            f"\r{phase} {epoch}/{epochs} [{'#' * filled}{'.' * (30 - filled)}] {seen}/{total}"
        )
        if seen >= total:
            sys.stderr.write("\r" + " " * 70 + "\r")
        sys.stderr.flush()

    return show
