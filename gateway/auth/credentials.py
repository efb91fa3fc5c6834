"""Reading the credential a request carries (SPEC §3, §4): pure, no I/O, no store lookup.

A malformed API key is refused here, so a flood of garbage never reaches Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.auth import apikey
from gateway.errors import RequestRefused

API_KEY_SCHEME = "api-key"


@dataclass(frozen=True, slots=True)
class ApiKeyCredential:
    secret: str

    @property
    def method(self) -> str:
        return "api_key"


@dataclass(frozen=True, slots=True)
class SignatureCredential:
    signature_input: str
    signature: str

    @property
    def method(self) -> str:
        return "hmac"


Credential = ApiKeyCredential | SignatureCredential


def credential_from(headers: CIMultiDictProxy[str]) -> Credential | None:
    """The request's credential, None when it carries none; RequestRefused when malformed."""
    authorizations = headers.getall("Authorization", ())
    signatures = headers.getall("Signature", ())
    signature_inputs = headers.getall("Signature-Input", ())
    if len(authorizations) > 1:
        raise RequestRefused("bad_request", "more than one Authorization header")
    if authorizations and (signatures or signature_inputs):
        raise RequestRefused("bad_request",
                             "a request carries either an API key or a signature, not both")
    if authorizations:
        return _api_key(authorizations[0])
    if signatures or signature_inputs:
        return SignatureCredential(", ".join(signature_inputs), ", ".join(signatures))
    return None


def _api_key(value: str) -> ApiKeyCredential:
    scheme, _, secret = value.strip(" \t").partition(" ")
    # ASCII only: str.lower() maps the Kelvin sign to "k", and strip() eats Unicode spaces.
    if not scheme.isascii() or scheme.lower() != API_KEY_SCHEME:
        raise RequestRefused("invalid_credentials",
                             "unsupported Authorization scheme: use 'Api-Key <key>' or a signature")
    secret = secret.strip(" \t")
    if not apikey.is_acceptable(secret):
        raise RequestRefused("invalid_credentials", "malformed API key")
    return ApiKeyCredential(secret)
