"""Who the client is: the socket peer, or the address a trusted local tunnel reports.

Forwarding headers are believed only when the peer is a configured trusted proxy (the
tunnel on loopback); from anyone else they are attacker-controlled text. In
X-Forwarded-For the right-most entry that is not a trusted proxy is the first address
that no trusted hop vouches away: entries to its left may be forged by the client.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ClientResolver:
    def __init__(self, trusted_proxies: Iterable[str], header: str = "x-forwarded-for") -> None:
        self._networks = tuple(ipaddress.ip_network(p, strict=False) for p in trusted_proxies)
        self._header = header.lower().encode("latin-1")

    def trusted(self, address: str) -> bool:
        ip = _ip(address)
        return ip is not None and any(ip in network for network in self._networks)

    def resolve(self, peer: str, headers: Iterable[tuple[bytes, bytes]]) -> str:
        """The client address for rate limiting and the audit log."""
        if not self.trusted(peer):
            return peer
        values = [value for name, value in headers if name == self._header]
        if not values:
            return peer
        if self._header == b"x-forwarded-for":
            # Several header lines are one comma-separated list, in order.
            entries = [e.strip() for v in values for e in v.decode("latin-1").split(",")]
            for entry in reversed(entries):
                ip = _ip(entry)
                if ip is None:
                    return peer  # garbage where an address should be: trust nothing left of it
                if not any(ip in network for network in self._networks):
                    return str(ip)
            return peer
        ip = _ip(values[-1].decode("latin-1").strip())
        return str(ip) if ip is not None else peer


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None
