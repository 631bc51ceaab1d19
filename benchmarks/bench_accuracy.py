"""Accuracy on real data: edgehook's default training against a strong fp32 reference recipe,
in the same run, judged on images neither ever saw.

Data: scikit-learn's digits (1,797 real 8x8 scans, inside its wheel), split 80/20 with a
fixed seed; and the same digits as mixed-size RGB "photos" (upscaled to 20-48 px, sometimes
not square, tinted, rotated, noisy, saved as JPEG) in an image-folder tree. edgehook trains
on the 80% exactly as `edgehook train` does (its own held-out split comes out of that 80%)
and its int8 model is scored on the 20%. The reference is the 20-line fp32 script from the
issue: three conv-BN-ReLU blocks (32/64/128), AdamW 3e-3, one-cycle, 10 epochs, on the same
80% at the size edgehook chose. Each run is its own process (peak RSS is its own); peak RSS
is also measured for edgehook at 1x and 4x the photos (one epoch: memory, not accuracy).
Real photographs too (benchmarks/realsets.py: textures, scenes, faces from scikit-image's
wheel, tested on a region of each photo the trainer never saw); `--quantization
affine,symmetric` trains edgehook once per int8 scheme, in the same run.

  .venv/bin/python benchmarks/bench_accuracy.py            # full
  .venv/bin/python benchmarks/bench_accuracy.py --smoke    # quick (CI): digits, no memory
  .venv/bin/python benchmarks/bench_accuracy.py --sets digits,textures \
      --quantization affine,symmetric --no-memory          # the scheme comparison
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import realsets  # noqa: E402
from benchmarks.reporting import write  # noqa: E402

SETS = ("digits", "photos", "textures", "scenes", "faces")


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.images * (255 / 16)).round().astype(np.uint8), data.target.astype(np.int64)


def photo(image: np.ndarray, rng: np.random.Generator) -> bytes:
    """One digit as a JPEG 'photo': upscaled, maybe not square, tinted, rotated, noisy."""
    from PIL import Image

    side = int(rng.integers(20, 49))
    width = side if rng.random() < 0.7 else int(side * rng.uniform(0.8, 1.25))
    grey = Image.fromarray(image).resize((width, side), Image.Resampling.BICUBIC)
    grey = grey.rotate(float(rng.uniform(-15, 15)), Image.Resampling.BILINEAR, fillcolor=0)
    ink, paper = rng.integers(120, 256, 3), rng.integers(0, 90, 3)
    level = np.asarray(grey, dtype=np.float32)[..., None] / 255.0
    rgb = paper + (ink - paper) * level + rng.normal(0, 12, (*level.shape[:2], 3))
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=int(rng.integers(60, 91))
    )
    return buffer.getvalue()


def write_sets(tmp: Path, smoke: bool) -> dict[str, Any]:
    """The datasets on disk: digits (npz) and photos (image folders, 1x and 4x)."""
    x, y = digits()
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    cut = int(0.8 * len(x))
    train, test = order[:cut], order[cut:]
    if smoke:
        train, test = train[:600], test[:200]
    (tmp / "digits").mkdir()
    np.savez(tmp / "digits" / "train.npz", x=x[train], y=y[train])
    np.savez(tmp / "digits-test.npz", x=x[test], y=y[test])
    sets: dict[str, Any] = {"digits": (tmp / "digits", tmp / "digits-test.npz")}
    for copies in (1, 4):
        folder = tmp / f"photos-{copies}x"
        for c in range(10):
            (folder / str(c)).mkdir(parents=True)
        for copy in range(copies):
            for i in train:
                (folder / str(y[i]) / f"{i}-{copy}.jpg").write_bytes(photo(x[i], rng))
    test_dir = tmp / "photos-test"
    test_dir.mkdir()
    labels = []
    for k, i in enumerate(test):
        (test_dir / f"{k}.jpg").write_bytes(photo(x[i], rng))
        labels.append(int(y[i]))
    np.save(test_dir / "labels.npy", np.asarray(labels))
    sets["photos"] = (tmp / "photos-1x", test_dir)
    sets["photos-4x"] = (tmp / "photos-4x", test_dir)
    return {**sets, **realsets.write_all(tmp, smoke)}


def test_images(test: Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """The held-back test images fitted as edgehook fits them, in [0, 1], with labels."""
    from pipeline.nn.images import decode, fit

    if test.suffix == ".npz":
        with np.load(test) as data:
            images = [fit(image[None], size, channels) for image in data["x"]]
            labels = data["y"]
    else:
        labels = np.load(test / "labels.npy")
        names = sorted([*test.glob("*.jpg"), *test.glob("*.png")], key=lambda p: int(p.stem))
        images = [decode(p.read_bytes(), size, channels) for p in names]
    return np.stack(images).astype(np.float32) / 255.0, labels


def child_edgehook(
    data: Path, test: Path, epochs: int, quantization: str = "symmetric"
) -> dict[str, Any]:
    import torch

    from pipeline.models.inference import predict
    from pipeline.nn.model import normalise
    from pipeline.nn.quantize import run
    from pipeline.training.train import TrainConfig, load_data, train

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        config = TrainConfig(epochs=epochs, quantization=quantization)
        dataset = load_data(data, config, Path(work))
        trained = train(dataset, config, log=lambda _: None)
        seconds = time.perf_counter() - started
        channels, size, _ = dataset.shape
        x, y = test_images(test, size, channels)
        onnx = _onnx_tensorrt_accuracy(trained, Path(work), x, y)
    predicted = predict(trained.int8, x, trained.normalisation).argmax(1)
    normalised = normalise(x, trained.normalisation)
    qat = run(trained.qat.cpu(), normalised).argmax(1)
    assert trained.fp32 is not None
    fp32 = run(trained.fp32, normalised).argmax(1)
    m = trained.metrics
    phases = [e["phase"] for e in m["epochs"]]
    return {
        "quantization": trained.quantization,
        "test_accuracy_fp32": round(float((fp32 == torch.from_numpy(y)).float().mean()), 4),
        "test_accuracy_int8": round(float((predicted == y).mean()), 4),
        "test_accuracy_qat": round(float((qat == torch.from_numpy(y)).float().mean()), 4),
        "test_accuracy_onnx_tensorrt": onnx,
        "test_images": len(y),
        "fp32_accuracy_val": m.get("fp32_accuracy"),
        "qat_accuracy_val": m["qat_accuracy"],
        "int8_accuracy_val": m["int8_accuracy"],
        "epochs_run": len(m["epochs"]),
        "fp32_epochs": phases.count("fp32"),
        "qat_epochs": phases.count("qat"),
        "fp32_seconds": round(sum(e["seconds"] for e in m["epochs"] if e["phase"] == "fp32"), 2),
        "qat_seconds": round(sum(e["seconds"] for e in m["epochs"] if e["phase"] == "qat"), 2),
        "size": size,
        "channels": channels,
        "images": len(dataset),
        "seconds": round(seconds, 2),
    }


def _onnx_tensorrt_accuracy(trained: Any, work: Path, x: np.ndarray, y: np.ndarray) -> Any:
    """The test accuracy of the `--target tensorrt` ONNX export (symmetric Q/DQ) run by
    onnxruntime's CPU provider; None for an affine model or without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from pipeline.models.modelfile import save
    from pipeline.models.onnxexport import to_onnx_bytes

    if trained.quantization != "symmetric":
        return None
    save(work / "model", trained, sources=["bench"])
    data, _ = to_onnx_bytes(work / "model", target="tensorrt")
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = np.asarray(session.run(None, {name: x.astype(np.float32)})[0])
    return round(float((logits.argmax(1) == y).mean()), 4)


