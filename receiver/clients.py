"""Who the client is: the socket peer, or the address a trusted local tunnel reports.

Forwarding headers are believed only when the peer is a configured trusted proxy (the
tunnel on loopback); from anyone else they are attacker-controlled text. In
X-Forwarded-For the right-most entry that is not a trusted proxy is the first address
that no trusted hop vouches away: entries to its left may be forged by the client.

This runs for every request, floods included, so addresses are checked with inet_pton
(C) and single trusted hosts by set membership; `ipaddress` only for trusted ranges.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable


class ClientResolver:
    def __init__(self, trusted_proxies: Iterable[str], header: str = "x-forwarded-for") -> None:
        networks = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self._hosts = frozenset(str(n.network_address) for n in networks if n.num_addresses == 1)
        self._ranges = tuple(n for n in networks if n.num_addresses > 1)
        self._header = header.lower().encode("latin-1")

    def trusted(self, address: str) -> bool:
        canonical = canonical_ip(address)
        return canonical is not None and self._trusted(canonical)

    def _trusted(self, canonical: str) -> bool:
        if canonical in self._hosts:
            return True
        if not self._ranges:
            return False
        ip = ipaddress.ip_address(canonical)
        return any(ip in network for network in self._ranges)

    def resolve(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client address for rate limiting and the audit log."""
        if not self.trusted(peer):
            return peer
        values = [value for name, value in headers if name == self._header]
        if not values:
            return peer
        if self._header == b"x-forwarded-for":
            # Several header lines are one comma-separated list, in order.
            entries = [e for v in values for e in v.decode("latin-1").split(",")]
            for entry in reversed(entries):
                canonical = canonical_ip(entry)
                if canonical is None:
                    return peer  # garbage where an address should be: trust nothing left of it
                if not self._trusted(canonical):
                    return canonical
            return peer
        canonical = canonical_ip(values[-1].decode("latin-1"))
        return canonical if canonical is not None else peer


def canonical_ip(text: str) -> str | None:
    """The address in canonical form, or None if `text` is not an IPv4/IPv6 address."""
    text = text.strip().strip("[]")
    family = socket.AF_INET6 if ":" in text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, text)
    except OSError:
        return None
    if family == socket.AF_INET:
        return text  # inet_pton accepts only canonical dotted quads
    return socket.inet_ntop(family, packed)
