"""The packaging in deploy/: what can be checked without a Docker engine or a systemd host.

Dockerfiles: hadolint. compose: `docker-compose config` (validates and resolves without an
engine) plus the properties that keep the device closed (no published port, the tunnel in
the receiver's network namespace, non-root, read-only, secrets only as files). systemd:
`systemd-analyze verify` plus the sandboxing and credentials. And the entrypoints they all
call start for real here, with the config and secret files exactly as they hand them over.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from core.credentials import write_secret_file
from edgehook.cli import build_parser
from tests.conftest import ROOT, free_port, run_edgehook

DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*.Dockerfile"))
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.skip(f"{name} is not installed here (scripts/setup.sh installs it)")
    return found


def test_the_packaging_files_exist() -> None:
    names = {p.name for p in DOCKERFILES}
    assert names == {"receiver.Dockerfile", "worker.Dockerfile", "worker-jetson.Dockerfile"}
    assert {p.name for p in UNITS} == {
        "edgehook-receiver.service",
        "edgehook-worker.service",
        "edgehook-tunnel.service",
        "edgehook-predictor.service",
        "edgehook-watch.service",
        "edgehook-console.service",
    }


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_a_numeric_non_root_user_and_carry_no_secrets(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users == ["${UID}:${UID}"]
    assert re.search(r"^ARG UID=10001$", text, re.M)
    assert not re.search(r"(?i)^\s*(ENV|ARG)\b.*(token|secret|api_key|password)", text, re.M)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[1] == "**"  # everything out of the build context but what is listed
    assert not any(line.startswith("!") and "secret" in line for line in ignore)


def compose_config(*files: str) -> dict[str, object]:
    binary = shutil.which("docker-compose")
    if binary is not None:
        argv = [binary]
    elif (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
    ):
        argv = ["docker", "compose"]
    else:
        pytest.skip("neither docker-compose nor the compose plugin is installed here")
    words = [w for f in files for w in ("-f", f)]
    result = subprocess.run(
        [*argv, *words, "config"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        env={**os.environ, "EDGEHOOK_UID": "1234", "EDGEHOOK_GID": "1234"},
    )
    assert result.returncode == 0, result.stderr
    loaded: dict[str, object] = yaml.safe_load(result.stdout)  # both versions print YAML
    return loaded


@pytest.fixture(scope="module")
def compose() -> dict[str, object]:
    return compose_config("compose.yaml")


def services(config: dict[str, object]) -> dict[str, dict[str, object]]:
    found = config["services"]
    assert isinstance(found, dict)
    return found


def test_compose_publishes_no_port_and_the_tunnel_shares_the_receivers_network(
    compose: dict[str, object],
) -> None:
    svc = services(compose)
    assert set(svc) == {"receiver", "worker", "predictor", "console", "watch", "tunnel", "postgres"}
    # the predictor: the device's applications; the console: the operator; postgres
    # (profile): loopback unless POSTGRES_BIND names the address the other machines reach
    loopback = {"predictor": "8091", "console": "8092", "postgres": "5432"}
    for name, service in svc.items():
        if name in loopback:
            published = service["ports"]
            assert isinstance(published, list) and len(published) == 1
            port = published[0]  # compose v1 keeps the short form; v2 writes the long one
            number = loopback[name]
            if isinstance(port, str):
                assert port.removesuffix("/tcp") == f"127.0.0.1:{number}:{number}", port
            else:
                assert (port["host_ip"], str(port["published"])) == ("127.0.0.1", number), port
        else:
            assert "ports" not in service, name
        assert service.get("network_mode") != "host", name
    assert svc["tunnel"]["network_mode"] == "service:receiver"
    image = str(svc["tunnel"]["image"])
    assert image.startswith("cloudflare/cloudflared:") and not image.endswith(":latest")


def test_compose_services_are_non_root_read_only_and_get_secrets_only_as_files(
    compose: dict[str, object],
) -> None:
    for name, service in services(compose).items():
        assert service["user"] == "1234:1234", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name  # type: ignore[operator]
        environment = service.get("environment") or {}
        assert isinstance(environment, dict)
        for key, value in environment.items():
            if re.search("TOKEN|SECRET|KEY", key):
                assert key.endswith("_FILE") and str(value).startswith("/run/secrets/"), key
                secret = str(value).removeprefix("/run/secrets/")
                given = service["secrets"]
                assert isinstance(given, list)
                sources = {g["source"] if isinstance(g, dict) else g for g in given}
                assert secret in sources, (name, key)
    declared = compose["secrets"]
    assert isinstance(declared, dict)
    for secret in declared.values():
        assert set(secret) == {"file"}  # files: nothing inline, nothing from the environment


def test_compose_jetson_override_uses_the_cuda_image_and_nvidia_runtime() -> None:
    merged = services(compose_config("compose.yaml", "compose.jetson.yaml"))
    worker = merged["worker"]
    assert worker["runtime"] == "nvidia"
    assert merged["predictor"]["runtime"] == "nvidia"
    assert merged["predictor"]["image"] == "edgehook-worker:0.1.0-jetson"
    build = worker["build"]
    assert isinstance(build, dict) and build["dockerfile"] == "deploy/worker-jetson.Dockerfile"


def unit_lines(unit: Path) -> list[tuple[str, str]]:
    pairs = []
    for line in unit.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    for unit in UNITS:  # verify checks ExecStart's binary exists: point it at this venv
        text = unit.read_text().replace(
            "/opt/edgehook/venv/bin/edgehook", str(VENV_BIN / "edgehook")
        )
        (tmp_path / unit.name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", *[str(tmp_path / u.name) for u in UNITS]],
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    relevant = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(u.name in line for u in UNITS)
    ]
    assert result.returncode == 0 and not relevant, result.stdout + result.stderr


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_units_are_sandboxed_and_take_secrets_as_credentials(unit: Path) -> None:
    pairs = unit_lines(unit)
    settings = dict(pairs)
    for key, value in {
        "User": "edgehook",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ReadWritePaths": "/var/lib/edgehook",
        "PrivateTmp": "yes",
        "ProtectHome": "yes",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
    }.items():
        assert settings.get(key) == value, (unit.name, key)
    credentials = {v.split(":", 1)[0] for k, v in pairs if k == "LoadCredential"}
    assert credentials
    assert all(
        v.split(":", 1)[1].startswith("/etc/edgehook/secrets/")
        for k, v in pairs
        if k == "LoadCredential"
    )
    referenced = set()
    for key, value in pairs:
        if key == "Environment" and "%d/" in value:
            name, _, path = value.partition("=")
            assert name.endswith("_FILE"), value
            referenced.add(path.removeprefix("%d/"))
        elif key == "Environment":
            assert not re.search("TOKEN|SECRET|KEY", value.partition("=")[0]), value
    assert referenced == credentials


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_exec_start_is_a_real_edgehook_command(unit: Path) -> None:
    argv = dict(unit_lines(unit))["ExecStart"].split()
    assert argv[0] == "/opt/edgehook/venv/bin/edgehook"
    args = build_parser().parse_args(argv[1:])
    assert args.command in {"serve", "worker", "tunnel", "predictor", "watch", "console"}
    assert args.config == "/etc/edgehook/edgehook.toml"


def dockerfile_json(dockerfile: Path, instruction: str) -> list[str]:
    text = dockerfile.read_text().replace("\\\n", " ")
    match = re.search(rf"^{instruction}\s+(?:--\S+\s+)*(?:CMD\s+)?(\[.*\])$", text, re.M)
    assert match, (dockerfile.name, instruction)
    words: list[str] = json.loads(match.group(1))
    return words


def container_env(tmp_path: Path, service: str, compose: dict[str, object]) -> dict[str, str]:
    """The environment compose gives `service`, with its secrets as 0600 files under tmp."""
    env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(tmp_path)}
    env["EDGEHOOK_CONFIG"] = str(DEPLOY / "edgehook.toml")  # what the image bakes in
    env["EDGEHOOK_DATA_DIR"] = str(tmp_path / "data")
    given = services(compose)[service].get("environment") or {}
    assert isinstance(given, dict)
    for key, value in given.items():
        secret = tmp_path / "run-secrets" / str(value).removeprefix("/run/secrets/")
        if not secret.exists():
            write_secret_file(secret, "s3cret-" + "x" * 32)
        env[key] = str(secret)
    return env


def test_the_receiver_image_entrypoint_starts_and_its_healthcheck_passes(
    tmp_path: Path, compose: dict[str, object]
) -> None:
    dockerfile = DEPLOY / "receiver.Dockerfile"
    entry = dockerfile_json(dockerfile, "ENTRYPOINT") + dockerfile_json(dockerfile, "CMD")
    assert entry == ["edgehook", "serve"]
    env = container_env(tmp_path, "receiver", compose)
    env["EDGEHOOK_PORT"] = str(port := free_port())
    process = subprocess.Popen(
        entry, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        check = dockerfile_json(dockerfile, "HEALTHCHECK")
        healthy = subprocess.run(
            [sys.executable, *check[1:]], env=env, capture_output=True, text=True, timeout=30
        )
        assert healthy.returncode == 0, healthy.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    # uvicorn re-raises SIGTERM after a graceful shutdown; systemd and Docker count that as a
    # clean stop (exit status 143 in a container).
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Application shutdown complete" in output
    env["EDGEHOOK_PORT"] = str(free_port())  # nothing listens there: the check must fail
    unhealthy = subprocess.run(
        [sys.executable, *check[1:]], env=env, capture_output=True, text=True, timeout=30
    )
    assert unhealthy.returncode != 0


def test_the_worker_image_entrypoint_starts_and_stops_cleanly(
    tmp_path: Path, compose: dict[str, object]
) -> None:
    pytest.importorskip("torch")
    for name in ("worker.Dockerfile", "worker-jetson.Dockerfile"):
        entry = dockerfile_json(DEPLOY / name, "ENTRYPOINT") + dockerfile_json(DEPLOY / name, "CMD")
        assert entry == ["edgehook", "worker"]
    env = container_env(tmp_path, "worker", compose)
    process = subprocess.Popen(
        ["edgehook", "worker"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        chain = tmp_path / "data" / "audit" / "worker"

        def started() -> bool:
            return any("worker_start" in p.read_text() for p in chain.glob("*.jsonl"))

        while time.monotonic() < deadline and not started():
            assert process.poll() is None, process.communicate()[0].decode()
            time.sleep(0.2)
        assert started(), "the worker did not record its start in its audit chain"
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == 0, output
    verify = run_edgehook("audit", "verify", cwd=tmp_path, env=env)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_every_systemd_unit_raises_its_open_files_limit() -> None:
    units = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
    assert units
    for unit in units:
        limits = [
            int(line.split("=", 1)[1])
            for line in unit.read_text().splitlines()
            if line.startswith("LimitNOFILE=")
        ]
        assert limits and limits[0] >= 4096, unit.name


def test_the_jetson_image_names_the_tensorrt_it_gets() -> None:
    """JetPack 6 (TensorRT 10) by default, JetPack 7 (TensorRT 11) by build argument: the
    build checks the base's TensorRT major version, and docs/tensorrt.md shows both builds."""
    text = (DEPLOY / "worker-jetson.Dockerfile").read_text()
    assert re.search(r"^ARG TENSORRT=10$", text, re.M)
    assert "import sys, tensorrt" in text
    assert "v.split('.')[0] == '${TENSORRT}'" in text
    docs = (ROOT / "docs" / "tensorrt.md").read_text()
    assert "docker build -f deploy/worker-jetson.Dockerfile -t edgehook-worker:jetson ." in docs
    assert "--build-arg TENSORRT=11" in docs and "--build-arg TENSORRT=11" in text
