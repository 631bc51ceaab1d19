"""Training and inference: QAT against plain fp32 training of the same model in the same run,
and the int8 model against the fp32 one.

Figures: training epoch time and images/s of edgehook's QAT recipe against plain fp32
training of the same model (each QAT phase measured: epochs with batch norm learning, the
freeze between them (a measuring pass over up to 1,024 training images, then the fold),
epochs with it folded; the recipe's total adds them up as train() runs them), batch-1
latency and
batch-64 throughput (int8 and fp32), model file size (the model.safetensors edgehook ships
against the fp32 model's weights in the same format), int8 accuracy vs QAT accuracy on the
held-out split. Data: the synthetic set, at CIFAR's 3x32x32; the accuracy gap also on a
hard variant (low contrast, heavy noise: where quantized logits once cost 14 to 24 points), over
three seeds, the worst reported.

  .venv/bin/python benchmarks/bench_training.py            # full
  .venv/bin/python benchmarks/bench_training.py --smoke    # quick (CI)
"""

from __future__ import annotations

import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.reporting import arguments, write  # noqa: E402
from pipeline.models.inference import latency_ms  # noqa: E402
from pipeline.models.modelfile import WEIGHTS, save  # noqa: E402
from pipeline.nn.model import (  # noqa: E402
    ModelSpec,
    build,
    normalise,
)
from pipeline.nn.quantize import backend, freeze_bn, prepare_qat, quiet  # noqa: E402
from pipeline.training import synthetic  # noqa: E402
from pipeline.training.datasets import read_dataset  # noqa: E402
from pipeline.training.train import FREEZE_SAMPLE, TrainConfig, qat_epochs, train  # noqa: E402


def step(
    model: nn.Module, optimiser: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
) -> None:
    optimiser.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimiser.step()


def epoch_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """One epoch's seconds, after one untimed warm-up step (first-call allocations)."""
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    with quiet():
        step(model, optimiser, x[:batch], y[:batch])
        started = time.perf_counter()
        for start in range(0, len(x), batch):
            step(model, optimiser, x[start : start + batch], y[start : start + batch])
    return time.perf_counter() - started


def folded_qat(spec: ModelSpec, engine: str, x: torch.Tensor) -> tuple[nn.Module, float]:
    """A QAT model as train() has it once batch norm is frozen, and the seconds freeze_bn
    took (its measuring pass over up to FREEZE_SAMPLE training images, then the fold)."""
    model = prepare_qat(build(spec), engine)
    with quiet():
        model(x[:64])  # batch norm and observers see data before the freeze
    started = time.perf_counter()
    sample = torch.randperm(len(x))[:FREEZE_SAMPLE]  # as train() draws it
    model = freeze_bn(model, (x[sample[start : start + 64]] for start in range(0, len(sample), 64)))
    return model, time.perf_counter() - started


def hard_set(per_class: int, seeds: int) -> list[dict[str, float]]:
    """QAT and int8 held-out accuracy on the hard variant, one run per seed."""
    x, y, classes = synthetic.make(
        per_class=per_class, size=32, channels=3, classes=4, contrast=40, noise=45
    )
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_npz(Path(tmp), x, y, classes)
        dataset = read_dataset(Path(tmp))
    runs = []
    for seed in range(seeds):
        m = train(dataset, TrainConfig(epochs=6, seed=seed), log=lambda _: None).metrics
        runs.append(
            {
                "seed": seed,
                "qat_accuracy": m["qat_accuracy"],
                "int8_accuracy": m["int8_accuracy"],
                "gap_points": round((m["qat_accuracy"] - m["int8_accuracy"]) * 100, 2),
            }
        )
    return runs


