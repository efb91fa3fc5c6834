"""Client-side signing for the gateway's HMAC keys (SPEC §4): RFC 9421 with `hmac-sha256`.

    from gateway.client import sign_request, signing_middleware

    headers = sign_request("POST", "https://api.example.com/vision/v1?x=1",
                           key_id="gwh_...", secret="...", body=b'{"a": 1}')
    # -> {"Content-Digest": ..., "Signature-Input": ..., "Signature": ...}

    async with aiohttp.ClientSession(
            middlewares=(signing_middleware("gwh_...", "..."),)) as session:
        await session.post("https://api.example.com/vision/v1", data=b'{"a": 1}')

The signature covers `@method`, `@authority`, `@path`, `@query` (when the URL has one) and
`content-digest` (when there is a body), with `created`, a fresh random `nonce`, `keyid` and
`alg`: what the gateway requires. The base is built by the gateway's own verifier code.

The rule: sign exactly what is sent. HTTP clients rewrite a URL before sending it (`requests`
turns `/%7Euser` into `/~user`, removes `..`, encodes spaces), and the gateway checks the path
and query it receives, so `sign_request` signs `canonical_url(url)`: the URL as `requests` sends
it: pass the same URL to `sign_request` and to `requests` (which sends `canonical_url(url)`
unchanged too, but for encoded dot segments, `%2E%2E`: avoid those). Other clients rewrite URLs
their own way (aiohttp also decodes `%3A`), so with them sign the URL they will send and send
exactly that; `signing_middleware` signs the URL aiohttp is about to send.
"""

from __future__ import annotations

import base64
import re
import secrets
import time
from collections.abc import Mapping
from urllib.parse import SplitResult, urlsplit, urlunsplit

import aiohttp
from http_sfv.item import InnerList, Item
from multidict import CIMultiDict

from gateway.auth.signatures import (
    ALGORITHM,
    RequestFacts,
    authority_of,
    content_digest,
    hmac_sha256,
    required_components,
    signature_base,
)

__all__ = ["canonical_url", "sign_request", "signing_middleware"]

_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar (less '%'), and '/' in a path, '?' too in a query: kept as they are.
_PATH_CHARS = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_CHARS = _PATH_CHARS | frozenset("?")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")


def _percent_encoded(component: str, allowed: frozenset[str]) -> str:
    """Characters outside `allowed` percent-encoded (as UTF-8), escapes in upper case. A `%`
    that does not start an escape makes every `%` of the component literal (`%25`), as
    `requests` (urllib3) does."""
    if "%" not in component and component.isascii() and allowed.issuperset(component):
        return component
    component, escapes = _ESCAPE.subn(lambda m: m.group(0).upper(), component)
    literal_percent = escapes != component.count("%")
    return "".join(
        chr(byte) if byte < 128 and (chr(byte) in allowed
                                     or (byte == 0x25 and not literal_percent))
        else f"%{byte:02X}"
        for byte in component.encode("utf-8", "surrogatepass"))


def _unreserved_decoded(component: str) -> str:
    """Escapes of unreserved characters decoded (RFC 3986 §6.2.2.2): `%7E` -> `~`."""
    if "%" not in component:
        return component
    return _ESCAPE.sub(lambda m: c if (c := chr(int(m.group(0)[1:], 16))) in _UNRESERVED
                       else m.group(0), component)


