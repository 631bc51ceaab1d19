"""Inference with an int8 model, and the inference check: the exported model reloaded from
disk in a fresh process must predict what the in-memory model predicted.

  python -m pipeline.models.inference check MODEL_DIR SAMPLES.npz   (prints predictions as JSON)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import JobError
from pipeline.models.modelfile import load_int8
from pipeline.nn.model import ModelSpec, build, normalise
from pipeline.nn.quantize import run

# torch at the top: every importer (the engines' torch_int8, the CLI's infer and speed, the
# recipe, the deploy step) imports this module inside the function that runs a model.


def predict(model: Any, images: np.ndarray, normalisation: dict[str, list[float]]) -> np.ndarray:
    """Class probabilities, (N, classes), for images (N, C, H, W) in [0, 1]."""
    logits = run(model, normalise(images.astype(np.float32), normalisation))
    return torch.softmax(logits, dim=1).numpy()


def latency_ms(model: Any, x: Any, repeats: int) -> float:
    """Median milliseconds for one forward pass of `x` (after one warm-up pass)."""
    run(model, x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(model, x)
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def speed(int8: Any, spec: dict[str, int], repeats: int = 50) -> dict[str, float]:
    """int8 against fp32 on this machine: batch-1 latency and batch-64 throughput. The fp32
    model is the same architecture with fresh weights (speed does not depend on them)."""
    fp32 = build(ModelSpec.from_dict(spec)).eval()
    one = torch.rand(1, spec["in_channels"], spec["height"], spec["width"])
    batch = one.repeat(64, 1, 1, 1)
    figures = {
        "int8_batch1_ms": latency_ms(int8, one, repeats),
        "fp32_batch1_ms": latency_ms(fp32, one, repeats),
        "int8_batch64_per_s": 64_000 / latency_ms(int8, batch, max(5, repeats // 5)),
        "fp32_batch64_per_s": 64_000 / latency_ms(fp32, batch, max(5, repeats // 5)),
    }
    return {k: round(v, 3) for k, v in figures.items()}


def check_in_fresh_process(
    model_dir: Path, samples: np.ndarray, expected: np.ndarray
) -> dict[str, Any]:
    """Reload the exported model in a new interpreter; JobError unless predictions agree."""
    samples_path = model_dir.parent / "inference-check.npz"
    np.savez(samples_path, x=samples)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.models.inference",
            "check",
            str(model_dir),
            str(samples_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        raise JobError(
            f"inference check: the exported model did not load in a fresh process: "
            f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}"
        )
    predicted = np.asarray(json.loads(result.stdout)["predictions"])
    agree = int((predicted == expected).sum())
    if agree != len(expected):
        raise JobError(
            f"inference check: the reloaded model agrees on {agree}/{len(expected)} "
            "held-out samples"
        )
    return {"samples": len(expected), "agree": agree}


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] != "check":
        print(
            "usage: python -m pipeline.models.inference check MODEL_DIR SAMPLES.npz",
            file=sys.stderr,
        )
        return 2
    model, meta = load_int8(Path(argv[1]))
    with np.load(argv[2], allow_pickle=False) as data:
        samples = data["x"]
    probabilities = predict(model, samples, meta.normalisation)
    print(json.dumps({"predictions": probabilities.argmax(1).tolist()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
