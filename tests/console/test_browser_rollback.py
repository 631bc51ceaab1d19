"""A rollback from the console, followed by a real predictor: `edgehook predictor` and
`edgehook console` as processes on one data dir, two small signed models trained for the
test, and Debian's Chromium pressing the model's button and Confirm."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.models import registry, signing
from pipeline.models.modelfile import save
from pipeline.training import synthetic
from pipeline.training.datasets import read_dataset
from pipeline.training.train import TrainConfig, train
from tests.conftest import free_port, make_workspace
from tests.console.test_browser import ARGS, CHROMIUM, WAIT_MS, _start, sync_api

pytestmark = pytest.mark.slow  # trains two models (one batch each) and starts a predictor (torch)


def _health(url: str) -> dict[str, object]:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            return dict(json.loads(answer.read()))
    except OSError:  # not listening yet, or 503 while no model is active
        return {}


def _wait_for_model(url: str, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll the predictor's /healthz until it serves `name`: bounded, no fixed sleep."""
    deadline = time.monotonic() + 60  # the first answer waits for torch to import
    while _health(url).get("model") != name:
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"the predictor never served {name}: {_health(url)}"
        time.sleep(0.05)


def test_roll_a_model_back_with_its_button_and_see_the_predictor_follow(
    tmp_path: Path,
) -> None:
    workspace = make_workspace(tmp_path)
    config = workspace.config()
    key_file = tmp_path / "secrets" / "model_signing_key"
    predictor_port = free_port()
    predictor_url = f"http://127.0.0.1:{predictor_port}"
    log = tmp_path / "predictor.log"
    with log.open("wb") as handle:
        predictor = subprocess.Popen(
            [sys.executable, "-m", "edgehook", "--config", str(workspace.config_path),
             "predictor", "--port", str(predictor_port)],
            cwd=tmp_path, stdout=handle, stderr=subprocess.STDOUT, env=dict(os.environ),
        )  # fmt: skip
    console_port = free_port()
    console: subprocess.Popen[bytes] | None = None
    profile = tmp_path / "chromium-profile"
    try:  # the predictor imports torch while the models train; it follows the registry
        console = _start(tmp_path, workspace.config_path, console_port)
        synthetic.write_npz(tmp_path / "data", *synthetic.make(per_class=10, size=8))
        for name, seed in (("model-b", 1), ("model-a", 0)):  # A promoted last: A is active
            trained = train(
                read_dataset(tmp_path / "data"),
                TrainConfig(epochs=1, seed=seed, stem_width=8, augment=False, dry_run=True),
                log=lambda _: None,
            )
            save(tmp_path / name, trained, sources=["test"])
            signing.sign(tmp_path / name, signing.load_private(key_file))
            registry.install(config.models_dir, tmp_path / name, name, activate=True)
        assert registry.state(config.models_dir)["active"] == "model-a"
        _wait_for_model(predictor_url, "model-a", predictor, log)
        with sync_api.sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=ARGS
            )
            page = context.new_page()
            page.set_default_timeout(WAIT_MS)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"http://127.0.0.1:{console_port}/models")
            page.fill("#token", (tmp_path / "secrets" / "console_token").read_text().strip())
            page.keyboard.press("Enter")
            active = page.locator("#active-model")
            sync_api.expect(active).to_have_text("model-a", timeout=WAIT_MS)
            page.click("#activate-model-b")
            page.get_by_role("button", name="Confirm").click()
            sync_api.expect(page.get_by_role("status")).to_have_text(
                "model model-b is active; the predictor follows it", timeout=WAIT_MS
            )
            sync_api.expect(active).to_have_text("model-b", timeout=WAIT_MS)
            context.close()
        assert errors == []
        _wait_for_model(predictor_url, "model-b", predictor, log)
        health = _health(predictor_url)
        assert health["model"] == "model-b" and health["signer"] == signing.key_id(
            signing.trusted_keys(key_file, ())[0]
        )
    finally:
        predictor.terminate()
        if console is not None:
            console.terminate()
            console.wait(timeout=10)
        predictor.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)
    assert registry.state(config.models_dir)["active"] == "model-b"
