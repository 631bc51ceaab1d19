"""The recipe that makes a model from a dataset, one for the worker's retrain job and for
`edgehook train`: decode the dataset, train (fp32 then QAT, or fine-tune), save the int8
model, and check it reloaded in a fresh process. Signing is the caller's: the worker signs
in outcomes.py (a job never holds the key), `edgehook train` with the device's key.

Heavy (torch): its two callers, `edgehook train` and runjob's retrain, import it inside the
function that trains.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.models.inference import check_in_fresh_process, predict, speed
from pipeline.models.metadata import ModelMeta
from pipeline.models.modelfile import save
from pipeline.training.config import TrainConfig
from pipeline.training.train import load_data, train


@dataclass(frozen=True)
class Made:
    meta: ModelMeta
    layout: str  # the dataset's layout (image-folder, npz, cifar)
    images: int  # images kept for training and held-out evaluation
    agree: int  # held-out predictions the reloaded model agreed on
    samples: int


def make_model(
    data_root: Path,
    out: Path,
    config: TrainConfig,
    workdir: Path | None,
    *,
    sources: list[str],
    log: Callable[[str], None] = print,
    start_from: Any = None,
    pretrained: Any = None,
    device: str | None = None,
    extra: Mapping[str, Any] | None = None,
    timing: bool = False,
) -> Made:
    """Train on the dataset under `data_root` and write the checked int8 model to `out`.
    With `timing`, int8 and fp32 latency are measured and kept in the metadata."""
    dataset = load_data(data_root, config, workdir)
    trained = train(dataset, config, log=log, start_from=start_from, pretrained=pretrained)
    kept = {"dataset_layout": dataset.layout, **(extra or {})}
    if timing:
        figures = speed(trained.int8, trained.spec.to_dict(), repeats=30)
        log(
            f"int8 latency {figures['int8_batch1_ms']} ms at batch 1 (fp32 "
            f"{figures['fp32_batch1_ms']} ms); {figures['int8_batch64_per_s']:.0f} images/s "
            f"at batch 64 (fp32 {figures['fp32_batch64_per_s']:.0f})"
        )
        kept["latency"] = figures
    meta = save(out, trained, sources=sources, device=device, extra=kept)
    expected = predict(trained.int8, trained.held_out, trained.normalisation).argmax(1)
    check = check_in_fresh_process(out, trained.held_out, expected)
    return Made(meta, dataset.layout, len(dataset.labels), check["agree"], check["samples"])
