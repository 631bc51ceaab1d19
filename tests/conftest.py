"""Shared fixtures: an initialised edgehook directory, its config, and an in-process app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from core.config import Config, load_config
from core.store import open_store
from edgehook.init import run_init
from receiver.app import build_app
from receiver.server import make_services
from receiver.services import Services
from receiver.signatures import sign
from tests.pg import TEMPLATE, Cluster, binaries

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Workspace:
    dir: Path
    config_path: Path
    access_token: str
    signing_secret: str
    audit_key: str

    def edit(self, old: str, new: str) -> None:
        text = self.config_path.read_text(encoding="utf-8")
        assert old in text, old
        self.config_path.write_text(text.replace(old, new), encoding="utf-8")

    def config(self, extra: str = "", **env: str) -> Config:
        if extra:
            with self.config_path.open("a", encoding="utf-8") as handle:
                handle.write("\n" + extra)
        return load_config(self.config_path, env, cwd=self.dir)


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    return make_workspace(tmp_path)


def make_workspace(tmp_path: Path) -> Workspace:
    run_init(tmp_path)
    secret = {
        name: (tmp_path / "secrets" / name).read_text().strip()
        for name in ("access_token", "signing_secret", "audit_key")
    }
    return Workspace(
        tmp_path,
        tmp_path / "edgehook.toml",
        secret["access_token"],
        secret["signing_secret"],
        secret["audit_key"],
    )


class Clock:
    """A settable clock: tests move time instead of sleeping."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


def write_audit_lines(workspace: Workspace) -> Path:
    """Two authentic receiver audit lines (202 then 401); returns the segment's path."""
    from core.audit import AuditLog
    from core.config import AuditConfig

    log = AuditLog(
        workspace.dir / "data" / "audit",
        workspace.audit_key.encode(),
        AuditConfig(),
        clock=lambda: 1.8e9,
    )
    log.record("request", status=202, decision="accepted")
    log.record("request", status=401, decision="rejected")
    log.close()
    return workspace.dir / "data" / "audit" / "audit-000001.jsonl"


def edit_audit_line(segment: Path) -> None:
    """Tamper with the second line (401 -> 200), as someone hiding a rejection would."""
    segment.write_text(segment.read_text().replace('"status":401', '"status":200'))


def signed(workspace: Workspace, body: bytes, **headers: str) -> dict[str, str]:
    """The headers W&B sends for `body` (tests override any of them)."""
    base = {
        "content-type": "application/json",
        "authorization": f"Bearer {workspace.access_token}",
        "x-wandb-signature": sign(body, workspace.signing_secret.encode()),
    }
    return {**base, **headers}


def make_client(config: Config, clock: Clock) -> tuple[TestClient, Services]:
    services = make_services(config, {}, clock=clock, monotonic=clock)
    return TestClient(build_app(services), client=("203.0.113.7", 50000)), services


@pytest.fixture
def app_client(workspace: Workspace, clock: Clock) -> Iterator[tuple[TestClient, Services]]:
    client, services = make_client(workspace.config(), clock)
    with client:
        yield client, services


def run_edgehook(
    *words: str,
    cwd: Path,
    config: Path | None = None,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """The `edgehook` command as a user runs it (python -m edgehook), captured."""
    prefix = ["--config", str(config)] if config is not None else []
    return subprocess.run(
        [sys.executable, "-m", "edgehook", *prefix, *words],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=env,
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll an observable state (a row, a file, a process) until it holds; fail after timeout.

    Tests synchronise on this, never on a fixed sleep: a sleep is either too short on a
    loaded machine or too long everywhere else."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting {what}"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path


def start_server(workspace: Workspace, port: int, *extra_env: tuple[str, str]) -> Server:
    """`edgehook serve` as a real process on a loopback port; waits for /healthz."""
    env = {**os.environ, "EDGEHOOK_PORT": str(port), **dict(extra_env)}
    log = workspace.dir / f"serve-{port}.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "edgehook", "--config", str(workspace.config_path), "serve"],
            cwd=workspace.dir,
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"serve exited: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=1):
                return Server(url, process, log)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise AssertionError(f"serve did not answer: {log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """A skipped test proved nothing: say so in red at the end, beside -rs's reasons."""
    skipped = len(terminalreporter.stats.get("skipped", []))
    if skipped:
        terminalreporter.write_line(
            f"edgehook: {skipped} test(s) SKIPPED: this run did not prove everything (reasons "
            "above; scripts/setup.sh installs every tool the suite needs)",
            red=True,
            bold=True,
        )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the session (tests/pg.py), with a migrated template."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (scripts/setup.sh installs it)")
    cluster = Cluster(bin_dir)
    cluster.start()
    try:
        cluster.admin(f"CREATE DATABASE {TEMPLATE}")
        open_store(cluster.url(TEMPLATE)).close()
        yield cluster
    finally:
        cluster.stop("immediate")
        cluster.remove()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    """A database of this test's own, migrated."""
    return pg_cluster.fresh_database()
