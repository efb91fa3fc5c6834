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
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

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

__all__ = ["sign_request", "signing_middleware"]


def sign_request(method: str, url: str, *, key_id: str, secret: str,
                 headers: Mapping[str, str] | None = None, body: bytes | None = None,
                 created: int | None = None, nonce: str | None = None,
                 label: str = "sig1") -> dict[str, str]:
    """The headers to add to a request so the gateway accepts it."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
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
        request.headers.update(sign_request(request.method, str(request.url), key_id=key_id,
                                            secret=secret, headers=request.headers,
                                            body=data or None))
        return await handler(request)

    return middleware
