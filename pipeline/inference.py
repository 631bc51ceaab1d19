"""Inference with an int8 model, and the inference check: the exported model reloaded from
disk in a fresh process must predict what the in-memory model predicted.

  python -m pipeline.inference check MODEL_DIR SAMPLES.npz   (prints predictions as JSON)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import JobError


def predict(model: Any, images: np.ndarray, normalisation: dict[str, list[float]]) -> np.ndarray:
    """Class probabilities, (N, classes), for images (N, C, H, W) in [0, 1]."""
    import torch

    from pipeline.quantize import run
    from pipeline.train import normalise

    logits = run(model, normalise(images.astype(np.float32), normalisation))
    return torch.softmax(logits, dim=1).numpy()


def check_in_fresh_process(
    model_dir: Path, samples: np.ndarray, expected: np.ndarray
) -> dict[str, Any]:
    """Reload the exported model in a new interpreter; JobError unless predictions agree."""
    samples_path = model_dir.parent / "inference-check.npz"
    np.savez(samples_path, x=samples)
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.inference", "check", str(model_dir), str(samples_path)],
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
    from pipeline.modelfile import load_int8

    if len(argv) != 3 or argv[0] != "check":
        print("usage: python -m pipeline.inference check MODEL_DIR SAMPLES.npz", file=sys.stderr)
        return 2
    model, meta = load_int8(Path(argv[1]))
    with np.load(argv[2], allow_pickle=False) as data:
        samples = data["x"]
    probabilities = predict(model, samples, meta["normalisation"])
    print(json.dumps({"predictions": probabilities.argmax(1).tolist()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
