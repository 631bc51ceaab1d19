"""Fixtures the fault matrix shares with the worker tests."""

from tests.pipeline.conftest import run_worker  # noqa: F401 (a fixture, used by name)
