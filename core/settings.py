"""Settings declared once: each config field carries its default, bounds, choices and one line
of documentation (`setting(...)`), and the loader (`read_section`), docs/configuration.md's
table (`markdown_table`) and the starter file's check (tests/core/test_settings.py) all
come from that declaration.

The type comes from the field's annotation: int, float, bool, str, str | None,
tuple[str, ...], Path | None, tuple[Path, ...]. Paths are relative to the config file.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.errors import ConfigError
from core.tables import Table


def setting(
    default: Any,
    doc: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
) -> Any:
    """A config field: its default, bounds or choices, and the line the settings table shows for it
    (`shown` replaces the default in that table, for defaults computed at load time)."""
    meta = {"doc": doc, "min": minimum, "max": maximum, "choices": choices, "shown": shown}
    return dataclasses.field(default=default, metadata=meta)


def read_section(cls: type[Any], t: Table, base: Path) -> Any:
    """An instance of the settings dataclass `cls` from table `t`: every field read with
    its declared type, default and bounds; unknown keys refused (Table.finish)."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if "doc" in f.metadata:
            values[f.name] = _read(t, f, hints[f.name], base)
    t.finish()
    return cls(**values)


def _read(t: Table, f: dataclasses.Field[Any], kind: Any, base: Path) -> Any:
    meta, name = f.metadata, f.name
    if kind is bool:
        return t.flag(name, f.default)
    if kind is int:
        return t.integer(name, f.default, minimum=meta["min"], maximum=meta["max"])
    if kind is float:
        return t.number(name, f.default, minimum=meta["min"], maximum=meta["max"])
    if kind in (str, str | None):
        value = t.text(name, f.default) or (None if kind is not str else "")
        if meta["choices"] is not None and value not in meta["choices"]:
            choices = ", ".join(f'"{c}"' for c in meta["choices"])
            raise ConfigError(t.key(name), f"'{value}' is not a choice", f"use one of {choices}")
        return value
    if kind == tuple[str, ...]:
        return t.str_list(name, f.default)
    if kind == Path | None:
        text = t.text(name, None)
        return resolve(base, text) if text else None
    if kind == tuple[Path, ...]:
        return tuple(resolve(base, p) for p in t.str_list(name, ()))
    raise TypeError(f"{name}: no reader for {kind}")  # a declaration error, caught by tests


def resolve(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def declared(cls: type[Any]) -> Iterator[dataclasses.Field[Any]]:
    """The fields of `cls` that are settings (declared with `setting`)."""
    return (f for f in dataclasses.fields(cls) if "doc" in f.metadata)


def markdown_table(sections: list[tuple[str, type[Any]]]) -> str:
    """docs/configuration.md's table: one row per setting, in declaration order."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for prefix, cls in sections:
        for f in declared(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            rows.append(f"| `{key}` | {_shown(f)} | {f.metadata['doc']} |")
    return "\n".join(rows) + "\n"


def _shown(f: dataclasses.Field[Any]) -> str:
    if f.metadata["shown"] is not None:
        return str(f.metadata["shown"])
    default = f.default
    if default is None:
        return "none"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, tuple):
        return "`[" + ", ".join(f'"{v}"' for v in default) + "]`"
    if isinstance(default, float) and default.is_integer():
        return f"`{int(default)}`"
    return f"`{default}`"


def defaults(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f.default for f in declared(cls)}
