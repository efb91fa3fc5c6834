"""TLS for both sides of the proxy (SPEC §9, issue 19): the listener's server context, built
from `listen.tls` and renewed on reload without dropping a connection, the verified client
certificate's subject, and the client contexts of `https://` upstreams.

Server defaults: TLS 1.2 or 1.3 only (`min_version` may raise it to 1.3), for TLS 1.2 only
ECDHE key exchange with AEAD ciphers (AES-GCM, ChaCha20-Poly1305), no compression, no
renegotiation, ALPN `http/1.1`.

Reload: the listening socket keeps the context it was created with (the "front" context), and
every handshake is moved, from its SNI callback (called for every ClientHello, with or without
a server name), onto the context built from the files as they were at the last successful
load. A renewed certificate therefore reaches new connections at once, connections already
open keep theirs, and a file that does not load leaves the running context as it was.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509

if TYPE_CHECKING:
    from gateway.config import TlsConfig

log = logging.getLogger(__name__)

TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
CLIENT_CERT_MODES = {"optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
# TLS 1.2: forward secrecy (ECDHE) and AEAD only; TLS 1.3's suites are all AEAD already.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
ALPN = ["http/1.1"]
# The header an upstream gets with the subject of a verified client certificate (mTLS).
CLIENT_SUBJECT_HEADER = "X-Auth-Client-Cert-Subject"


class TlsLoadError(Exception):
    """A certificate, key or CA file that cannot be used; the message says which and why,
    `setting` names the config field (`cert`, `client_ca`, `ca_file`)."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(message)
        self.setting = setting


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def server_context(tls: TlsConfig) -> ssl.SSLContext:
    """A server context for `listen.tls`, or TlsLoadError naming the file at fault."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = TLS_VERSIONS[tls.min_version]
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
                        | ssl.OP_CIPHER_SERVER_PREFERENCE)
    context.set_ciphers(SERVER_CIPHERS)
    context.set_alpn_protocols(ALPN)
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except (OSError, ValueError) as exc:
        raise TlsLoadError("cert", f"cannot load the certificate {tls.cert} with the key "
                           f"{tls.key}: {_describe(exc)}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca)
        except (OSError, ValueError) as exc:
            raise TlsLoadError("client_ca", f"cannot load the client CA {tls.client_ca}: "
                               f"{_describe(exc)}") from None
        context.verify_mode = CLIENT_CERT_MODES[tls.client_cert]
    return context


class ServerTls:
    """The listener's TLS: the context the socket was created with, and the one handshakes are
    moved onto after a reload (see the module's docstring)."""

    def __init__(self, tls: TlsConfig) -> None:
        self.front = server_context(tls)
        self.current = self.front
        self.verify_clients = tls.client_ca is not None
        self.front.sni_callback = self._choose

    def _choose(self, sock: ssl.SSLObject, server_name: str | None,
                context: ssl.SSLContext) -> None:
        current = self.current
        if current is not context:
            sock.context = current  # the certificate, key and client CAs of the last load
        return None

    def reload(self, tls: TlsConfig) -> None:
        """Load the files again; on failure raise TlsLoadError and keep what runs."""
        context = server_context(tls)
        # What an SSL object takes from its first context (protocol versions, whether a client
        # certificate is asked for) follows the new settings too.
        self.front.minimum_version = context.minimum_version
        self.front.verify_mode = context.verify_mode
        self.verify_clients = tls.client_ca is not None
        self.current = context


def _escape(value: str) -> str:
    """An RFC 4514 string made safe for a header: bytes outside printable ASCII as `\\hh`
    (RFC 4514 §2.4 hex pairs of the UTF-8 encoding), so CR, LF or NUL never reach the head."""
    if value.isascii() and value.isprintable():
        return value
    out = []
    for char in value:
        if " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def verified_subject(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """The RFC 4514 subject of the client certificate the handshake verified, or None. Only
    asked when the listener verifies clients: OpenSSL then fails any handshake whose client
    certificate does not verify, so a certificate present here is a verified one."""
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    try:
        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    except ValueError:
        return None
    return _escape(subject)


@dataclass(frozen=True, slots=True)
class UpstreamTls:
    """How an `https://` upstream is verified; part of the pool's key, so a connection opened
    under one route's rules never serves a route with other rules."""

    ca_file: Path | None = None  # None: the system's CAs
    verify: bool = True


def upstream_context(settings: UpstreamTls) -> ssl.SSLContext:
    """A client context: the system's CAs (or `ca_file`), host name checked against the
    upstream URL's host (also sent as SNI), ALPN http/1.1. TlsLoadError for a bad CA file."""
    try:
        context = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file is not None else None)
    except (OSError, ValueError) as exc:
        raise TlsLoadError("ca_file", f"cannot load the CA file {settings.ca_file}: "
                           f"{_describe(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
