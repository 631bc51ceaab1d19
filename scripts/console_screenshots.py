"""Screenshots of each console page from a real run, for docs/console.md and the README.

    .venv/bin/python scripts/console_screenshots.py            # writes docs/img/console-*.png

What scripts/demo.sh does, then the console: `edgehook init` in a temporary directory with
the embedded defaults and the demo's local dataset artifact; `edgehook serve`, `worker` and
`predictor` as processes on free loopback ports; genuine deliveries signed as W&B signs them
(`edgehook send-test`: the sample, a repeat, one naming a version that does not exist, one
whose names disagree, a lost delivery) and refused ones (a forged signature, a wrong token); the
first job trains and promotes a model, the missing version's job fails. Then `edgehook
console` serves that directory and Debian's Chromium (through Playwright) logs in and
photographs each page. A few minutes on two cores (most of it the training job).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
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
from tests.console.test_browser import ARGS, CHROMIUM  # noqa: E402

MARKUP = "<img src=x onerror=alert(1)>"
PAGES = [("overview", "/"), ("deliveries", "/deliveries"), ("jobs", "/jobs"),
         ("job", "/jobs/1"), ("models", "/models"), ("audit", "/audit"),
         ("confirm", None)]  # fmt: skip
JOB_WAIT_S = 900  # the training job on two busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Run:
    """One edgehook directory and the processes started on it."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.processes: list[subprocess.Popen[bytes]] = []
        self.env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
        self.env.pop("EDGEHOOK_CONFIG", None)
        self.env.pop("EDGEHOOK_DATA_DIR", None)

    def edgehook(self, *words: str, check: bool = True) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edgehook", *words], cwd=self.work, env=self.env,
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if check and done.returncode != 0:
            raise SystemExit(f"edgehook {' '.join(words)}: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self, name: str, *words: str) -> None:
        with (self.work / f"{name}.log").open("wb") as log:
            self.processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edgehook", *words],
                    cwd=self.work,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def wait_http(self, name: str, url: str, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.processes[-1].poll() is not None:
                raise SystemExit(f"{name} exited:\n{(self.work / f'{name}.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2):  # noqa: S310  # nosec B310
                    return
            except urllib.error.HTTPError:
                return  # it answers (the predictor says 503 until a model is active)
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"{name} did not answer at {url}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    # Only the run's loopback http URLs reach here (S310).
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  # nosec B310
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def api(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310  # nosec B310
        return json.loads(answer.read())


def drive(run: Run) -> tuple[str, str]:
    """The run up to one finished and one failed job; returns the console's URL and token."""
    work = run.work
    run.edgehook("init", "--dir", str(work))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "demo_artifact.py"),
                    str(work / "artifacts")], check=True)  # fmt: skip
    ports = {name: free_port() for name in ("server", "predictor", "console")}
    toml = (work / "edgehook.toml").read_text()
    toml = re.sub(r"(?m)^port = 8090", f"port = {ports['server']}", toml)
    toml = re.sub(r"(?m)^port = 8092", f"port = {ports['console']}", toml)
    toml += (f'\n[predictor]\nport = {ports["predictor"]}\n\n'
             '[artifacts]\nsource = "local"\nlocal_root = "artifacts"\n')  # fmt: skip
    (work / "edgehook.toml").write_text(toml)
    receiver = f"http://127.0.0.1:{ports['server']}"
    console = f"http://127.0.0.1:{ports['console']}"
    token = (work / "secrets" / "console_token").read_text().strip()

    run.start("serve", "serve")
    run.wait_http("serve", f"{receiver}/healthz")
    run.start("worker", "worker")
    run.start("console", "console")
    run.wait_http("console", f"{console}/login")

    print(run.edgehook("send-test").splitlines()[1])  # accepted: job 1 trains
    print(run.edgehook("send-test").splitlines()[1])  # the repeat: a duplicate
    payloads = {
        "missing": sample_body(artifact_version_string="my-team/edge-demo/cifar10-subset:v7"),
        # refused (its names disagree), so a lost delivery: proven, then refused
        "inconsistent": sample_body(
            project_name=MARKUP, artifact_version_string=f"my-team/{MARKUP}/data:v1"
        ),
    }
    for name, body in payloads.items():
        (work / f"{name}.json").write_bytes(body)
        print(run.edgehook("send-test", "--payload", f"{name}.json", check=False).splitlines()[1])
    access = (work / "secrets" / "access_token").read_text().strip()
    forged = post(f"{receiver}/webhook", b"{}", {"Authorization": f"Bearer {access}",
                  "X-Wandb-Signature": "forged", "Content-Type": "application/json"})  # fmt: skip
    wrong = post(
        f"{receiver}/webhook",
        sample_body(),
        {"Authorization": "Bearer not-the-token", "Content-Type": "application/json"},
    )
    print(f"forged signature: {forged}; wrong token: {wrong}")

    deadline = time.monotonic() + JOB_WAIT_S
    while True:
        jobs = api(f"{console}/api/jobs?limit=50", token)["jobs"]
        states = {job["id"]: job["state"] for job in jobs}
        if states.get(1) == "succeeded" and "failed" in states.values():
            break
        if states.get(1) == "failed":
            raise SystemExit(f"job 1 failed: {jobs}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the jobs did not finish: {states}")
        time.sleep(1)
    print(f"jobs: {states}")
    run.start("predictor", "predictor")
    run.wait_http("predictor", f"http://127.0.0.1:{ports['predictor']}/healthz")
    return console, token


def photograph(console: str, token: str, out: Path, profile: Path) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport={"width": 1280, "height": 900},
        )  # fmt: skip
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{console}/login")
        page.screenshot(path=str(out / "console-login.png"))
        shrink(out / "console-login.png")
        page.fill("#token", token)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{console}/")
        failed = api(f"{console}/api/jobs?state=failed", token)["jobs"][0]["id"]
        page.goto(f"{console}/audit?verify=1")  # the chains as they end now, on every page
        for name, path in PAGES:
            if path is None:  # the confirmation a Retry button asks for
                page.goto(f"{console}/jobs?state=failed")
                page.click(f"#retry-{failed}")
                page.wait_for_selector("#confirm")
            else:
                page.goto(console + path)
                page.wait_for_load_state("networkidle")
            page.screenshot(path=str(out / f"console-{name}.png"))  # one screen: small files
            shrink(out / f"console-{name}.png")
            print(f"wrote {out / f'console-{name}.png'}")
        context.close()
        if errors:
            raise SystemExit(f"errors in the browser console: {errors}")


def shrink(path: Path) -> None:
    """A palette of 128 colours: a page of flat colours and text stays legible at a third
    of the bytes."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=128)
    small.save(path, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    parser.add_argument("--keep", action="store_true", help="keep the run's directory")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="edgehook-shots-"))
    run = Run(work)
    try:
        console, token = drive(run)
        photograph(console, token, args.out, work / "chromium-profile")
    finally:
        run.stop()
        if args.keep:
            print(f"kept {work}")
        else:
            subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
