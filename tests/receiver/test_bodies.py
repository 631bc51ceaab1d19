import asyncio
from collections.abc import AsyncIterator

import pytest

from core.errors import Rejection
from receiver.bodies import check_declared_length, read_capped


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def test_declared_length_over_the_cap_is_413_before_reading() -> None:
    check_declared_length("1024", 1024)
    check_declared_length(None, 1024)
    with pytest.raises(Rejection) as exc:
        check_declared_length("1025", 1024)
    assert exc.value.status == 413
    with pytest.raises(Rejection) as exc:
        check_declared_length("-1", 1024)
    assert exc.value.status == 400


def test_bytes_are_counted_while_reading_whatever_was_declared() -> None:
    assert asyncio.run(read_capped(chunks(b"a" * 512, b"b" * 512), 1024)) == b"a" * 512 + b"b" * 512
    with pytest.raises(Rejection) as exc:
        asyncio.run(read_capped(chunks(*[b"x" * 100] * 11), 1024))
    assert exc.value.status == 413
