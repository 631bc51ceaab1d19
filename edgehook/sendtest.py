"""`edgehook send-test`: send exactly what W&B sends, the "Test" button from the command line."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

from core.credentials import Secrets
from core.errors import EdgehookError
from receiver.signatures import sign


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: str


def wandb_headers(body: bytes, secrets: Secrets) -> dict[str, str]:
    """W&B's headers: JSON, the bearer Access token, base64 HMAC under the (first) Secret."""
    return {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {secrets.access_token.decode('utf-8')}",
        "X-Wandb-Signature": sign(body, secrets.signing_secrets[0]),
        "User-Agent": "edgehook-send-test",
    }


def send(url: str, body: bytes, secrets: Secrets, *, timeout_s: float = 10.0) -> Reply:
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise EdgehookError(f"{url} is not an http(s) URL; give e.g. http://127.0.0.1:8090/webhook")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url, data=body, method="POST", headers=wandb_headers(body, secrets)
    )
    try:
        # Bandit B310 (urlopen schemes): send() refused anything but http(s) above.
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310  # nosec B310
            return Reply(response.status, dict(response.headers), response.read().decode())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read().decode("utf-8", "replace"))
