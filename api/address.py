"""Who is asking: the client's address, from the socket's peer or, behind a trusted proxy, its forwarded headers.

Forwarded headers are written by whoever sends the request, so they count only when the peer is a proxy the
operator listed in TRUSTED_PROXIES (empty by default). Then the hops of `X-Forwarded-For` are read right to left,
skipping trusted proxies, and the first other address is the client, as nginx's real-ip module does with
`real_ip_recursive on`. A malformed hop stops the walk at the last trusted one, so a forged header can never name
an address of the sender's choosing. Only `X-Forwarded-For` is read, the header nginx and ingress controllers
set: RFC 7239 `Forwarded` is passed through untouched by many proxies, so a client could choose it.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence

import falcon

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(entries: Iterable[str]) -> tuple[Network, ...]:
    """Parse addresses or CIDR blocks (already checked by settings)."""
    return tuple(ipaddress.ip_network(entry, strict=False) for entry in entries)


def _address(hop: str) -> str | None:
    """The IP address of one hop (`1.2.3.4`, `1.2.3.4:80`, `[::1]:80`, `"[::1]"`), or None if it is not one."""
    hop = hop.strip().strip('"')
    if hop.startswith("["):
        hop = hop[1:].partition("]")[0]
    elif hop.count(":") == 1:
        hop = hop.partition(":")[0]
    try:
        return str(ipaddress.ip_address(hop))
    except ValueError:
        return None


def _trusted(address: str, trusted: Sequence[Network]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip in net for net in trusted)


def hops(x_forwarded_for: str | None) -> list[str]:
    """The forwarded client chain of `X-Forwarded-For`, oldest first."""
    return [part for part in (x_forwarded_for or "").split(",") if part.strip()]


def client_address(peer: str, chain: Sequence[str], trusted: Sequence[Network]) -> str:
    """The client's address, given the socket peer, the forwarded chain (oldest first) and the trusted proxies."""
    try:
        if not trusted or not _trusted(peer, trusted):
            return peer
    except ValueError:
        return peer
    client = peer
    for hop in reversed(chain):
        address = _address(hop)
        if address is None:
            break
        client = address
        if not _trusted(address, trusted):
            break
    return client


class ClientAddressMiddleware:
    """Works out each request's client address once, first thing, into `req.context.client_ip`."""

    def __init__(self, trusted: Sequence[Network]) -> None:
        self.trusted = tuple(trusted)

    async def process_request(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        """Set req.context.client_ip."""
        peer = req.remote_addr or ""
        chain = hops(req.get_header("X-Forwarded-For")) if self.trusted else []
        req.context.client_ip = client_address(peer, chain, self.trusted)


def client_ip(req: Any) -> str:
    """The address `ClientAddressMiddleware` found (the peer when it did not run)."""
    return getattr(req.context, "client_ip", None) or req.remote_addr or ""
