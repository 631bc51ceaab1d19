"""A model loaded fully in a child process, with a time and memory limit, before anything
is signed, registered or activated (`model export`, `model install`, the predictor's
start-up guard): a model whose numbers torch refuses, or whose load would take the
machine's memory, fails there and not in the process that asked.

  python -m pipeline.models.loadcheck MODEL_DIR   (exit 0, or 1 with one line on stderr)
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

from core.errors import EdgehookError, JobError
from pipeline.models.modelfile import load_int8

TIMEOUT_S = 120.0
# Data segment, not address space: importing torch maps gigabytes of shared CUDA libraries
# it never touches, while what a hostile model could make it allocate is private data.
MEMORY_BYTES = 2 << 30


def _limits() -> None:  # pragma: no cover - runs in the child between fork and exec
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def check_loads(model_dir: Path, timeout_s: float = TIMEOUT_S) -> None:
    """JobError unless the int8 model in `model_dir` loads and answers a probe batch with a
    finite probability per class, in a fresh interpreter within the limits."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline.models.loadcheck", str(model_dir)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            preexec_fn=_limits,
        )
    except subprocess.TimeoutExpired as exc:
        raise JobError(f"the model did not load within {timeout_s:g} s") from exc
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        why = lines[-1][:300] if lines else f"exit status {result.returncode}"
        raise JobError(f"the model does not load: {why}")


def main(argv: list[str]) -> int:
    # numpy and torch (through inference) only in the child that runs this, never in the
    # process that calls check_loads.
    import numpy as np

    # inference imports torch: here, in the child only.
    from pipeline.models.inference import predict

    if len(argv) != 1:
        print("usage: python -m pipeline.models.loadcheck MODEL_DIR", file=sys.stderr)
        return 2
    try:
        model, meta = load_int8(Path(argv[0]))
        spec = meta.spec
        probe = np.random.default_rng(1).random(
            (2, spec["in_channels"], spec["height"], spec["width"]), dtype=np.float32
        )
        out = predict(model, probe, meta.normalisation)
    except EdgehookError as exc:
        print(exc, file=sys.stderr)
        return 1
    except MemoryError:
        print(f"loading it needs more than {MEMORY_BYTES >> 20} MiB", file=sys.stderr)
        return 1
    except (RuntimeError, ValueError, OverflowError) as exc:  # torch refusing the numbers
        print(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return 1
    if out.shape != (2, len(meta.classes)) or not np.isfinite(out).all():
        print(f"it answers {out.shape} values, not a probability per class", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
