"""The GPU check (issue 24), run by benchmarks/gpu_check.sh on a machine with an NVIDIA GPU:
train on CUDA on the digits and the photos (fp32 phase, QAT, int8 conversion), export fp32
and TensorRT (symmetric Q/DQ) ONNX, build a TensorRT fp16 engine from the first and an int8
engine from the second with TensorRT's Python API, measure each engine's accuracy on the
held-back test images and its batch-1 and batch-64 latency, choose the predictor's engine
on CUDA, and write benchmarks/reports/gpu-DATE.md.

Importable without a GPU or TensorRT (they are imported where used); `--dry-run` checks the
plumbing on the CPU with one batch of each phase and no TensorRT.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_accuracy import test_images, write_sets  # noqa: E402

SETS = ("digits", "photos")
WORKSPACE = 1 << 30  # bytes TensorRT may use while building


def build_engine(onnx_path: Path, int8: bool) -> Any:
    """A serialised TensorRT engine: fp16 from the fp32 export, int8 from the Q/DQ one
    (explicit quantization: TensorRT 10 takes the Q/DQ under the INT8 flag, TensorRT 11
    from the graph alone)."""
    import tensorrt as trt  # type: ignore[import-not-found]  # on the GPU machine only

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE)
    config.set_flag(trt.BuilderFlag.FP16)
    if int8 and hasattr(trt.BuilderFlag, "INT8"):
        config.set_flag(trt.BuilderFlag.INT8)
    shape = tuple(network.get_input(0).shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, (1, *shape), (64, *shape), (64, *shape))
    config.add_optimization_profile(profile)
    serialised = builder.build_serialized_network(network, config)
    if serialised is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path.name}")
    return trt.Runtime(logger).deserialize_cuda_engine(serialised)


class TrtRunner:
    """One engine's execution context, fed and read through CUDA torch tensors."""

    def __init__(self, engine: Any) -> None:
        import torch

        self.torch = torch
        self.engine = engine
        self.context = engine.create_execution_context()
        self.input = engine.get_tensor_name(0)
        self.output = engine.get_tensor_name(1)
        self.stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def __call__(self, x: Any) -> Any:
        torch = self.torch
        self.context.set_input_shape(self.input, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output)), device="cuda")
        self.context.set_tensor_address(self.input, x.data_ptr())
        self.context.set_tensor_address(self.output, out.data_ptr())
        self.context.execute_async_v3(self.stream.cuda_stream)
        self.stream.synchronize()
        return out


def latency_ms(run: Any, x: Any, repeats: int = 50) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def one_set(name: str, data: Path, test: Path, work: Path, dry_run: bool) -> list[str]:
    """The report's rows for one set."""
    import torch

    from pipeline.models.engines import choose
    from pipeline.models.modelfile import save
    from pipeline.models.onnxexport import export
    from pipeline.training.train import TrainConfig, load_data, train

    started = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = TrainConfig(device=device, dry_run=dry_run)
    dataset = load_data(data, config, work)
    trained = train(dataset, config, log=lambda _: None)
    seconds = time.perf_counter() - started
    model = work / f"{name}-model"
    save(model, trained, sources=[name])
    channels, size, _ = dataset.shape
    x, y = test_images(test, size, channels)
    rows = [f"| {name} | training on {device} | {seconds:.1f} s | int8 (val) "
            f"{trained.metrics['int8_accuracy']} |"]  # fmt: skip
    if dry_run or device != "cuda":
        return rows
    exports = {
        "fp16": (work / f"{name}-fp32.onnx", True),
        "int8": (work / f"{name}-trt.onnx", False),
    }
    export(model, exports["fp16"][0], fp32=True)
    export(model, exports["int8"][0], target="tensorrt")
    cuda_x = torch.from_numpy(x).cuda()
    for kind, (path, _) in exports.items():
        built = time.perf_counter()
        run = TrtRunner(build_engine(path, int8=kind == "int8"))
        build_s = time.perf_counter() - built
        answers = np.concatenate(
            [
                run(cuda_x[i : i + 64].contiguous()).argmax(1).cpu().numpy()
                for i in range(0, len(x), 64)
            ]
        )
        one, batch = cuda_x[:1].contiguous(), cuda_x[:64].contiguous()
        rows.append(
            f"| {name} | TensorRT {kind} | built in {build_s:.1f} s | accuracy "
            f"{np.mean(answers == y):.4f}, batch 1 {latency_ms(run, one):.3f} ms, batch 64 "
            f"{latency_ms(run, batch):.3f} ms |"
        )
    choice = choose(model, log=lambda _: None)
    measured = ", ".join(f"{k} {v:.3f} ms" for k, v in choice.measured_ms.items())
    rows.append(f"| {name} | predictor on CUDA | chose {choice.engine.name} | {measured} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "reports")
    args = parser.parse_args()
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    try:
        import tensorrt

        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = "not installed"
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgehook-gpu-") as tmp:
        sets = write_sets(Path(tmp), smoke=args.dry_run)
        for name in SETS:
            data, test = sets[name]
            rows += one_set(name, data, test, Path(tmp), args.dry_run)
    when = datetime.now(timezone.utc)
    report = (
        f"# GPU check ({when:%Y-%m-%d %H:%M} UTC)\n\n{gpu}; TensorRT {trt_version}; torch "
        f"{torch.__version__}\n\n| set | engine | time | figures |\n| --- | --- | --- | --- |\n"
        + "".join(row + "\n" for row in rows)
    )
    print(report)
    if not args.dry_run:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"gpu-{when:%Y-%m-%d}.md").write_text(report, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