def main() -> int:
    args = arguments(__doc__)
    per_class, epochs, repeats = (40, 1, 20) if args.smoke else (400, 3, 200)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_npz(
            Path(tmp), *synthetic.make(per_class=per_class, size=32, channels=3, classes=4)
        )
        dataset = read_dataset(Path(tmp))
    engine = backend()
    spec = ModelSpec("edgehook-cnn", 3, 32, 32, 4, 32)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    x = normalise(dataset.floats(range(len(dataset))), norm)
    y = torch.from_numpy(dataset.labels)
    torch.manual_seed(0)
    qat_times, folded_times, freeze_times, fp32_times = [], [], [], []
    for _ in range(epochs):  # interleaved, so drift on a shared machine hits all alike
        qat_times.append(epoch_time(prepare_qat(build(spec), engine), x, y, 64))
        folded, freeze_s = folded_qat(spec, engine, x)
        freeze_times.append(freeze_s)
        folded_times.append(epoch_time(folded, x, y, 64))
        fp32_times.append(epoch_time(build(spec), x, y, 64))
    config = TrainConfig(epochs=4)
    trained = train(dataset, config, log=lambda _: None)
    fp32 = build(spec).eval()
    int8 = trained.int8
    one, batch = x[:1], x[:64]
    with tempfile.TemporaryDirectory() as tmp:
        save(Path(tmp) / "model", trained, sources=["benchmark"])
        save_file(
            {k: v.contiguous() for k, v in fp32.state_dict().items()}, f"{tmp}/fp32.safetensors"
        )
        int8_bytes = (Path(tmp) / "model" / WEIGHTS).stat().st_size
        fp32_bytes = Path(f"{tmp}/fp32.safetensors").stat().st_size
    quantised = qat_epochs(config.epochs)
    figures: dict[str, Any] = {
        "images": len(x),
        "engine": engine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "recipe_epochs": config.epochs,
        "recipe_qat_epochs": quantised,
        "qat_epoch_s": round(statistics.median(qat_times), 3),
        "qat_folded_epoch_s": round(statistics.median(folded_times), 3),
        "freeze_bn_s": round(statistics.median(freeze_times), 3),
        "fp32_epoch_s": round(statistics.median(fp32_times), 3),
        "fp32_latency_b1_ms": round(latency_ms(fp32, one, repeats), 3),
        "int8_latency_b1_ms": round(latency_ms(int8, one, repeats), 3),
        "fp32_batch64_ms": round(latency_ms(fp32, batch, repeats // 4), 3),
        "int8_batch64_ms": round(latency_ms(int8, batch, repeats // 4), 3),
        "fp32_bytes": fp32_bytes,
        "int8_bytes": int8_bytes,
        "qat_accuracy": trained.metrics["qat_accuracy"],
        "int8_accuracy": trained.metrics["int8_accuracy"],
        "hard_set": hard_set(per_class=60 if args.smoke else 300, seeds=1 if args.smoke else 3),
    }
    f = figures
    # The recipe: fp32 epochs, then the freeze and the folded QAT epochs.
    recipe_s = (
        (config.epochs - quantised) * f["fp32_epoch_s"]
        + f["freeze_bn_s"]
        + quantised * f["qat_folded_epoch_s"]
    )
    f["qat_over_fp32_time"] = round(recipe_s / (config.epochs * f["fp32_epoch_s"]), 2)
    f["qat_bn_epoch_over_fp32"] = round(f["qat_epoch_s"] / f["fp32_epoch_s"], 2)
    f["qat_folded_epoch_over_fp32"] = round(f["qat_folded_epoch_s"] / f["fp32_epoch_s"], 2)
    f["qat_images_per_s"] = round(config.epochs * len(x) / recipe_s, 1)
    f["fp32_images_per_s"] = round(len(x) / f["fp32_epoch_s"], 1)
    f["int8_throughput_gain_b64"] = round(f["fp32_batch64_ms"] / f["int8_batch64_ms"], 2)
    f["int8_latency_ratio_b1"] = round(f["int8_latency_b1_ms"] / f["fp32_latency_b1_ms"], 2)
    f["int8_size_ratio"] = round(f["int8_bytes"] / f["fp32_bytes"], 3)
    f["accuracy_gap_points"] = round((f["qat_accuracy"] - f["int8_accuracy"]) * 100, 2)
    f["hard_gap_points"] = max(abs(run["gap_points"]) for run in f["hard_set"])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        (
            f"recipe / fp32 training time ({config.epochs} epochs: fp32 "
            f"{config.epochs - quantised}, then QAT with batch norm folded {quantised})",
            f["qat_over_fp32_time"],
            "<= 1.5",
        ),
        (
            "  QAT epoch with batch norm (not in the recipe) / fp32 epoch",
            f["qat_bn_epoch_over_fp32"],
            "",
        ),
        ("  QAT epoch with batch norm folded / fp32 epoch", f["qat_folded_epoch_over_fp32"], ""),
        (
            "  freezing batch norm (a measuring pass, the fold) / fp32 epoch",
            round(f["freeze_bn_s"] / f["fp32_epoch_s"], 2),
            "",
        ),
        (
            "training images/s, QAT (fp32)",
            f"{f['qat_images_per_s']} ({f['fp32_images_per_s']})",
            "",
        ),
        ("int8 throughput gain at batch 64", f"{f['int8_throughput_gain_b64']}x", ">= 2x"),
        (
            "batch-1 latency int8 / fp32",
            f"{f['int8_latency_ratio_b1']} "
            f"({f['int8_latency_b1_ms']} vs {f['fp32_latency_b1_ms']} ms)",
            "<= 1.0",
        ),
        (
            "model file int8 / fp32 (safetensors)",
            f"{f['int8_size_ratio']} ({f['int8_bytes']:,} vs {f['fp32_bytes']:,} bytes)",
            "<= 0.3",
        ),
        ("int8 accuracy gap to QAT (points)", f["accuracy_gap_points"], "<= 1"),
        (
            "int8 accuracy gap to QAT, hard set, worst seed (points)",
            f"{f['hard_gap_points']} (QAT accuracy "
            + ", ".join(str(run["qat_accuracy"]) for run in f["hard_set"])
            + ")",
            "<= 1",
        ),
    ]
    report = (
        f"# Training and inference ({when})\n\n{platform.processor() or platform.machine()}"
        f", torch {torch.__version__}, backend {engine}, {f['threads']} threads, "
        f"{f['images']} images of 3x32x32, CPU\n\n| figure | value | target |\n"
        "| --- | ---: | --- |\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    )
    return write(args, "training", when, figures, report)


if __name__ == "__main__":
    raise SystemExit(main())
