"""`edgehook init`: a starter config, fresh random secrets (mode 0600), and what to enter in W&B."""

from __future__ import annotations

import secrets
from pathlib import Path

from core.config import DEFAULT_CONFIG_NAME
from core.credentials import write_secret_file
from core.errors import EdgehookError
from edgehook.template import template_text
from pipeline.models.signing import generate

STARTER_CONFIG = """\
# edgehook configuration. Every key is optional; shown are the defaults or starter values.
# Reference: docs/configuration.md.
data_dir = "data"

[server]
host = "127.0.0.1"        # loopback: the tunnel is the only way in
port = 8090
# client_ip_header = "cf-connecting-ip"   # when the tunnel is cloudflared

[secrets]
access_token_file = "secrets/access_token"        # W&B webhook "Access token"
signing_secret_files = ["secrets/signing_secret"] # W&B webhook "Secret"; list several to rotate
audit_key_file = "secrets/audit_key"              # never leaves this device
model_signing_key_file = "secrets/model_signing_key"  # Ed25519; signs the models trained here
console_token_file = "secrets/console_token"      # `edgehook console`: API token and login

[models]
promotion_tolerance = 0.01   # a new model must not lose more than this much int8 accuracy
trusted_keys = []            # other signers whose models deploy may accept (edgehook keys show)
allow_unsigned = false

[rate_limit]
requests_per_second = 5.0
burst = 30
auth_failures_per_minute = 6.0
auth_failure_burst = 10

[dedupe]
window_s = 86400

[console]
host = "127.0.0.1"        # `edgehook console`: the operator's pages, loopback only
port = 8092

# With no [[rules]], alias `download` or `retrain` added to an artifact queues `retrain`.
# [[rules]]
# name = "retrain"
# event = "ADD_ARTIFACT_ALIAS"
# alias = ["retrain"]
# action = "retrain"
# [rules.args]
# epochs = { type = "int", min = 1, max = 50, default = 3 }
"""

SECRET_NAMES = ("access_token", "signing_secret", "audit_key", "console_token")
SIGNING_KEY = "model_signing_key"


def run_init(directory: Path) -> str:
    """Create the files; return what to print. Refuses to overwrite anything."""
    config_path = directory / DEFAULT_CONFIG_NAME
    targets = [config_path] + [
        directory / "secrets" / name for name in (*SECRET_NAMES, SIGNING_KEY)
    ]
    existing = [str(p) for p in targets if p.exists()]
    if existing:
        raise EdgehookError(
            f"refusing to overwrite {', '.join(existing)}; remove them or choose another --dir"
        )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "secrets").mkdir(mode=0o700, exist_ok=True)
    values = {name: secrets.token_urlsafe(32) for name in SECRET_NAMES}
    for name, value in values.items():
        write_secret_file(directory / "secrets" / name, value)
    public_key = generate(directory / "secrets" / SIGNING_KEY)
    config_path.write_text(STARTER_CONFIG, encoding="utf-8")
    return f"""\
Wrote {config_path} and {directory / "secrets"}/ (mode 0600).

In W&B, Team Settings > Secrets, add two secrets:
  EDGEHOOK_ACCESS_TOKEN   = {values["access_token"]}
  EDGEHOOK_SIGNING_SECRET = {values["signing_secret"]}
Then Team Settings > Webhooks > New webhook:
  URL           https://<your tunnel host>/webhook   (scripts/start_tunnel.sh prints it)
  Access token  EDGEHOOK_ACCESS_TOKEN
  Secret        EDGEHOOK_SIGNING_SECRET
Automation payload (recommended template):
{template_text()}

This device's model signing key (trusted by default; add it to other devices'
[models] trusted_keys to let them deploy models trained here):
  {public_key}

Next: edgehook serve --config {config_path}   and   edgehook worker --config {config_path}
The operator console: edgehook console --config {config_path}, then http://127.0.0.1:8092/
(log in with the token in {directory / "secrets" / "console_token"}).
"""
