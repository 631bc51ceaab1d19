"""The forged floods of the receiver benchmark (bench_receiver.py): wrk's scripts, running
wrk, and the peer (adnanh/webhook) with the same rule as edgehook's.

Two kinds of forgery: a stranger's (wrong token, refused on the head) and one carrying a
leaked access token (right token, wrong signature: the body must be read and its HMAC
computed before the refusal). Each server gets its own token in the leaked flood, and a
signature in the form it parses (base64 for edgehook, hex for the peer), so both do the
full HMAC before refusing."""

from __future__ import annotations

import http.client
import json
import os
import platform
import re
import socket
import subprocess
import time
from pathlib import Path

from benchmarks.deliveries import FORGED_HEADERS, LEGIT_CLIENT

FORGED_BODY = '{"event_type":"ADD_ARTIFACT_ALIAS","alias":"retrain"}'
FLOOD_ADDRESS = "198.51.100.1"
# The peer's credentials (43 characters, as `edgehook init` makes them).
PEER_TOKEN, PEER_SECRET = "t" * 43, "s" * 43
# Well-formed signatures that match nothing: base64 (edgehook) and hex (the peer).
WRONG_SIGNATURE = {"base64": "A" * 43 + "=", "hex": "0" * 64}

ONE_ADDRESS_LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
%(headers)s
wrk.headers["X-Forwarded-For"] = "%(address)s"
"""
MANY_ADDRESSES_LUA = """
local i = 0
local headers = {}
%(table_headers)s
request = function()
  i = i + 1
  local n = i %% 10000
  headers["X-Forwarded-For"] = "10.1." .. math.floor(n / 256) .. "." .. (n %% 256)
  return wrk.format("POST", nil, headers, '%(body)s')
end
"""


def one_address(headers: dict[str, str], address: str = FLOOD_ADDRESS) -> str:
    lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    return ONE_ADDRESS_LUA % {"body": FORGED_BODY, "headers": lines, "address": address}


def stranger_scripts() -> dict[str, str]:
    """A stranger's forgeries (wrong token) from one address, 10,000 and W&B's own."""
    table = "\n".join(f'headers["{k}"] = "{v}"' for k, v in FORGED_HEADERS.items())
    return {
        "one address": one_address(FORGED_HEADERS),
        "10,000 addresses": MANY_ADDRESSES_LUA % {"body": FORGED_BODY, "table_headers": table},
        "the genuine address": one_address(FORGED_HEADERS, LEGIT_CLIENT),
    }


def leaked_script(token: str, encode: str) -> str:
    """Forgeries carrying the server's right token and a wrong signature, one address."""
    headers = {
        **FORGED_HEADERS,
        "Authorization": f"Bearer {token}",
        "X-Wandb-Signature": WRONG_SIGNATURE[encode],
    }
    return one_address(headers)


def run_wrk(
    url: str, script: str, duration: float, workdir: Path, threads: int = 1
) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx answers) of wrk with 32 connections."""
    lua = workdir / "flood.lua"
    lua.write_text(script)
    out = subprocess.run(
        ["wrk", f"-t{threads}", "-c32", f"-d{max(1, round(duration))}s", "-s", str(lua), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rate, total, int(non_2xx.group(1)) if non_2xx else 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on {port} exited early")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", path)
            conn.getresponse().read()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on {port} did not answer")


def write_peer_hooks(path: Path) -> None:
    """adnanh/webhook's rule equivalent to edgehook's: the bearer value, then the HMAC."""
    hooks = [
        {
            "id": "wandb",
            "execute-command": "/bin/true",
            "trigger-rule-mismatch-http-response-code": 401,
            "trigger-rule": {
                "and": [
                    {
                        "match": {
                            "type": "value",
                            "value": f"Bearer {PEER_TOKEN}",
                            "parameter": {"source": "header", "name": "Authorization"},
                        }
                    },
                    {
                        "match": {
                            "type": "payload-hmac-sha256",
                            "secret": PEER_SECRET,
                            "parameter": {"source": "header", "name": "X-Wandb-Signature"},
                        }
                    },
                ]
            },
        }
    ]
    path.write_text(json.dumps(hooks))


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    peer = subprocess.run(["webhook", "-version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "peer": peer,
    }
