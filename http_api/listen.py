"""Where and how `pbxctl serve`'s HTTP API listens: loopback in the clear, anything else only over
TLS (aiohttp's ssl context), and which paths answer without a token."""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass

from pbx_base.errors import NotConfigured
from pbx_base.settings import Settings

__all__ = ["Listen", "ListenRefused", "client_context", "is_loopback", "listen_plan"]


class ListenRefused(NotConfigured):
    """The address and TLS settings do not allow serving (names the setting to change)."""


@dataclass(frozen=True)
class Listen:
    host: str
    port: int
    ssl_context: ssl.SSLContext | None
    open_paths: tuple[str, ...]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.ssl_context else 'http'}://{host}:{self.port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name may resolve anywhere


def _server_context(settings: Settings) -> ssl.SSLContext | None:
    cert, key = settings.http_tls_cert, settings.http_tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ListenRefused("PBX_HTTP_TLS_CERT and PBX_HTTP_TLS_KEY: set both or neither")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ListenRefused(f"PBX_HTTP_TLS_CERT/PBX_HTTP_TLS_KEY: cannot load {cert} and {key} ({exc})") from None
    return ctx


def listen_plan(addr: str, settings: Settings) -> Listen:
    """`addr` is HOST:PORT (an empty host is loopback)."""
    host, _, port = addr.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ListenRefused(f"address {addr}: expected HOST:PORT")
    host = host.strip("[]") or "127.0.0.1"
    ctx = _server_context(settings)
    loopback = is_loopback(host)
    if not loopback and ctx is None:
        raise ListenRefused(
            f"address {addr}: not loopback, and the API's bearer tokens must not cross a network in the clear "
            "(set PBX_HTTP_TLS_CERT and PBX_HTTP_TLS_KEY, or listen on 127.0.0.1)"
        )
    open_paths = ("/metrics",) if settings.metrics_open and loopback else ()
    return Listen(host, int(port), ctx, open_paths)


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """What `pbxctl call` trusts: the system's CAs and the server's own certificate (self-signed
    is common for a node's API); None for plain HTTP."""
    if settings.http_tls_cert is None:
        return None
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(settings.http_tls_cert)
    except (OSError, ssl.SSLError) as exc:
        raise ListenRefused(f"PBX_HTTP_TLS_CERT: cannot load {settings.http_tls_cert} ({exc})") from None
    # The certificate itself is a trust anchor even when it is not a CA's (Python 3.13's default).
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx
