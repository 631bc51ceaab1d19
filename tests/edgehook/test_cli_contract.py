"""The CLI's contract on hostile or mistaken input (issue 21): every failure is one line
naming the thing, exit 1 (2 for a config or argument error, as argparse and ConfigError
have it), never "internal error" (70) and never a hang."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from core.config import load_config
from core.errors import JobError
from edgehook.cli import main
from tests.conftest import Workspace

META = {
    "format": 3,
    "spec": {
        "arch": "edgehook-cnn",
        "in_channels": 1,
        "height": 8,
        "width": 8,
        "num_classes": 2,
        "channels": 32,
    },
    "classes": ["a", "b"],
    "normalisation": {"mean": [0.5], "std": [0.25]},
    "engine": "x86",
    "metrics": {"int8_accuracy": 0.9},
    "weights_sha256": "0" * 64,
}


def model_dir(root: Path, meta: object = None, text: str | None = None) -> Path:
    model = root / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    (model / "model.json").write_text(text if text is not None else json.dumps(meta or META))
    return model


def with_spec(**changes: object) -> Callable[[Path], Path]:
    return lambda root: model_dir(root, {**META, "spec": {**META["spec"], **changes}})  # type: ignore[dict-item]


def json_dir(root: Path) -> Path:
    model = model_dir(root)
    (model / "model.json").unlink()
    (model / "model.json").mkdir()
    return model


def fifo_json(root: Path) -> Path:
    model = model_dir(root)
    (model / "model.json").unlink()
    os.mkfifo(model / "model.json")
    return model


def zero_link(name: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        model = model_dir(root)
        (model / name).unlink()
        (model / name).symlink_to("/dev/zero")
        return model

    return make


MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "nested": (lambda r: model_dir(r, text="[" * 100_000 + "]" * 100_000), "nests deeper than"),
    "json_is_a_directory": (json_dir, "model.json is a directory"),
    "json_is_a_fifo": (fifo_json, "model.json is not a regular file"),
    "json_to_dev_zero": (zero_link("model.json"), "model.json is a link to somewhere outside"),
    "weights_to_dev_zero": (
        zero_link("model.safetensors"),
        "model.safetensors is a link to somewhere outside",
    ),
    "height_infinity": (
        lambda r: model_dir(r, text=json.dumps(META).replace('"height": 8', '"height": Infinity')),
        "Infinity, which is not a JSON number",
    ),
    "height_16_5": (with_spec(height=16.5), "spec.height is not a whole number"),
    "height_text": (with_spec(height="16"), "spec.height is not a whole number"),
    "std_text": (
        lambda r: model_dir(r, {**META, "normalisation": {"mean": [0.5], "std": ["x"]}}),
        "normalisation.std is not 1 finite number(s) above 0",
    ),
    "escape_in_class": (
        lambda r: model_dir(r, {**META, "classes": ["a", "\x1b[31mred"]}),
        "class 1 contains the control character U+001B",
    ),
}


def run(workspace: Workspace, *words: str) -> int:
    return main(["--config", str(workspace.config_path), *words])


@pytest.mark.parametrize("command", ["verify", "install", "export"])
@pytest.mark.parametrize("case", MODELS)
def test_hostile_model_dirs_are_one_line_exit_1(
    case: str,
    command: str,
    workspace: Workspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    make, reason = MODELS[case]
    model = make(tmp_path)
    extra = ["--format", "onnx", "--out", str(tmp_path / "m.onnx")] if command == "export" else []
    code = run(workspace, "model", command, str(model), *extra)
    out, err = capsys.readouterr()
    said = out if command == "verify" else err
    assert code == 1, (out, err)
    assert said.count("\n") == 1 and reason in said, said
    assert "internal error" not in out + err


def test_model_verify_of_a_missing_path_says_so(
    workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(workspace, "model", "verify", "./typo") == 1
    assert capsys.readouterr().err == (
        "edgehook: typo does not exist (and is not an artifact name entity/project/name:alias)\n"
    )


@pytest.mark.parametrize(
    ("words", "reason"),
    [
        (["jobs", "show", "99999999999999999999999"], "is not a whole number from 1 to"),
        (["infer", "--top-k", "0", "x.png"], "'0' is not a whole number from 1 to 100"),
        (["infer", "--top-k", "-1", "x.png"], "'-1' is not a whole number from 1 to 100"),
        (["infer", "--top-k", "\u00b2", "x.png"], "is not a whole number from 1 to 100"),
    ],
)
def test_bad_numbers_are_argument_errors(
    words: list[str], reason: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(workspace, *words)
    assert exited.value.code == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    ("setting", "key"),
    [
        ("[watch]\ninterval_s = nan", "watch.interval_s: is nan, not a finite number"),
        ("[predictor]\nfollow_interval_s = nan", "predictor.follow_interval_s: is nan"),
        ("[predictor]\nfollow_interval_s = inf", "predictor.follow_interval_s: is inf"),
        ('[watch]\nartifacts = ["team/proj/ds\\n:production"]', "watch.artifacts"),
        ('[watch]\nartifacts = ["team/proj/ds\\u0000:production"]', "watch.artifacts"),
        ('[watch]\nartifacts = ["../proj/ds:production"]', "watch.artifacts"),
        ("x = " + "[" * 5000 + "]" * 5000, "nests deeper than"),
    ],
)
def test_config_values_that_would_misbehave_are_refused_by_key(
    setting: str, key: str, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    with workspace.config_path.open("a") as handle:
        handle.write("\n" + setting + "\n")
    assert run(workspace, "model", "list") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and key in err, err


def test_config_naming_a_directory_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config", str(tmp_path), "model", "list"]) == 2
    assert f"{tmp_path} is a directory" in capsys.readouterr().err


def test_a_data_dir_that_is_a_file_is_named(
    workspace: Workspace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert run(workspace, "--data-dir", str(tmp_path / "file"), "model", "list") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--data-dir: {tmp_path / 'file'} is not a directory" in err


def test_a_relative_data_dir_is_relative_to_the_working_directory(
    workspace: Workspace, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    config = load_config(workspace.config_path, {}, cwd=elsewhere, data_dir="data")
    assert config.data_dir == elsewhere.resolve() / "data"
    from_env = load_config(workspace.config_path, {"EDGEHOOK_DATA_DIR": "d"}, cwd=elsewhere)
    assert from_env.data_dir == elsewhere.resolve() / "d"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"PK\x03\x04 truncated"), "is not a readable .npz"),
    ],
)
def test_train_data_problems_are_one_line(
    make: Callable[[Path], None],
    reason: str,
    workspace: Workspace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = tmp_path / "d.npz"
    make(data)
    code = run(workspace, "train", "--data", str(data), "--out", str(tmp_path / "m"))
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and reason in err, err


def test_a_truncated_npz_is_refused_before_training(tmp_path: Path) -> None:
    from pipeline.training.datasets import scan

    np.savez(tmp_path / "d.npz", x=np.zeros((40, 8, 8), np.uint8), y=np.arange(40) % 2)
    data = (tmp_path / "d.npz").read_bytes()
    (tmp_path / "d.npz").write_bytes(data[: len(data) - 200])
    with pytest.raises(JobError, match=r"d\.npz is not a readable \.npz"):
        scan(tmp_path / "d.npz")
