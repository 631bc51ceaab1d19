"""A console that has served every page has loaded neither torch nor numpy nor wandb."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.console.conftest import site as make_site
site = next(make_site.__wrapped__(Path({tmp!r})))
api, pages = site.api(), site.logged_in()
for path in ("/api/overview", "/api/deliveries", "/api/jobs", "/api/jobs/1", "/api/models",
             "/metrics"):
    assert api.get(path).status_code == 200, path
for path in ("/", "/deliveries", "/jobs", "/jobs/3", "/models", "/audit"):
    assert pages.get(path).status_code == 200, path
print(json.dumps(sorted(m for m in ("torch", "torchvision", "numpy", "wandb")
                        if m in sys.modules)))
"""


def test_a_serving_console_imports_no_torch(tmp_path: Path) -> None:
    code = SCRIPT.format(root=str(ROOT), tmp=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
