"""Screenshots of each console page from a real run, for docs/console.md.

    .venv/bin/python scripts/console_screenshots.py            # writes docs/img/console-*.png

What it runs, offline on loopback in a temporary directory (as scripts/demo.sh does):
`edgehook init`, the demo's local dataset artifact (scripts/demo_artifact.py), then
`edgehook serve` and `edgehook worker` on the embedded defaults. It sends a delivery signed
as W&B signs it (`edgehook send-test`), the same one again (a duplicate), a forgery, one with
a wrong token, and a signed one naming a version the artifact does not have. The worker
retrains on the first (a model is promoted) and fails the second. With `edgehook predictor`
serving the promoted model, `edgehook console` starts and Debian's Chromium (through
Playwright) logs in and photographs each page; the PNGs are reduced to 256 colours.
Takes a few minutes (the retrain). KEEP=1 keeps the directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgehook.template import sample_body  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.console.test_browser import ARGS, CHROMIUM, _start  # noqa: E402

EDGEHOOK = [sys.executable, "-m", "edgehook"]
MISSING = "my-team/edge-demo/cifar10-subset:v7"  # the artifact has v0 only: the job fails
JOB_WAIT_S = 900


def _edgehook(base: Path, *args: str) -> str:
    done = subprocess.run([*EDGEHOOK, *args], cwd=base, capture_output=True, text=True,
                          check=False)  # fmt: skip
    if done.returncode != 0 and "send-test" not in args:  # a refused delivery exits 1
        raise SystemExit(f"edgehook {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip() or done.stderr.strip()


def _spawn(base: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    with (base / f"{name}.log").open("wb") as log:
        return subprocess.Popen([*EDGEHOOK, *args], cwd=base, env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _wait_http(url: str, process: subprocess.Popen[bytes], log: Path, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - http://127.0.0.1 built here
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{url} did not answer:\n{log.read_text()}") from None
            time.sleep(0.1)


def _post(url: str, body: bytes, headers: dict[str, str]) -> str:
    headers = {"Content-Type": "application/json", **headers}
    request = urllib.request.Request(url, body, headers)  # noqa: S310 - loopback, built here
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310
            return f"{answer.status} {answer.read().decode()}"
    except urllib.error.HTTPError as refused:
        return f"{refused.code} {refused.read().decode()}"


def _jobs(base: Path) -> list[dict[str, Any]]:
    lines = _edgehook(base, "jobs", "list", "--json").splitlines()  # one job a line
    return [json.loads(line) for line in lines if line.strip()]


def run(base: Path, out: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    _edgehook(base, "init", "--dir", str(base))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_artifact.py"), "artifacts"],
                   cwd=base, check=True)  # fmt: skip
    server_port, predictor_port, console_port = free_port(), free_port(), free_port()
    config = base / "edgehook.toml"
    text = config.read_text().replace("port = 8090", f"port = {server_port}", 1)
    text += (f'\n[artifacts]\nsource = "local"\nlocal_root = "artifacts"\n'
             f"\n[predictor]\nport = {predictor_port}\n")  # fmt: skip
    config.write_text(text)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        serve = _spawn(base, "serve", "serve")
        processes.append(serve)
        _wait_http(f"http://127.0.0.1:{server_port}/healthz", serve, base / "serve.log", 60)
        processes.append(_spawn(base, "worker", "worker"))
        webhook = f"http://127.0.0.1:{server_port}/webhook"
        token = (base / "secrets" / "access_token").read_text().strip()
        print("genuine:  ", _edgehook(base, "send-test"))
        print("duplicate:", _edgehook(base, "send-test"))
        forged = {"Authorization": f"Bearer {token}", "X-Wandb-Signature": "forged"}
        print("forgery:  ", _post(webhook, sample_body(), forged))
        print("no token: ", _post(webhook, sample_body(), {"Authorization": "Bearer wrong"}))
        payload = base / "missing-version.json"
        payload.write_bytes(sample_body(artifact_version_string=MISSING))
        print("missing:  ", _edgehook(base, "send-test", "--payload", str(payload)))

        deadline = time.monotonic() + JOB_WAIT_S
        while True:
            jobs = _jobs(base)
            if jobs and all(job["state"] in ("succeeded", "failed") for job in jobs):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"jobs still running after {JOB_WAIT_S} s: {jobs}")
            time.sleep(1)
        states = {job["state"]: int(job["id"]) for job in jobs}
        if set(states) != {"succeeded", "failed"}:
            raise SystemExit(f"expected one job to succeed and one to fail: {jobs}")
        print(_edgehook(base, "model", "list"))

        predictor = _spawn(base, "predictor", "predictor")
        processes.append(predictor)
        _wait_http(f"http://127.0.0.1:{predictor_port}/healthz", predictor,
                   base / "predictor.log", 120)  # fmt: skip
        processes.append(_start(base, config, console_port))
        url = f"http://127.0.0.1:{console_port}"
        pages = [("overview", "/"), ("deliveries", "/deliveries"), ("jobs", "/jobs"),
                 ("job", f"/jobs/{states['succeeded']}"), ("models", "/models"),
                 ("audit", "/audit"), ("confirm", None)]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                str(base / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
                viewport={"width": 1200, "height": 800},
            )  # fmt: skip
            page = context.new_page()
            shots = []
            page.goto(f"{url}/login")
            page.screenshot(path=str(out / "console-login.png"))
            shots.append(out / "console-login.png")
            page.fill("#token", (base / "secrets" / "console_token").read_text().strip())
            page.keyboard.press("Enter")
            page.wait_for_url(f"{url}/")
            for name, path in pages:
                if path is None:  # the confirmation the failed job's Retry button asks for
                    page.goto(f"{url}/jobs?state=failed")
                    page.click(f"#retry-{states['failed']}")
                    page.wait_for_selector("#confirm")
                else:
                    page.goto(url + path)
                    page.wait_for_load_state("networkidle")
                target = out / f"console-{name}.png"
                page.screenshot(path=str(target), full_page=True)
                shots.append(target)
            context.close()
        for shot in shots:  # 256 colours: a page of text and flat charts loses nothing visible
            Image.open(shot).convert("RGB").quantize(256).save(shot, optimize=True)
            print(f"wrote {shot} ({shot.stat().st_size // 1024} KiB)")
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:  # the worker stops its job's child first
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="edgehook-shots-"))
    try:
        run(base, args.out.resolve())
    finally:
        if os.environ.get("KEEP") == "1":
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
