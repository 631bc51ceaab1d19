"""Write the offline demo's dataset artifact: a small image-folder tree (one folder per
class, 16x16 greyscale PGM images with a class-dependent pattern) as a local artifact
version my-team/edge-demo/cifar10-subset:v0 with the alias `retrain`.

  python scripts/demo_artifact.py ARTIFACTS_ROOT
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.artifacts import write_local_version

CLASSES = ("horizontal", "vertical", "diagonal")
SIZE = 16


def image(kind: str, rng: random.Random) -> bytes:
    pixels = bytearray()
    for y in range(SIZE):
        for x in range(SIZE):
            on = {"horizontal": y % 4 < 2, "vertical": x % 4 < 2, "diagonal": (x + y) % 4 < 2}[kind]
            pixels.append(max(0, min(255, (200 if on else 40) + rng.randint(-30, 30))))
    return f"P5 {SIZE} {SIZE} 255\n".encode() + bytes(pixels)


def main(root: Path) -> None:
    rng = random.Random(0)  # noqa: S311 - deterministic demo data, not a secret
    files = {f"{kind}/{i:03d}.pgm": image(kind, rng) for kind in CLASSES for i in range(40)}
    write_local_version(root, "my-team/edge-demo/cifar10-subset:v0", files, aliases=("retrain",))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
