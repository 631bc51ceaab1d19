from receiver.clients import ClientResolver

LOOPBACK = ("127.0.0.1/32", "::1/128")


def headers(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in pairs]


def test_untrusted_peer_headers_are_ignored() -> None:
    resolver = ClientResolver(LOOPBACK)
    assert (
        resolver.resolve("198.51.100.9", headers(("x-forwarded-for", "1.2.3.4"))) == "198.51.100.9"
    )


def test_trusted_tunnel_rightmost_untrusted_forwarded_entry() -> None:
    resolver = ClientResolver(LOOPBACK)
    forged_then_real = headers(("x-forwarded-for", "6.6.6.6, 203.0.113.5"))
    assert resolver.resolve("127.0.0.1", forged_then_real) == "203.0.113.5"
    through_two_trusted = headers(("x-forwarded-for", "203.0.113.5, 127.0.0.1"))
    assert resolver.resolve("127.0.0.1", through_two_trusted) == "203.0.113.5"
    split_lines = headers(("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.6"))
    assert resolver.resolve("::1", split_lines) == "203.0.113.6"


def test_garbage_or_missing_header_falls_back_to_peer() -> None:
    resolver = ClientResolver(LOOPBACK)
    assert resolver.resolve("127.0.0.1", []) == "127.0.0.1"
    assert (
        resolver.resolve("127.0.0.1", headers(("x-forwarded-for", "1.2.3.4, nonsense")))
        == "127.0.0.1"
    )


def test_cf_connecting_ip_only_when_configured() -> None:
    cf = ClientResolver(LOOPBACK, "cf-connecting-ip")
    both = headers(("cf-connecting-ip", "203.0.113.8"), ("x-forwarded-for", "6.6.6.6"))
    assert cf.resolve("127.0.0.1", both) == "203.0.113.8"
    assert ClientResolver(LOOPBACK).resolve("127.0.0.1", both) == "6.6.6.6"
    assert cf.resolve("127.0.0.1", headers(("cf-connecting-ip", "junk"))) == "127.0.0.1"
