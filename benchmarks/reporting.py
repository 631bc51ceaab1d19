"""What every benchmark script shares: its command line (`--smoke`, `--out`) and how it
writes its figures (NAME-DATE.json with the figures, NAME-DATE.md with the table; -smoke
instead of the date for CI's short runs)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def arguments(doc: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="short runs (CI)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def write(
    args: argparse.Namespace, name: str, when: str, figures: dict[str, Any], text: str
) -> int:
    """Print the table and write both files; returns the exit status (0)."""
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-smoke" if args.smoke else f"{name}-{when[:10]}"
    (args.out / f"{stem}.json").write_text(json.dumps({"when": when, **figures}, indent=2))
    (args.out / f"{stem}.md").write_text(text)
    return 0
