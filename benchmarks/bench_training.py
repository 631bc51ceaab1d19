"""Training and inference: QAT against plain fp32 training of the same model in the same run,
and the int8 model against the fp32 one.

Figures: training images/s and epoch time (QAT and fp32), batch-1 latency and batch-64
throughput (int8 and fp32), model file size (int8 state dict vs fp32 state dict, each saved
with torch.save), int8 accuracy vs QAT accuracy on the held-out split. Data: the synthetic
set, at CIFAR's 3x32x32.

  .venv/bin/python benchmarks/bench_training.py            # full
  .venv/bin/python benchmarks/bench_training.py --smoke    # quick (CI)
"""

from __future__ import annotations

import argparse
import io
import json
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
from torch import nn  # noqa: E402

from pipeline import synthetic  # noqa: E402
from pipeline.datasets import read_dataset  # noqa: E402
from pipeline.inference import latency_ms  # noqa: E402
from pipeline.model import ModelSpec, SmallCNN  # noqa: E402
from pipeline.quantize import backend, prepare_qat, quiet  # noqa: E402
from pipeline.train import TrainConfig, normalise, train  # noqa: E402


def epoch_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    optimiser = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    started = time.perf_counter()
    with quiet():
        for start in range(0, len(x), batch):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(
                model(x[start : start + batch]), y[start : start + batch]
            )
            loss.backward()
            optimiser.step()
    return time.perf_counter() - started


def size_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    per_class, epochs, repeats = (40, 1, 20) if args.smoke else (400, 3, 200)
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_npz(
            Path(tmp), *synthetic.make(per_class=per_class, size=32, channels=3, classes=4)
        )
        dataset = read_dataset(Path(tmp))
    engine = backend()
    spec = ModelSpec(3, 32, 32, 4, 32)
    norm = {"mean": [0.5] * 3, "std": [0.25] * 3}
    x = normalise(dataset.images, norm)
    y = torch.from_numpy(dataset.labels)
    torch.manual_seed(0)
    qat_times, fp32_times = [], []
    for _ in range(epochs):  # interleaved, so drift on a shared machine hits both alike
        qat_times.append(epoch_time(prepare_qat(SmallCNN(spec), engine), x, y, 64))
        fp32_times.append(epoch_time(SmallCNN(spec), x, y, 64))
    trained = train(dataset, TrainConfig(epochs=epochs + 1, lr=0.02), log=lambda _: None)
    fp32 = SmallCNN(spec).eval()
    int8 = trained.int8
    one, batch = x[:1], x[:64]
    figures: dict[str, Any] = {
        "images": len(x),
        "engine": engine,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "qat_epoch_s": round(statistics.median(qat_times), 3),
        "fp32_epoch_s": round(statistics.median(fp32_times), 3),
        "fp32_latency_b1_ms": round(latency_ms(fp32, one, repeats), 3),
        "int8_latency_b1_ms": round(latency_ms(int8, one, repeats), 3),
        "fp32_batch64_ms": round(latency_ms(fp32, batch, repeats // 4), 3),
        "int8_batch64_ms": round(latency_ms(int8, batch, repeats // 4), 3),
        "fp32_bytes": size_bytes(fp32),
        "int8_bytes": size_bytes(int8),
        "qat_accuracy": trained.metrics["qat_accuracy"],
        "int8_accuracy": trained.metrics["int8_accuracy"],
    }
    f = figures
    f["qat_over_fp32_time"] = round(f["qat_epoch_s"] / f["fp32_epoch_s"], 2)
    f["qat_images_per_s"] = round(len(x) / f["qat_epoch_s"], 1)
    f["fp32_images_per_s"] = round(len(x) / f["fp32_epoch_s"], 1)
    f["int8_throughput_gain_b64"] = round(f["fp32_batch64_ms"] / f["int8_batch64_ms"], 2)
    f["int8_latency_ratio_b1"] = round(f["int8_latency_b1_ms"] / f["fp32_latency_b1_ms"], 2)
    f["int8_size_ratio"] = round(f["int8_bytes"] / f["fp32_bytes"], 3)
    f["accuracy_gap_points"] = round((f["qat_accuracy"] - f["int8_accuracy"]) * 100, 2)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [
        ("QAT epoch time / fp32 epoch time", f["qat_over_fp32_time"], "<= 1.5"),
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
        ("model file int8 / fp32", f["int8_size_ratio"], "<= 0.3"),
        ("int8 accuracy gap to QAT (points)", f["accuracy_gap_points"], "<= 1"),
    ]
    report = (
        f"# Training and inference ({when})\n\n{platform.processor() or platform.machine()}"
        f", torch {torch.__version__}, backend {engine}, {f['threads']} threads, "
        f"{f['images']} images of 3x32x32, CPU\n\n| figure | value | target |\n"
        "| --- | ---: | --- |\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    )
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "training-smoke" if args.smoke else f"training-{when[:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps({"when": when, **figures}, indent=2))
    (args.out / f"{stem}.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
