"""Reading the credential a request carries (SPEC §3, §4): pure, no I/O, no store lookup.

A malformed API key is refused here, so a flood of garbage never reaches Redis.
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.auth import apikey
from gateway.auth.locations import (
    DEFAULT_LOCATIONS,
    KeyLocation,
    describe,
    query_values,
    schemes,
)
from gateway.errors import RequestRefused


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


def credential_from(headers: CIMultiDictProxy[str],
                    locations: tuple[KeyLocation, ...] = DEFAULT_LOCATIONS,
                    query: str = "", *, accept_imported: bool = False) -> Credential | None:
    """The request's credential, None when it carries none; RequestRefused when malformed.

    `locations`: where the route reads an API key (gateway.auth.locations); `query`: the raw
    query string, read only when a location names a parameter. `accept_imported`
    (`keys.accept_imported`): a secret not in the gateway's format is looked up too."""
    authorizations = headers.getall("Authorization", ())
    signatures = headers.getall("Signature", ())
    signature_inputs = headers.getall("Signature-Input", ())
    if len(authorizations) > 1:
        raise RequestRefused("bad_request", "more than one Authorization header")
    signed = bool(signatures or signature_inputs)
    if authorizations and signed:
        raise RequestRefused("bad_request",
                             "a request carries either an API key or a signature, not both")
    if locations is DEFAULT_LOCATIONS:  # the common case, kept as short as it was
        if authorizations:
            return ApiKeyCredential(_checked(_from_authorization(authorizations[0], locations),
                                             accept_imported))
        if signed:
            return SignatureCredential(", ".join(signature_inputs), ", ".join(signatures))
        return None
    found: list[tuple[str, str]] = []  # (where, secret)
    if authorizations:
        found.append(("Authorization", _from_authorization(authorizations[0], locations)))
    for location in locations:
        if location.kind == "header":
            values = headers.getall(location.name, ())
            if len(values) > 1:
                raise RequestRefused("bad_request", f"more than one {location.name} header")
            if values:
                found.append((location.name, values[0].strip(" \t")))
        elif location.kind == "query" and query:
            values = query_values(query, location.name)
            if len(values) > 1:
                raise RequestRefused("bad_request",
                                     f"more than one {location.name} query parameter")
            if values:
                found.append((f"the {location.name} query parameter", values[0]))
    if signed:
        if found:
            raise RequestRefused("bad_request", "a request carries either an API key or a "
                                 f"signature, not both (a key in {found[0][0]})")
        return SignatureCredential(", ".join(signature_inputs), ", ".join(signatures))
    if not found:
        return None
    if len(found) > 1:
        raise RequestRefused("bad_request", "an API key in more than one place ("
                             + ", ".join(where for where, _ in found) + "): send it once")
    return ApiKeyCredential(_checked(found[0][1], accept_imported))


def _from_authorization(value: str, locations: tuple[KeyLocation, ...]) -> str:
    scheme, _, secret = value.strip(" \t").partition(" ")
    # ASCII only: str.lower() maps the Kelvin sign to "k", and strip() eats Unicode spaces.
    lowered = scheme.lower() if scheme.isascii() else ""
    if lowered not in schemes(locations):
        accepted = [loc.describe() for loc in locations if loc.kind in ("api-key", "bearer")]
        hint = " or ".join(accepted) if accepted else describe(locations)
        raise RequestRefused("invalid_credentials",
                             f"unsupported Authorization scheme: use {hint} or a signature")
    return secret.strip(" \t")


def _checked(secret: str, accept_imported: bool) -> str:
    if apikey.is_well_formed(secret) or (accept_imported and apikey.is_foreign(secret)):
        return secret
    raise RequestRefused("invalid_credentials", "malformed API key")