def _without_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 on the segments as written (an encoded dot is not a dot yet)."""
    output: list[str] = []
    for segment in path.split("/"):
        if segment == ".":
            continue
        if segment != "..":
            output.append(segment)
        elif output:
            output.pop()
    if path.startswith("/") and (not output or output[0]):
        output.insert(0, "")
    if path.endswith(("/.", "/..")):
        output.append("")
    return "/".join(output)


def _split(url: str) -> SplitResult:
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    return parts


def canonical_url(url: str) -> str:
    """`url` as the `requests` library sends it (a form it sends unchanged again):
    scheme and host in lower case (a non-ASCII host in IDNA), dot segments removed, characters
    a URL cannot hold percent-encoded, escapes in upper case and those of unreserved characters
    decoded (`%7E` -> `~`), an empty path as `/`, an empty query and the fragment dropped."""
    parts = _split(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not host.isascii():
        name, colon, port = host.partition(":")
        host = name.encode("idna").decode("ascii") + colon + port
    host = host.lower()
    # In requests' order: encoded, dot segments removed (so `%2E%2E` is not one yet), then
    # unreserved escapes decoded.
    path = _unreserved_decoded(_without_dot_segments(_percent_encoded(parts.path, _PATH_CHARS)))
    query = _unreserved_decoded(_percent_encoded(parts.query, _QUERY_CHARS))
    return urlunsplit((parts.scheme.lower(), userinfo + at + host, path or "/", query, ""))


def sign_request(method: str, url: str, *, key_id: str, secret: str,
                 headers: Mapping[str, str] | None = None, body: bytes | None = None,
                 created: int | None = None, nonce: str | None = None,
                 label: str = "sig1") -> dict[str, str]:
    """The headers to add to a request so the gateway accepts it. The URL signed is
    `canonical_url(url)`, the one `requests` sends for `url` (see the module's docstring)."""
    return _sign(method, canonical_url(url), key_id=key_id, secret=secret, headers=headers,
                 body=body, created=created, nonce=nonce, label=label)


def _sign(method: str, url: str, *, key_id: str, secret: str,
          headers: Mapping[str, str] | None, body: bytes | None, created: int | None,
          nonce: str | None, label: str) -> dict[str, str]:
    """Sign `url` exactly as given."""
    parts = _split(url)
    fields: CIMultiDict[str] = CIMultiDict(headers or {})
    added: dict[str, str] = {}
    if body:
        added["Content-Digest"] = fields["Content-Digest"] = content_digest(body)
    has_query = "?" in url.split("#", 1)[0]
    components = required_components(has_query=has_query, has_body=bool(body))
    inner = InnerList()
    for component in components:
        inner.append(Item(component))
    inner.params["created"] = int(time.time()) if created is None else created
    inner.params["nonce"] = nonce or secrets.token_urlsafe(16)
    inner.params["keyid"] = key_id
    inner.params["alg"] = ALGORITHM
    params_line = str(inner)
    facts = RequestFacts(method=method.upper(), scheme=parts.scheme,
                         # userinfo is not part of the authority a client sends as Host
                         authority=authority_of(parts.netloc.rpartition("@")[2], parts.scheme),
                         path=parts.path or "/", query=parts.query if has_query else None,
                         headers=fields)
    signature = hmac_sha256(secret.encode("ascii"),
                            signature_base(components, params_line, facts))
    added["Signature-Input"] = f"{label}={params_line}"
    added["Signature"] = f"{label}=:{base64.b64encode(signature).decode('ascii')}:"
    return added


def signing_middleware(key_id: str, secret: str) -> aiohttp.ClientMiddlewareType:
    """An aiohttp client middleware that signs every request it sends (bodies given as bytes
    or str; a streamed body cannot be digested before it is sent)."""

    async def middleware(request: aiohttp.ClientRequest,
                         handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        body = request.body  # b"" when there is none, else a Payload
        data: bytes = b""
        if isinstance(body, bytes):
            data = body
        elif body.size is None:
            raise ValueError("signed requests need a body of known size (bytes or str)")
        else:
            data = await body.as_bytes()
        # The URL exactly as aiohttp sends it (yarl has already normalised it).
        request.headers.update(_sign(request.method, str(request.url), key_id=key_id,
                                     secret=secret, headers=request.headers,
                                     body=data or None, created=None, nonce=None,
                                     label="sig1"))
        return await handler(request)

    return middleware
