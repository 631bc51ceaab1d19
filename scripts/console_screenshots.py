"""Screenshots of each console page from a real run, for docs/console.md.

    .venv/bin/python scripts/console_screenshots.py            # writes docs/img/console-*.png

A fresh workspace gets the test suite's demo data (tests/console/conftest.py: jobs in each
state, deliveries with a lost one, a flood summary and a name holding markup, two signed
models with training curves), a real `edgehook console` serves it on loopback, and Debian's
Chromium (through Playwright) logs in and photographs each page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import free_port, make_workspace  # noqa: E402
from tests.console.conftest import fill_store, make_model, write_deliveries  # noqa: E402
from tests.console.test_browser import ARGS, CHROMIUM, _start  # noqa: E402

PAGES = [("overview", "/"), ("deliveries", "/deliveries"), ("jobs", "/jobs"),
         ("job", "/jobs/3"), ("models", "/models"), ("audit", "/audit"),
         ("confirm", None)]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgehook-shots-") as tmp:
        base = Path(tmp)
        workspace = make_workspace(base)
        config = workspace.config()
        fill_store(config)
        write_deliveries(config, workspace.audit_key.encode())
        key = base / "secrets" / "model_signing_key"
        make_model(config, "job1-attempt1", 0.80, key)
        make_model(config, "job2-attempt1", 0.85, key)
        port = free_port()
        process = _start(base, workspace.config_path, port)
        url = f"http://127.0.0.1:{port}"
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    str(base / "profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
                    viewport={"width": 1280, "height": 900},
                )  # fmt: skip
                page = context.new_page()
                page.goto(f"{url}/login")
                page.screenshot(path=str(args.out / "console-login.png"))
                page.fill("#token", (base / "secrets" / "console_token").read_text().strip())
                page.keyboard.press("Enter")
                page.wait_for_url(f"{url}/")
                for name, path in PAGES:
                    if path is None:  # the confirmation a Retry button asks for
                        page.goto(f"{url}/jobs?state=failed")
                        page.click("#retry-1")
                        page.wait_for_selector("#confirm")
                    else:
                        page.goto(url + path)
                    page.screenshot(path=str(args.out / f"console-{name}.png"), full_page=True)
                    print(f"wrote {args.out / f'console-{name}.png'}")
                context.close()
        finally:
            process.terminate()
            process.wait(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
