"""No server-side request forgery: which endpoint URLs are accepted, and an HTTP client that
connects only to the addresses the rule allows.

An endpoint must be https to a host whose every address is public (`ipaddress`'s `is_global`:
not private, loopback, link-local (the cloud metadata address 169.254.169.254 among them),
shared, reserved, multicast or unspecified). With `GQL_WALLET_WEBHOOKS_ALLOW_LOOPBACK_HTTP`
(development) loopback addresses are allowed too, over http as well. The rule is checked when
an endpoint is created or changed, and again at every connection: the client's network backend
resolves the host itself, checks every address, and connects to the one it checked, so a DNS
answer that changes between the check and the connection cannot slip through. Redirects are
never followed, and proxies from the environment are not used (they would connect for us).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from httpcore._utils import is_socket_readable


class AddressNotAllowed(Exception):
    """The URL, or an address its host resolves to, is not one webhooks may reach."""


def _allowed(address: str, allow_loopback: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return allow_loopback
    return ip.is_global and not ip.is_multicast


async def resolve(host: str, port: int, allow_loopback: bool) -> str:
    """The address to connect to for `host`: every address it resolves to must be allowed."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError) as error:
        raise AddressNotAllowed(f"{host} does not resolve: {error}") from None
    addresses = [str(info[4][0]) for info in infos]
    refused = [a for a in addresses if not _allowed(a, allow_loopback)]
    if not addresses or refused:
        raise AddressNotAllowed(
            f"{host} resolves to {', '.join(refused) or 'nothing'}, which webhooks may not reach"
        )
    return addresses[0]


async def check_url(url: str, allow_loopback: bool) -> str | None:
    """Why `url` cannot be an endpoint, or None if it can."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"Not a valid URL: {error}."
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return "The URL must be https://host/path."
    if parts.username is not None or parts.password is not None:
        return "The URL may not carry a user name or password."
    if parts.scheme == "http" and not allow_loopback:
        return "The URL must be https (http is accepted for loopback in development only)."
    default = 443 if parts.scheme == "https" else 80
    try:
        address = await resolve(parts.hostname, port or default, allow_loopback)
    except AddressNotAllowed as error:
        return f"{error}."
    if parts.scheme == "http" and not ipaddress.ip_address(address.split("%", 1)[0]).is_loopback:
        return "The URL must be https (http is accepted for loopback in development only)."
    return None


class _Stream(httpcore.AsyncNetworkStream):
    """httpcore's stream, with its socket kept: the pool asks every idle connection whether
    its socket is readable on every request, and anyio's answer to "which socket" costs more
    than the question."""

    def __init__(self, inner: httpcore.AsyncNetworkStream, sock: socket.socket | None) -> None:
        self.inner = inner
        self.sock = sock

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self.inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self.inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
    ) -> httpcore.AsyncNetworkStream:
        return _Stream(await self.inner.start_tls(ssl_context, server_hostname, timeout), self.sock)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            return is_socket_readable(self.sock)
        return self.inner.get_extra_info(info)


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's own backend, connecting only to an address `resolve` allowed."""

    def __init__(self, allow_loopback: bool) -> None:
        self.allow_loopback = allow_loopback
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        address = await resolve(host, port, self.allow_loopback)
        # TLS still names `host` (httpcore passes the URL's host as the server name).
        stream = await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
        return _Stream(stream, stream.get_extra_info("socket"))

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Any = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressNotAllowed("webhooks connect over TCP only")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


def guarded_client(allow_loopback: bool, timeout: float, max_connections: int) -> httpx.AsyncClient:
    """An HTTP client for webhook deliveries: no redirects, no proxies, bounded timeouts, and
    connections only to allowed addresses."""
    transport = httpx.AsyncHTTPTransport(retries=0)
    # httpx has no argument for the network backend; its transport is a thin wrapper of this
    # pool (httpx is pinned, and tests/test_webhooks.py connects through it).
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        max_connections=max_connections,
        network_backend=_GuardedBackend(allow_loopback),
    )
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        trust_env=False,
    )
