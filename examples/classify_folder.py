"""Classify the images that appear in a folder with the device's active model, in-process:
the shape of a camera loop that saves frames, or an inbox of photos.

    python examples/classify_folder.py ./frames            # new images, until Ctrl-C
    python examples/classify_folder.py ./frames --once     # what is there now, then exit

load_active() reads edgehook's config as the `edgehook` command does ($EDGEHOOK_CONFIG,
./edgehook.toml) and follows promotions: after the worker promotes a model (or after
`edgehook model install` / `rollback`), the next predict() uses the new one; a model that
does not verify is refused and the old one keeps answering.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core import logs
from pipeline.models.serving import load_active

SUFFIXES = {".png", ".jpg", ".jpeg", ".pgm", ".ppm", ".pbm", ".bmp"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--once", action="store_true", help="classify what is there, then exit")
    parser.add_argument("--config", help="edgehook's config file (default: edgehook's lookup)")
    parser.add_argument("--top-k", type=int, default=3)
    args = parser.parse_args()
    logs.configure("info")  # edgehook's lines (model loaded, swapped, refused) to stderr
    seen: set[Path] = set()
    with load_active(args.config) as model:
        while True:
            new = sorted(
                p for p in args.folder.iterdir() if p.suffix.lower() in SUFFIXES and p not in seen
            )
            for batch in (new[i : i + 32] for i in range(0, len(new), 32)):
                for path, prediction in zip(batch, model.predict(batch, args.top_k), strict=True):
                    others = ", ".join(f"{lab} {score:.2f}" for lab, score in prediction.top[1:])
                    print(
                        f"{path.name}: {prediction.label} {prediction.score:.2f} "
                        f"(then {others}) [{model.model().name}]",
                        flush=True,
                    )
            seen.update(new)
            if args.once:
                return 0
            time.sleep(0.5)


if __name__ == "__main__":
    raise SystemExit(main())
