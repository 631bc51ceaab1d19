"""Signed provenance for models: Ed25519 (the cryptography package), no torch.

The device signs every model it exports. The signature (model.sig, JSON) covers a
domain-separated message holding the weights' SHA-256 and the metadata file's SHA-256;
the metadata carries the source artifacts, metrics, training config, device id and time.
`deploy` and fine-tuning accept a model only when a trusted key signed it.

Public keys are written `ed25519:<base64 of the 32 raw bytes>`; a key's id is the first 16
hex digits of the SHA-256 of those bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core import bounded
from core.credentials import read_secret_file_bytes
from core.errors import JobError
from pipeline.models.modelfile import (
    MAX_SIGNATURE_BYTES,
    METADATA,
    SIGNATURE,
    WEIGHTS,
    read_metadata,
    sha256,
)

DOMAIN = b"edgehook-model-signature-v1\n"
PREFIX = "ed25519:"


@dataclass(frozen=True)
class Verified:
    key_id: str
    public_key: str


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PREFIX + base64.b64encode(raw).decode("ascii")


def key_id(public: str) -> str:
    return hashlib.sha256(_raw_public(public)).hexdigest()[:16]


def generate(path: Path) -> str:
    """A new private key at `path` (mode 0600, never overwritten); returns the public key."""
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public = public_text(private.public_key())
    # The public half beside it, readable: what a predictor or application trusts without
    # being able to read the private key.
    public_path(path).write_text(public + "\n", encoding="utf-8")
    return public


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def load_private(path: Path) -> Ed25519PrivateKey:
    data = read_secret_file_bytes(path, "secrets.model_signing_key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except ValueError as exc:
        raise JobError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise JobError(f"{path} is not an Ed25519 key")
    return key


def sign(model_dir: Path, private: Ed25519PrivateKey) -> Verified:
    """Write model.sig for the model in `model_dir` (whose files read_metadata accepts)."""
    read_metadata(model_dir)
    public = public_text(private.public_key())
    signature = private.sign(_message(model_dir))
    record = {
        "algorithm": "ed25519",
        "key_id": key_id(public),
        "public_key": public,
        "weights_sha256": sha256(model_dir / WEIGHTS),
        "metadata_sha256": sha256(model_dir / METADATA),
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    (model_dir / SIGNATURE).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return Verified(record["key_id"], public)


def verify(model_dir: Path, trusted: Iterable[str]) -> Verified:
    """The signer, if one of `trusted` signed exactly these files; otherwise JobError."""
    read_metadata(model_dir)
    path = model_dir / SIGNATURE
    if not path.exists():
        raise JobError("the model is not signed")
    return _check(path, "the model", "the model's files", trusted, _message(model_dir))


FILE_DOMAIN = b"edgehook-weights-signature-v1\n"


def sign_file(path: Path, private: Ed25519PrivateKey) -> Verified:
    """Write PATH.sig: a detached signature of one file (pretrained weights)."""
    public = public_text(private.public_key())
    digest = sha256(path)
    record = {
        "algorithm": "ed25519",
        "key_id": key_id(public),
        "public_key": public,
        "sha256": digest,
        "signature": base64.b64encode(private.sign(FILE_DOMAIN + digest.encode())).decode(),
    }
    sidecar = path.with_name(path.name + ".sig")
    sidecar.write_text(json.dumps(record, indent=2), encoding="utf-8")
    return Verified(record["key_id"], public)


def verify_file(path: Path, trusted: Iterable[str]) -> Verified:
    """The signer, if one of `trusted` signed exactly this file (PATH.sig); else JobError."""
    sidecar = path.with_name(path.name + ".sig")
    if not sidecar.exists():
        raise JobError(
            f"{path.name} is neither pinned (training.pretrained_sha256) "
            f"nor signed ({sidecar.name})"
        )
    return _check(sidecar, path.name, path.name, trusted, FILE_DOMAIN + sha256(path).encode())


def _check(
    record_path: Path, what: str, files: str, trusted: Iterable[str], message: bytes
) -> Verified:
    """The signer named by the signature record at `record_path`, if it is trusted and
    signed exactly `message`; otherwise JobError naming `what` or `files`."""
    try:
        # A FIFO, a device or a link out of the directory is refused, never read.
        inside = record_path.parent if record_path.name == SIGNATURE else None
        record = bounded.read_json(record_path, MAX_SIGNATURE_BYTES, inside=inside)
        public = str(record["public_key"])
        signature = base64.b64decode(record["signature"], validate=True)
    except bounded.Unreadable as exc:
        raise JobError(f"refusing the signature: {exc}") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise JobError(f"{record_path.name} is malformed") from exc
    trusted_ids = {key_id(key): key for key in trusted}
    signer = key_id(public)
    if signer not in trusted_ids:
        raise JobError(f"{what} is signed by key {signer}, which is not trusted")
    try:
        Ed25519PublicKey.from_public_bytes(_raw_public(trusted_ids[signer])).verify(
            signature, message
        )
    except InvalidSignature as exc:
        raise JobError(f"the signature by key {signer} does not match {files}") from exc
    return Verified(signer, trusted_ids[signer])


def trusted_keys(own_key_file: Path | None, configured: Iterable[str]) -> list[str]:
    """This device's own public key (trusted by default; from KEY.pub where `keys init`
    wrote one, else from the private key) and the configured ones."""
    if own_key_file is None:
        return list(configured)
    pub = public_path(own_key_file)
    if pub.is_file():
        own = pub.read_text(encoding="utf-8").strip()
        _raw_public(own)
    else:
        own = public_text(load_private(own_key_file).public_key())
    return [own, *configured]


def _message(model_dir: Path) -> bytes:
    return (
        DOMAIN
        + sha256(model_dir / WEIGHTS).encode()
        + b"\n"
        + sha256(model_dir / METADATA).encode()
        + b"\n"
    )


def _raw_public(text: str) -> bytes:
    if not text.startswith(PREFIX):
        raise JobError(f"'{text[:24]}' is not an ed25519: public key")
    try:
        raw = base64.b64decode(text[len(PREFIX) :], validate=True)
    except ValueError as exc:
        raise JobError("a public key is not valid base64") from exc
    if len(raw) != 32:
        raise JobError("an ed25519 public key is 32 bytes")
    return raw
