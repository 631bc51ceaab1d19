import base64
import hashlib
import hmac

from receiver.signatures import parse_signature, sign, signature_valid

BODY = b'{"event_type":"ADD_ARTIFACT_ALIAS"}'
SECRET = b"s" * 32
OTHER = b"o" * 32


def digest(body: bytes = BODY, secret: bytes = SECRET) -> bytes:
    return hmac.new(secret, body, hashlib.sha256).digest()


def test_documented_base64_form_verifies() -> None:
    header = base64.b64encode(digest()).decode()
    assert len(header) == 44
    assert signature_valid(BODY, header, [SECRET])


def test_hex_and_prefixed_hex_forms_verify() -> None:
    assert signature_valid(BODY, digest().hex(), [SECRET])
    assert signature_valid(BODY, "sha256=" + digest().hex(), [SECRET])
    assert signature_valid(BODY, digest().hex().upper(), [SECRET])


def test_sign_matches_wandb_troubleshooting_script_form() -> None:
    assert sign(BODY, SECRET) == base64.b64encode(digest()).decode()


def test_any_active_secret_verifies_for_rotation() -> None:
    header = sign(BODY, OTHER)
    assert signature_valid(BODY, header, [SECRET, OTHER])
    assert not signature_valid(BODY, header, [SECRET])


def test_wrong_body_wrong_secret_missing_or_malformed_fail() -> None:
    header = sign(BODY, SECRET)
    assert not signature_valid(BODY + b" ", header, [SECRET])
    assert not signature_valid(BODY, header, [OTHER])
    assert not signature_valid(BODY, None, [SECRET])
    assert not signature_valid(BODY, "", [SECRET])
    assert not signature_valid(BODY, header[:-2], [SECRET])
    assert not signature_valid(BODY, "sha1=" + digest().hex(), [SECRET])
    assert not signature_valid(BODY, header, [])


def test_parse_signature_rejects_other_lengths() -> None:
    assert parse_signature(base64.b64encode(b"x" * 31).decode()) is None
    assert parse_signature("z" * 64) is None
    assert parse_signature(" " + sign(BODY, SECRET) + " ") == digest()
