"""Coverage-guided fuzz targets (atheris, libFuzzer) for the code that reads hostile bytes
before anything else: the payload parser and normaliser, the rule's argument checks, and
the signature header parser.

    python -m tests.fuzz.atheris_targets payload fuzz-corpus/payload -max_total_time=600
    python -m tests.fuzz.atheris_targets args fuzz-corpus/args -max_total_time=600
    python -m tests.fuzz.atheris_targets signature fuzz-corpus/signature -max_total_time=600

The properties: parse_body + to_event either return an Event whose fields are the strict
types W&B sends, each name one safe path component, or raise Rejection with a 400 (nothing
else: any other exception is a crash libFuzzer reports); a str argument the rule accepts
can travel to a job (environment and argv: no NUL, valid UTF-8), or is refused with a 422;
parse_signature returns None or exactly 32 bytes, and signature_valid never raises and
never accepts a header that is not the real HMAC.
tests/fuzz/test_atheris.py runs each for a bounded time in CI.
"""

from __future__ import annotations

import hashlib
import hmac
import sys

import atheris

with atheris.instrument_imports():
    from core.errors import Rejection
    from core.event import Event
    from core.names import path_component
    from core.rules import ArgSpec, Rule
    from pipeline.sandbox import command_environment
    from receiver.payload import parse_body, to_event
    from receiver.signatures import parse_signature, signature_valid

SECRET = b"s" * 32
ARG_RULE = Rule(
    name="fuzz",
    events=frozenset({"ADD_ARTIFACT_ALIAS"}),
    action="command",
    command=("/bin/true",),
    args=(ArgSpec("note", "str"), ArgSpec("text", "str", allow_control=True)),
)


def payload(data: bytes) -> None:
    try:
        event = to_event(parse_body(data, max_depth=16))
    except Rejection as exc:
        assert exc.status == 400, exc.status
        return
    assert isinstance(event, Event)
    assert isinstance(event.event_type, str) and event.event_type
    assert all(isinstance(k, str) for k in event.args)
    for name in (event.entity, event.project, event.collection, event.version, event.alias):
        if name is not None:
            name.encode("utf-8")  # no lone surrogate reaches the SDK or a path
            component = path_component(name)
            assert "/" not in component and "\0" not in component, component
            assert component not in (".", ".."), component


def args(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    name = "note" if provider.ConsumeBool() else "text"
    value = provider.ConsumeUnicode(64)  # any code points, lone surrogates included
    try:
        accepted = ARG_RULE.validate_args({name: value})
    except Rejection as exc:
        assert exc.status == 422, exc.status
        assert len(exc.detail) < 400, exc.detail
        return
    for text in command_environment(accepted, {"entity": value}, 1).values():
        assert "\0" not in text
        text.encode("utf-8")  # what os.fsencode does for the environment


def signature(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    header = provider.ConsumeUnicodeNoSurrogates(80)
    body = provider.ConsumeBytes(provider.remaining_bytes())
    claimed = parse_signature(header)
    assert claimed is None or len(claimed) == 32
    valid = signature_valid(body, header, [SECRET])
    if valid:
        assert claimed == hmac.new(SECRET, body, hashlib.sha256).digest()


TARGETS = {"payload": payload, "args": args, "signature": signature}


def seeds() -> list[bytes]:
    """What W&B really sends (the recommended template, nested, with args): libFuzzer
    mutates from these and gets past the JSON parser into the normaliser at once."""
    import json

    from edgehook.template import sample_body

    body = json.loads(sample_body())
    return [
        sample_body(),
        json.dumps({"client_payload": body, "args": {"epochs": "3", "lr": "0.01"}}).encode(),
        json.dumps({**body, "event_type": "LINK_MODEL", "alias": ""}).encode(),
        json.dumps({**body, "project_name": "quantized edge training"}).encode(),
        json.dumps({**body, "alias": "a\u0000b", "entity_name": "..\ud800"}).encode(),
        b"\x01a\x00b\ud800c\tline\nnext",
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
