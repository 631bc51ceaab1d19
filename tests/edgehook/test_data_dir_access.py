"""A data dir edgehook cannot use (issue 21): one that is a file, or one it may not write.
Each command that needs it answers one line naming the path, and changes nothing.

Read-only is driven for real: the suite runs as root in CI, and root ignores permission
bits, so the commands run with CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped from the
bounding set (setpriv), which makes root obey the owner bits of a 0555 directory as any
user does. As another user the chmod alone does it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgehook.cli import main
from pipeline.models import registry, signing
from pipeline.models.modelfile import save
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train
from tests.conftest import ROOT, Workspace, free_port

AS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")


@pytest.mark.parametrize(
    "words",
    [["model", "install", "x"], ["worker", "--once"], ["serve"], ["predictor"], ["rollback"]],
    ids=lambda words: " ".join(words[:2]),
)
def test_a_data_dir_that_is_a_file_is_named_in_the_config(
    workspace: Workspace, tmp_path: Path, words: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    workspace.edit('data_dir = "data"', f'data_dir = "{tmp_path / "file"}"')
    if words == ["rollback"]:
        words = ["model", "rollback"]
    assert main(["--config", str(workspace.config_path), *words]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"edgehook: config error: data_dir: {tmp_path / 'file'} is not a directory; "
        "fix: name a directory (edgehook creates it when missing)\n"
    )
    assert (tmp_path / "file").read_text() == ""


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readonly")
    synthetic.write_npz(root / "data", *synthetic.make(per_class=10, size=16))
    trained = train(read_dataset(root / "data"), TrainConfig(epochs=1, lr=0.05), log=lambda _: None)
    for name in ("a", "b"):
        save(root / name, trained, sources=[name])
    return root


@pytest.fixture
def read_only(workspace: Workspace, two_models: Path) -> Iterator[Path]:
    """A device with two installed models (b active), then its data dir made read-only."""
    key = signing.load_private(workspace.dir / "secrets" / "model_signing_key")
    for name in ("a", "b"):
        shutil.copytree(two_models / name, workspace.dir / name)
        signing.sign(workspace.dir / name, key)
        install = ["model", "install", str(workspace.dir / name)]
        assert main(["--config", str(workspace.config_path), *install]) == 0
    data = workspace.config().data_dir
    modes = {path: path.stat().st_mode for path in [data, *data.rglob("*")] if path.is_dir()}
    for path in modes:
        path.chmod(0o555)
    yield data
    for path, mode in modes.items():
        path.chmod(mode)


def run_unprivileged(workspace: Workspace, *words: str) -> subprocess.CompletedProcess[str]:
    prefix: list[str] = []
    if AS_ROOT:
        if SETPRIV is None:
            pytest.skip("setpriv (util-linux) is needed to drop root's permission override")
        prefix = [SETPRIV, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    return subprocess.run(
        [*prefix, sys.executable, "-m", "edgehook", "--config", str(workspace.config_path), *words],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.slow  # four CLI processes that import torch (about 15 s)
def test_a_read_only_data_dir_is_one_line_and_changes_nothing(
    workspace: Workspace, read_only: Path
) -> None:
    models = read_only / "models"
    before = registry.state(models)
    denied = "Permission denied"
    registry_denied = f"cannot write the model registry {models}: {denied}"
    expected = {
        ("model", "install", str(workspace.dir / "a")): registry_denied,
        ("model", "rollback"): registry_denied,
        ("worker", "--once"): f"{denied}: {read_only / 'worker.lock'}",
        ("predictor", "--port", str(free_port())): f"{denied}: {read_only / 'audit' / 'predictor'}",
    }
    for words, message in expected.items():
        result = run_unprivileged(workspace, *words)
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        assert (result.returncode, last) == (1, f"edgehook: {message}"), (words, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert registry.state(models) == before
