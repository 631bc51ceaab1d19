import os
from pathlib import Path

import pytest

from core.config import find_config, load_config
from core.credentials import load_audit_key, load_secrets
from core.errors import ConfigError
from tests.conftest import Workspace


def test_defaults_without_a_file(tmp_path: Path) -> None:
    config = load_config(None, {}, cwd=tmp_path)
    assert config.server.host == "127.0.0.1" and config.server.port == 8090
    assert config.server.max_body_bytes == 64 * 1024
    assert config.data_dir == tmp_path / "edgehook-data"
    assert config.duplicate_window_s == 86400
    assert [rule.name for rule in config.rules] == ["default-retrain"]


def test_environment_overrides(tmp_path: Path) -> None:
    env = {
        "EDGEHOOK_DATA_DIR": str(tmp_path / "d"),
        "EDGEHOOK_PORT": "9001",
        "EDGEHOOK_HOST": "::1",
    }
    config = load_config(None, env, cwd=tmp_path)
    assert (config.data_dir, config.server.port, config.server.host) == (
        tmp_path / "d",
        9001,
        "::1",
    )
    assert load_config(None, env, cwd=tmp_path, data_dir="x").data_dir == tmp_path / "x"


def test_model_signing_key_file_from_the_environment(workspace: Workspace) -> None:
    # systemd's LoadCredential and Docker secrets hand files over by path
    assert workspace.config().secrets.model_signing_key_file == (
        workspace.dir / "secrets" / "model_signing_key"
    )
    moved = workspace.config(EDGEHOOK_MODEL_SIGNING_KEY_FILE="/run/credentials/x/key")
    assert moved.secrets.model_signing_key_file == Path("/run/credentials/x/key")


def test_init_config_loads_and_secrets_pass(workspace: Workspace) -> None:
    config = workspace.config()
    secrets = load_secrets(config, {})
    assert secrets.access_token == workspace.access_token.encode()
    assert secrets.signing_secrets == (workspace.signing_secret.encode(),)
    assert load_audit_key(config, {}) == workspace.audit_key.encode()
    assert "redacted" in repr(secrets) and workspace.access_token not in repr(secrets)
    for name in ("access_token", "signing_secret", "audit_key"):
        assert (workspace.dir / "secrets" / name).stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[server]\nport = 70000", "server.port"),
        ('[server]\nport = "8090"', "server.port"),
        ("[server]\nprot = 1", "server.prot"),
        ('[server]\ntrusted_proxies = ["nope"]', "server.trusted_proxies"),
        ('[server]\nclient_ip_header = "x-real-ip"', "server.client_ip_header"),
        ("[rate_limit]\nburst = 0", "rate_limit.burst"),
        ("[audit]\nkeep_files = true", "audit.keep_files"),
        ("colour = 1", "colour"),
        ('[watch]\nartifacts = ["team/proj/ds"]', "watch.artifacts"),
        ('[watch]\nartifacts = ["a/b/c:x", "a/b/c:x"]', "watch.artifacts"),
        ("[watch]\ninterval_s = 5", "watch.interval_s"),
        ('[watch]\non_first_sight = "skip"', "watch.on_first_sight"),
        ("[predictor]\nport = 0", "predictor.port"),
        ('[predictor]\nengine = "tensorrt"', "predictor.engine"),
    ],
)
def test_bad_values_name_key_problem_and_fix(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "edgehook.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(path, {}, cwd=tmp_path)
    assert exc.value.key == key
    assert exc.value.problem and exc.value.fix
    assert "\n" not in str(exc.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "edgehook.toml"
    path.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, {}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        find_config(str(tmp_path / "nope.toml"), {}, tmp_path)
    assert find_config(None, {}, tmp_path) == path


def test_bad_port_in_environment(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(None, {"EDGEHOOK_PORT": "http"}, cwd=tmp_path)
    assert exc.value.key == "EDGEHOOK_PORT"


def test_missing_short_or_exposed_secrets_refused(workspace: Workspace, tmp_path: Path) -> None:
    bare = load_config(None, {}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="EDGEHOOK_ACCESS_TOKEN"):
        load_secrets(bare, {})
    with pytest.raises(ConfigError, match="shorter than 24"):
        load_secrets(bare, {"EDGEHOOK_ACCESS_TOKEN": "short", "EDGEHOOK_SIGNING_SECRET": "x" * 30})
    with pytest.raises(ConfigError, match="no signing secret"):
        load_secrets(bare, {"EDGEHOOK_ACCESS_TOKEN": "x" * 30})
    exposed = workspace.dir / "secrets" / "signing_secret"
    os.chmod(exposed, 0o644)
    with pytest.raises(ConfigError) as exc:
        load_secrets(workspace.config(), {})
    assert "chmod 600" in str(exc.value) and workspace.signing_secret not in str(exc.value)


def test_env_secrets_and_rotation_list(workspace: Workspace) -> None:
    old = workspace.dir / "secrets" / "old_secret"
    old.write_text("o" * 30)
    old.chmod(0o600)
    config = workspace.config("")
    text = workspace.config_path.read_text().replace(
        'signing_secret_files = ["secrets/signing_secret"]',
        'signing_secret_files = ["secrets/signing_secret", "secrets/old_secret"]',
    )
    workspace.config_path.write_text(text)
    config = workspace.config()
    env = {"EDGEHOOK_SIGNING_SECRET": "n" * 30, "EDGEHOOK_ACCESS_TOKEN": "a" * 30}
    secrets = load_secrets(config, env)
    assert secrets.signing_secrets == (b"n" * 30, workspace.signing_secret.encode(), b"o" * 30)
    assert secrets.access_token == b"a" * 30
