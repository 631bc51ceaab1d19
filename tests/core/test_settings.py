"""core/settings.py and core/sections.py: each setting declared once, and everything that
shows a setting agrees with its declaration (the loader, docs/configuration.md's table, the
starter file `edgehook init` writes)."""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import pytest

from core.config import load_config, settings_markdown
from core.errors import ConfigError
from core.sections import SECTIONS, WorkerConfig
from core.settings import declared, defaults
from edgehook.init import STARTER_CONFIG
from tests.conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

# What the starter file sets on purpose, unlike the embedded defaults.
STARTER_VALUES = {
    "data_dir": "data",
    "secrets.access_token_file": "secrets/access_token",
    "secrets.signing_secret_files": ["secrets/signing_secret"],
    "secrets.audit_key_file": "secrets/audit_key",
    "secrets.model_signing_key_file": "secrets/model_signing_key",
    "secrets.console_token_file": "secrets/console_token",
}


def test_the_configuration_doc_table_is_the_declarations() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text()
    start = doc.index("<!-- settings:")
    block = doc[doc.index("\n", start) + 1 : doc.index("<!-- /settings -->")]
    assert block == settings_markdown(), (
        "docs/configuration.md is stale: paste core.config.settings_markdown()"
    )


def test_every_section_field_is_declared_with_a_doc() -> None:
    for _, cls in SECTIONS:
        assert [f.name for f in fields(cls)] == [f.name for f in declared(cls)], cls
        assert all(f.metadata["doc"] for f in declared(cls)), cls


def test_an_empty_config_loads_every_declared_default(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    for name, cls in SECTIONS[1:]:
        loaded = defaults(type(getattr(config, name)))
        expected = defaults(cls)
        if cls is WorkerConfig:  # its heartbeat default is computed: min(10, lease_s / 3)
            expected["heartbeat_s"] = min(10.0, expected["lease_s"] / 3)
        assert {k: getattr(getattr(config, name), k) for k in loaded} == expected, name


def test_every_declared_default_is_inside_its_own_bounds(tmp_path: Path) -> None:
    for name, cls in SECTIONS:
        for f in declared(cls):
            low, high, choices = (f.metadata[k] for k in ("min", "max", "choices"))
            if low is not None:
                assert f.default >= low, (name, f.name)
            if high is not None:
                assert f.default <= high, (name, f.name)
            if choices is not None:
                assert f.default in choices, (name, f.name)


def test_the_starter_file_agrees_with_the_declarations() -> None:
    starter = tomllib.loads(STARTER_CONFIG)
    for prefix, cls in SECTIONS:
        table = starter if not prefix else starter.get(prefix, {})
        for f in declared(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            if f.name not in table:
                continue
            expected = STARTER_VALUES.get(key, f.default)
            value = table[f.name]
            if isinstance(expected, tuple):
                expected = list(expected)
            assert value == expected, f"{key}: starter says {value!r}, declared {expected!r}"
    assert {k for k in STARTER_VALUES} <= {
        f"{p}.{k}" if p else k for p, t in _tables(starter) for k in t
    }


def _tables(starter: dict[str, object]) -> list[tuple[str, dict[str, object]]]:
    top = {k: v for k, v in starter.items() if not isinstance(v, dict)}
    return [("", top), *((k, v) for k, v in starter.items() if isinstance(v, dict))]


@pytest.mark.parametrize(
    ("toml", "key", "problem"),
    [
        ('[tunnel]\nprovider = "frp"', "tunnel.provider", "'frp' is not a choice"),
        ("[worker]\nlease_s = 4\nheartbeat_s = 3", "worker.heartbeat_s", "is 3.0, above the"),
        ("[server]\nport = 0", "server.port", "is 0, below the minimum 1"),
        ("[dedupe]\nwindow = 5", "dedupe.window", "is not a known setting"),
    ],
)
def test_the_loader_refuses_what_the_declarations_forbid(
    tmp_path: Path, toml: str, key: str, problem: str
) -> None:
    path = tmp_path / "edgehook.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(path, {}, cwd=tmp_path)
    assert exc.value.key == key
    assert exc.value.problem.startswith(problem), exc.value.problem
