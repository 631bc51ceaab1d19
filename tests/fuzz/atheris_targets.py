"""Coverage-guided fuzz targets (atheris, libFuzzer) for the code that reads hostile bytes
before anything else: the payload parser and normaliser, and the signature header parser.

    python -m tests.fuzz.atheris_targets payload fuzz-corpus/payload -max_total_time=600
    python -m tests.fuzz.atheris_targets signature fuzz-corpus/signature -max_total_time=600

The properties: parse_body + normalise either return an Event whose fields are the strict
types W&B sends, or raise Rejection with a 400 (nothing else: any other exception is a
crash libFuzzer reports); parse_signature returns None or exactly 32 bytes, and
signature_valid never raises and never accepts a header that is not the real HMAC.
tests/fuzz/test_atheris.py runs each for a bounded time in CI.
"""

from __future__ import annotations

import hashlib
import hmac
import sys

import atheris

with atheris.instrument_imports():
    from receiver.errors import Rejection
    from receiver.payload import Event, normalise, parse_body
    from receiver.signatures import parse_signature, signature_valid

SECRET = b"s" * 32


def payload(data: bytes) -> None:
    try:
        event = normalise(parse_body(data, max_depth=16))
    except Rejection as exc:
        assert exc.status == 400, exc.status
        return
    assert isinstance(event, Event)
    assert isinstance(event.event_type, str) and event.event_type
    assert all(isinstance(k, str) for k in event.args)


def signature(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    header = provider.ConsumeUnicodeNoSurrogates(80)
    body = provider.ConsumeBytes(provider.remaining_bytes())
    claimed = parse_signature(header)
    assert claimed is None or len(claimed) == 32
    valid = signature_valid(body, header, [SECRET])
    if valid:
        assert claimed == hmac.new(SECRET, body, hashlib.sha256).digest()


TARGETS = {"payload": payload, "signature": signature}


def seeds() -> list[bytes]:
    """What W&B really sends (the recommended template, nested, with args): libFuzzer
    mutates from these and gets past the JSON parser into the normaliser at once."""
    import json

    from receiver.template import sample_body

    body = json.loads(sample_body())
    return [
        sample_body(),
        json.dumps({"client_payload": body, "args": {"epochs": "3", "lr": "0.01"}}).encode(),
        json.dumps({**body, "event_type": "LINK_MODEL", "alias": ""}).encode(),
    ]


def main() -> None:
    """`NAME [CORPUS_DIR ...] [-libfuzzer_flag=...]`; an empty corpus directory is seeded."""
    from pathlib import Path

    name, *flags = sys.argv[1:]
    for directory in (Path(f) for f in flags if not f.startswith("-")):
        directory.mkdir(parents=True, exist_ok=True)
        if not any(directory.iterdir()):
            for index, seed in enumerate(seeds()):
                (directory / f"seed-{index}").write_bytes(seed)
    atheris.Setup([sys.argv[0], *flags], TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
