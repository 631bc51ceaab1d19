"""Typed reads from a parsed TOML table, each error naming the full key and the fix.

Hand-written rather than pydantic: the receiver's memory budget is tens of MB and this is
the whole of what config validation needs.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any, TypeVar

from core.errors import ConfigError

T = TypeVar("T")
_MISSING = object()


class Table:
    """One TOML table. Every key read is remembered; `finish()` rejects the rest as unknown."""

    def __init__(self, data: Mapping[str, Any], prefix: str) -> None:
        self._data = data
        self._prefix = prefix
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._prefix}.{name}" if self._prefix else name

    def _get(self, name: str, types: tuple[type, ...], default: Any, what: str) -> Any:
        self._seen.add(name)
        value = self._data.get(name, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                raise ConfigError(self.key(name), "is required", f"set {self.key(name)} ({what})")
            return default
        # bool is an int subclass in Python; TOML keeps them apart, so do we.
        if isinstance(value, bool) and bool not in types:
            value = _MISSING
        if value is _MISSING or not isinstance(value, types):
            raise ConfigError(
                self.key(name), f"must be {what}, got {self._data[name]!r}", f"write {what}"
            )
        return value

    def text(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, (str,), default, "a string")

    def integer(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> Any:
        value = self._get(name, (int,), default, "a whole number")
        return _bounded(self.key(name), value, minimum, maximum)

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> Any:
        value = self._get(name, (int, float), default, "a number")
        return _bounded(self.key(name), None if value is None else float(value), minimum, maximum)

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, (bool,), default, "true or false")

    def str_list(self, name: str, default: Any = _MISSING, *, allow_str: bool = False) -> Any:
        types: tuple[type, ...] = (list, str) if allow_str else (list,)
        value = self._get(name, types, default, "a list of strings")
        if isinstance(value, str):
            return (value,)
        if value is None:
            return None
        if not all(isinstance(item, str) for item in value):
            raise ConfigError(self.key(name), "must hold only strings", "quote every entry")
        return tuple(value)

    def table(self, name: str) -> Table:
        value = self._get(name, (dict,), {}, "a table")
        return Table(value, self.key(name))

    def tables(self, name: str) -> list[Table]:
        value = self._get(name, (list,), [], "an array of tables ([[...]])")
        out = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                raise ConfigError(f"{self.key(name)}[{index}]", "must be a table", "use [[...]]")
            out.append(Table(item, f"{self.key(name)}[{index}]"))
        return out

    def raw(self, name: str, default: Any = None) -> Any:
        self._seen.add(name)
        return self._data.get(name, default)

    def finish(self) -> None:
        for name in self._data:
            if name not in self._seen:
                close = difflib.get_close_matches(name, sorted(self._seen), n=1)
                hint = f"did you mean '{self.key(close[0])}'?" if close else "remove it"
                raise ConfigError(self.key(name), "is not a known setting", hint)


def _bounded(key: str, value: Any, minimum: Any, maximum: Any) -> Any:
    if value is None:
        return value
    # NaN compares false with every bound, so it would pass them all: refused first.
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, f"is {value}, not a finite number", "write a number such as 1.5")
    if minimum is not None and value < minimum:
        raise ConfigError(key, f"is {value}, below the minimum {minimum}", f"use >= {minimum}")
    if maximum is not None and value > maximum:
        raise ConfigError(key, f"is {value}, above the maximum {maximum}", f"use <= {maximum}")
    return value