def child_reference(
    data: Path, test: Path, size: int, channels: int, epochs: int = 10
) -> dict[str, Any]:
    """The 20-line fp32 script, on the same training images fitted to the same size."""
    import torch
    from torch import nn

    from pipeline.training.datasets import read_dataset

    started = time.perf_counter()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        ds = read_dataset(data, size=size, channels=channels, workdir=Path(work))
        x = torch.from_numpy(ds.floats(np.arange(len(ds))))
        y = torch.from_numpy(ds.labels)

    def block(i: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

    model = nn.Sequential(
        block(channels, 32), nn.MaxPool2d(2), block(32, 64), nn.MaxPool2d(2), block(64, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    n = len(x)
    optimiser = torch.optim.AdamW(model.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, 3e-3, total_steps=epochs * -(-n // 64)
    )
    for _ in range(epochs):
        model.train()
        order = torch.randperm(n)
        for i in range(0, n, 64):
            b = order[i : i + 64]
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x[b]), y[b]).backward()
            optimiser.step()
            schedule.step()
    seconds = time.perf_counter() - started
    tx, ty = test_images(test, size, channels)
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(tx)).argmax(1).numpy()
    return {
        "test_accuracy_fp32": round(float((predicted == ty).mean()), 4),
        "seconds": round(seconds, 2),
    }


def spawn(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", *argv], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {argv[0]} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--sets", default=None, help=f"comma-separated, of {','.join(SETS)}")
    parser.add_argument(
        "--quantization", default="symmetric", help="comma-separated int8 schemes to train"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the 4x memory runs")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, data, test, *rest = args.child
        import warnings

        warnings.filterwarnings("ignore")
        if kind == "edgehook":
            result = child_edgehook(Path(data), Path(test), int(rest[0]), *rest[1:])
        else:
            result = child_reference(Path(data), Path(test), *map(int, rest))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({**result, "peak_rss_mb": round(peak_mb, 1)}))
        return 0
    names = args.sets.split(",") if args.sets else (["digits"] if args.smoke else SETS)
    schemes = args.quantization.split(",")
    figures: dict[str, Any] = {"smoke": args.smoke}
    with tempfile.TemporaryDirectory(prefix="edgehook-accuracy-") as tmp:
        sets = write_sets(Path(tmp), args.smoke)
        for name in names:
            data, test = sets[name]
            epochs = "3" if args.smoke else "0"
            runs = {q: spawn("edgehook", str(data), str(test), epochs, q) for q in schemes}
            ours = runs[schemes[0]]
            ref = spawn(
                "reference",
                str(data),
                str(test),
                str(ours["size"]),
                str(ours["channels"]),
                "3" if args.smoke else "10",
            )
            figures[name] = {
                "edgehook": ours,
                "schemes": runs,
                "reference": ref,
                "gap_points": round(
                    (ref["test_accuracy_fp32"] - ours["test_accuracy_int8"]) * 100, 2
                ),
                "time_ratio": round(ours["seconds"] / ref["seconds"], 2),
            }
        if not (args.no_memory or args.smoke):
            one = spawn("edgehook", str(sets["photos"][0]), str(sets["photos"][1]), "1")
            four = spawn("edgehook", str(sets["photos-4x"][0]), str(sets["photos-4x"][1]), "1")
            figures["memory"] = {
                "images_1x": one["images"],
                "images_4x": four["images"],
                "peak_rss_mb_1x": one["peak_rss_mb"],
                "peak_rss_mb_4x": four["peak_rss_mb"],
                "ratio": round(four["peak_rss_mb"] / one["peak_rss_mb"], 3),
            }
    rows = []
    for name in names:
        floor = {"digits": 98.0, "photos": 95.0}.get(name, 0.0)
        f = figures[name]
        ours, ref = f["edgehook"], f["reference"]
        rows += [
            (
                f"{name}: int8 test accuracy, edgehook default (reference fp32)",
                f"{ours['test_accuracy_int8'] * 100:.1f}% ({ref['test_accuracy_fp32'] * 100:.1f}%)",
                f">= {floor:.0f}%, within 1 point",
            ),
            (f"{name}: points below the reference", f["gap_points"], "<= 1"),
            (
                f"{name}: wall time edgehook / reference",
                f"{f['time_ratio']} ({ours['seconds']} s vs {ref['seconds']} s; "
                f"{ours['epochs_run']} epochs at {ours['size']} px)",
                "<= 2",
            ),
        ]
        for scheme, run in f["schemes"].items():
            onnx = run.get("test_accuracy_onnx_tensorrt")
            rows.append(
                (
                    f"{name}, {scheme}: test accuracy fp32 / QAT / int8"
                    + (" / ONNX for TensorRT (onnxruntime)" if onnx is not None else ""),
                    f"{run['test_accuracy_fp32']} / {run['test_accuracy_qat']} / "
                    f"{run['test_accuracy_int8']}"
                    + (f" / {onnx}" if onnx is not None else "")
                    + f" ({run['test_images']} images)",
                    "int8 within 1 point of fp32",
                )
            )
            rows.append(
                (
                    f"{name}, {scheme}: int8 points below its own fp32 (test)",
                    round((run["test_accuracy_fp32"] - run["test_accuracy_int8"]) * 100, 2),
                    "<= 1",
                )
            )
            rows.append(
                (
                    f"{name}, {scheme}: held-out fp32 / QAT / int8; epochs fp32 + QAT (seconds)",
                    f"{run['fp32_accuracy_val']} / {run['qat_accuracy_val']} / "
                    f"{run['int8_accuracy_val']}; {run['fp32_epochs']} ({run['fp32_seconds']} s)"
                    f" + {run['qat_epochs']} ({run['qat_seconds']} s), {run['seconds']} s in all",
                    "",
                )
            )
    if args.no_memory or args.smoke:
        return _report(args, figures, rows)
    mem = figures["memory"]
    rows.append(
        (
            f"peak RSS at 4x the photos ({mem['images_4x']} vs {mem['images_1x']} images)",
            f"{mem['ratio']}x ({mem['peak_rss_mb_4x']} vs {mem['peak_rss_mb_1x']} MB)",
            "<= 1.2x",
        )
    )
    return _report(args, figures, rows)


def _report(args: argparse.Namespace, figures: dict[str, Any], rows: list[Any]) -> int:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    report = (
        f"# Accuracy on real data ({when})\n\n{platform.processor() or platform.machine()}, "
        "CPU; test images never seen by either trainer\n\n| figure | value | target |\n"
        "| --- | ---: | --- |\n" + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    )
    return write(args, "accuracy", when, figures, report)


if __name__ == "__main__":
    raise SystemExit(main())
