"""`edgehook tunnel` (what scripts/start_tunnel.sh runs): the only way in, without router
port forwarding.

  cloudflared  a quick tunnel (`cloudflared tunnel --url ...`, a new trycloudflare URL each
               start) or, with tunnel.hostname and a token, a named tunnel (stable URL)
  ngrok        through pyngrok, with NGROK_AUTHTOKEN and an optional reserved domain (a
               quick ngrok URL also changes at every start and breaks the URL saved in W&B)

It checks the receiver is listening, starts the provider, learns the public URL, waits until
`<url>/healthz` answers through the tunnel, records the URL in data_dir/tunnel.json, prints
what to enter in W&B, and stops the tunnel on Ctrl-C or SIGTERM. Binaries are never
downloaded unless --allow-download is given (ngrok only).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from core.config import Config
from core.credentials import read_secret_file_bytes
from core.errors import EdgehookError
from edgehook.template import template_text

QUICK_URL = re.compile(r"https://[-a-z0-9]+\.trycloudflare\.com")
ANY_URL = re.compile(r"https?://[^\s|]+")
STATE = "tunnel.json"


def run_tunnel(
    config: Config,
    env: Mapping[str, str],
    *,
    provider: str | None = None,
    allow_download: bool = False,
    ready_timeout_s: float = 60.0,
) -> int:
    settings = config.tunnel
    chosen = provider or settings.provider
    host, port = config.server.host, config.server.port
    target = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    if not _listening(host, port):
        raise EdgehookError(f"nothing listens on {target}: start `edgehook serve` first")
    stop_event = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop_event.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    stop: Callable[[], None] = lambda: None  # noqa: E731
    try:
        if chosen == "ngrok":
            url, stop = _ngrok(config, env, target, allow_download)
        else:
            url, stop = _cloudflared(config, env, target)
        if not _healthy(url, ready_timeout_s, stop_event):
            raise EdgehookError(
                f"the tunnel came up at {url} but /healthz does not answer "
                "through it; check the provider's dashboard"
            )
        state = {
            "provider": chosen,
            "url": url,
            "webhook_url": f"{url}/webhook",
            "started_at": time.time(),
            "pid": os.getpid(),
        }
        (config.data_dir / STATE).write_text(json.dumps(state, indent=2), encoding="utf-8")
        print(_instructions(chosen, url, settings), flush=True)
        stop_event.wait()
        print("stopping the tunnel", flush=True)
        return 0
    finally:
        stop()
        (config.data_dir / STATE).unlink(missing_ok=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _cloudflared(
    config: Config, env: Mapping[str, str], target: str
) -> tuple[str, Callable[[], None]]:
    settings = config.tunnel
    binary = settings.cloudflared_path or shutil.which("cloudflared")
    if binary is None or not Path(binary).exists():
        raise EdgehookError(
            "cloudflared is not installed: install Cloudflare's package, or set "
            "tunnel.cloudflared_path"
        )
    child_env = {"PATH": env.get("PATH", "/usr/bin:/bin"), "HOME": env.get("HOME", "/")}
    if settings.hostname:
        token = _token(
            env,
            "TUNNEL_TOKEN",
            settings.cloudflared_token_file,
            "tunnel.cloudflared_token_file",
            "a named cloudflared tunnel needs its token",
        )
        # The token goes through the environment, never argv (ps would show it).
        argv = [binary, "tunnel", "--no-autoupdate", "run"]
        child_env["TUNNEL_TOKEN"] = token
    else:
        argv = [binary, "tunnel", "--no-autoupdate", "--url", f"http://{target}"]
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env,
        start_new_session=True,
    )
    stop = _stopper(process)
    if settings.hostname:
        return f"https://{settings.hostname}", stop
    url = _read_url(process, timeout_s=30.0)
    if url is None:
        stop()
        raise EdgehookError("cloudflared did not report a tunnel URL; is this machine online?")
    return url, stop


def _read_url(process: subprocess.Popen[str], timeout_s: float) -> str | None:
    """The quick-tunnel URL cloudflared prints in its banner (it keeps logging afterwards)."""
    found: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        announced = False
        for line in process.stdout:
            if not found:
                match = QUICK_URL.search(line)
                if match is None and announced:
                    match = ANY_URL.search(line)
                announced = announced or "quick tunnel has been created" in line.lower()
                if match is not None:
                    found.append(match.group(0).rstrip("/"))
                    done.set()
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    done.wait(timeout_s)
    return found[0] if found else None


def _ngrok(
    config: Config, env: Mapping[str, str], target: str, allow_download: bool
) -> tuple[str, Callable[[], None]]:
    settings = config.tunnel
    try:
        from pyngrok import conf, ngrok
        from pyngrok.exception import PyngrokError
    except ImportError as exc:
        raise EdgehookError("ngrok needs pyngrok: pip install 'edgehook[tunnel]'") from exc
    token = _token(
        env,
        "NGROK_AUTHTOKEN",
        settings.ngrok_authtoken_file,
        "tunnel.ngrok_authtoken_file",
        "NGROK_AUTHTOKEN is not set (ngrok dashboard)",
    )
    binary = settings.ngrok_path or shutil.which("ngrok")
    if (binary is None or not Path(binary).exists()) and not allow_download:
        raise EdgehookError(
            "ngrok is not installed: install it, set tunnel.ngrok_path, or pass "
            "--allow-download to let pyngrok fetch it"
        )
    ngrok_config = config.data_dir / "ngrok.yml"
    if not ngrok_config.exists():
        fd = os.open(ngrok_config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write('version: "3"\n')
    options: dict[str, Any] = {"domain": settings.domain} if settings.domain else {}
    pyngrok_config = conf.PyngrokConfig(
        ngrok_path=str(binary) if binary else conf.get_default().ngrok_path,
        auth_token=token,
        config_path=str(ngrok_config),
        monitor_thread=False,
    )
    try:
        tunnel = ngrok.connect(f"http://{target}", "http", pyngrok_config=pyngrok_config, **options)
    except (PyngrokError, OSError, http.client.HTTPException) as exc:
        raise EdgehookError(
            f"ngrok failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
        ) from exc
    url = str(tunnel.public_url).rstrip("/")

    def stop() -> None:
        with contextlib.suppress(PyngrokError):
            ngrok.kill(pyngrok_config)

    return url, stop


def _stopper(process: subprocess.Popen[str]) -> Callable[[], None]:
    def stop() -> None:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    return stop


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=2):
            return True
    except OSError:
        return False


def _healthy(url: str, timeout_s: float, stop: threading.Event) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as reply:  # noqa: S310  # nosec B310
                if reply.status == 200:
                    return True
        except OSError:
            pass
        stop.wait(1.0)
    return False


def _token(env: Mapping[str, str], name: str, path: Path | None, key: str, problem: str) -> str:
    """A provider token from the environment, a private file named by ${name}_FILE (systemd's
    LoadCredential, Docker secrets) or the config, or one line saying what to set."""
    token = env.get(name)
    named = env.get(f"{name}_FILE")
    if not token and (named or path is not None):
        source, where = (Path(named), f"{name}_FILE") if named else (path, key)
        assert source is not None
        token = read_secret_file_bytes(source, where).decode().strip()
    if not token:
        raise EdgehookError(f"{problem}: set {name}, {name}_FILE or {key}")
    return token


def _instructions(provider: str, url: str, settings: Any) -> str:
    stable = settings.hostname or settings.domain
    warning = (
        ""
        if stable
        else (
            "\nNOTE: this URL changes every time the tunnel starts, which breaks the URL saved in "
            "W&B;\n      use a reserved ngrok domain (tunnel.domain) or a named cloudflared tunnel "
            "(tunnel.hostname).\n"
        )
    )
    return f"""\
Tunnel up ({provider}): {url}
{warning}
In W&B, Team Settings > Webhooks > New webhook (or edit it):
  URL           {url}/webhook
  Access token  the secret holding edgehook's access token (edgehook init printed it)
  Secret        the secret holding edgehook's signing secret
Automation payload (recommended template):
{template_text()}

Check it end to end: edgehook send-test {url}/webhook
Ctrl-C (or SIGTERM) stops the tunnel."""
