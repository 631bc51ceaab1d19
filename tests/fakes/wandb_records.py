"""Read the records of an offline W&B run (run-*.wandb), to check what a job logged.

The file is a 7-byte W&B header, then LevelDB-style log records in 32 KiB blocks (4-byte
CRC, 2-byte little-endian length, 1-byte type: full, first, middle, last), each holding a
protobuf `Record`. The SDK no longer ships a Python reader (it moved into wandb-core).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    offset, pending = HEADER, b""
    while offset + HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < HEADER:
            offset += left_in_block  # block padding
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            break
        record = getattr(wandb_internal_pb2, "Record")()  # noqa: B009 - generated module
        record.ParseFromString(pending)
        pending = b""
        yield record


def _key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


def summarise(path: Path) -> dict[str, Any]:
    """History rows, summary keys, config keys and artifacts of a run."""
    out: dict[str, Any] = {"history": [], "summary": {}, "config": {}, "artifacts": []}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({_key(item): item.value_json for item in record.history.item})
        elif kind == "summary":
            out["summary"].update({_key(item): item.value_json for item in record.summary.update})
        elif kind == "config":
            out["config"].update({_key(item): item.value_json for item in record.config.update})
        elif kind == "artifact":
            artifact = record.artifact
            out["artifacts"].append(
                {
                    "name": artifact.name,
                    "type": artifact.type,
                    "aliases": list(artifact.aliases),
                    "metadata": artifact.metadata,
                    "files": sorted(entry.path for entry in artifact.manifest.contents),
                }
            )
    return out
