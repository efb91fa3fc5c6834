"""RFC 9421 HTTP Message Signatures with `hmac-sha256` (SPEC §4): pure, no I/O.

`Signature-Input` and `Signature` are RFC 8941 dictionaries, parsed with `http-sfv`. The
signature base is built exactly as RFC 9421 §2.5 says; the `@signature-params` line is the
canonical serialisation of the inner list and its parameters. `Content-Digest` (RFC 9530) is
checked here too. The client signer (`gateway.client`) builds its base with the same function, so
the two cannot drift apart; RFC 9421 Appendix B.2.5 pins both to the standard.

Two component parameters are understood, both used by real signers: `"@query-param";name="..."`
(§2.2.8, one query parameter) and `"<field>";key="..."` (§2.1.2, one member of a dictionary
field, as `"content-digest";key="sha-256"`). A component with a parameter is kept as one string,
`name;param="value"` (a field name is a token and holds no `;`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from http_sfv.dictionary import Dictionary
from http_sfv.item import InnerList, Item
from http_sfv.types import DisplayString, Token
from multidict import CIMultiDictProxy

ALGORITHM = "hmac-sha256"
DIGESTS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
# Derived components the gateway can rebuild from the request (RFC 9421 §2.2).
DERIVED = frozenset({"@method", "@target-uri", "@authority", "@scheme", "@request-target",
                     "@path", "@query", "@query-param"})
# A covered Content-Digest member that binds the body: a digest the gateway checks.
_DIGEST_MEMBERS = tuple(f'content-digest;key="{name}"' for name in DIGESTS)
_FIELD_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
MAX_FIELD = 8192


class SignatureError(Exception):
    """A signature that cannot be accepted; `code` is the SPEC §5 code to answer with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> SignatureError:
    return SignatureError("invalid_signature", message)


@dataclass(slots=True)  # not frozen: built for every signed request
class RequestFacts:
    """What the signature base may cover, as the request arrived."""

    method: str
    scheme: str
    authority: str  # host[:port], lower-case, default port omitted
    path: str  # as sent, percent-encoding untouched
    query: str | None  # without '?'; None when the target had no '?'
    headers: CIMultiDictProxy[str] | Mapping[str, str]


@dataclass(slots=True)  # not frozen: a frozen __init__ costs a call per field, per request
class ParsedSignature:
    label: str
    components: tuple[str, ...]
    params_line: str  # canonical serialisation for the @signature-params line
    signature: bytes
    keyid: str
    created: int
    expires: int | None
    nonce: str
    alg: str | None


def authority_of(host: str, scheme: str) -> str:
    """RFC 9421 §2.2.3: lower-case host, port only when not the scheme's default."""
    host = host.strip().lower()
    default = ":443" if scheme == "https" else ":80"
    return host[: -len(default)] if host.endswith(default) else host


# -- parsing ------------------------------------------------------------------------------------
#
# Nearly every client sends the two fields in one shape: a single dictionary member, component
# names and parameter values as plain quoted strings or integers, already in canonical form (it
# is what signers serialise). `_parse_simple` reads exactly that shape with two regular
# expressions, and its @signature-params line is then the text as sent; anything else (several
# signatures, whitespace, escapes, other value types, duplicate parameters...) goes to http-sfv,
# which stays the reference: the property tests hold the two to the same results.

_KEY = r"[a-z*][a-z0-9_.*-]*"
_STRING = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'  # printable ASCII but `"` and `\`: no escapes
_INTEGER = r"(?:0|-?[1-9][0-9]{0,14})"  # canonical: no leading zeros, no -0
_SIMPLE_INPUT = re.compile(
    rf"({_KEY})=(\(((?:{_STRING}(?: {_STRING})*)?)\)((?:;{_KEY}=(?:{_STRING}|{_INTEGER}))*))",
    re.ASCII)
_SIMPLE_PARAM = re.compile(rf";({_KEY})=(?:\"([^\"]*)\"|(-?[0-9]+))", re.ASCII)
_SIMPLE_SIGNATURE = re.compile(rf"({_KEY})=:([A-Za-z0-9+/]*={{0,2}}):", re.ASCII)


@dataclass(slots=True)
class _Fields:
    """The chosen signature as read from the fields, before its meaning is checked."""

    label: str
    # Each covered item: its value (a str when it is a string) and its parameters.
    # None when read by _parse_simple: `names_text` holds them, and is all their checks need.
    items: list[tuple[object, Mapping[str, object]]] | None
    params: dict[str, object]
    params_line: str
    signature: bytes
    # The component list as sent, when read by _parse_simple: plain strings without parameters,
    # so their checks depend on this text alone and are remembered by it.
    names_text: str | None = None

    def covered(self) -> list[tuple[object, Mapping[str, object]]]:
        if self.items is not None:
            return self.items
        names = self.names_text
        return [(name, {}) for name in names[1:-1].split('" "')] if names else []


def _parse_simple(signature_input: str, signature: str) -> _Fields | None:
    """The common shape, or None for http-sfv to read."""
    found = _SIMPLE_INPUT.fullmatch(signature_input)
    if found is None:
        return None
    label, params_line, names, param_text = found.groups()
    sig = _SIMPLE_SIGNATURE.fullmatch(signature)
    if sig is None:
        return None
    sig_label, encoded = sig.groups()
    if sig_label != label:
        return None
    try:
        # The pattern admitted only the base64 alphabet and trailing padding: what
        # b64decode(validate=True) checks before this same call.
        value = binascii.a2b_base64(encoded)
    except binascii.Error:
        return None
    params: dict[str, object] = {}
    for key, text, number in _SIMPLE_PARAM.findall(param_text):
        if key in params:
            return None  # a repeated parameter: the later one wins, and the line changes
        params[key] = int(number) if number else text
    return _Fields(label, None, params, params_line, value, names)


MAX_CANDIDATES = 4  # signatures under gateway keyids checked per request, at most


def _sfv_candidates(signature_input: str, signature: str) -> list[_Fields | SignatureError]:
    """Every signature whose `keyid` names a gateway HMAC key (`gwh_...`), in order and at most
    MAX_CANDIDATES, else the first; each read, or the reason it cannot be."""
    inputs = Dictionary()
    values = Dictionary()
    try:
        inputs.parse(signature_input.encode("ascii"))
        values.parse(signature.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise _invalid(f"malformed signature field: {exc}") from None
    labels = [label for label in inputs if label in values]
    if not labels:
        raise _invalid("no Signature-Input entry has a matching Signature entry")
    ours = [label for label in labels
            if str(inputs[label].params.get("keyid", "")).startswith("gwh_")]
    return [_sfv_fields(label, inputs[label], values[label])
            for label in ours[:MAX_CANDIDATES] or labels[:1]]


def _sfv_fields(label: str, inner: Item | InnerList,
                sig_item: Item | InnerList) -> _Fields | SignatureError:
    if not isinstance(inner, InnerList):
        return _invalid(f"Signature-Input {label!r} is not an inner list")
    if isinstance(sig_item, InnerList) or not isinstance(sig_item.value, bytes):
        return _invalid(f"Signature {label!r} is not a byte sequence")
    items: list[tuple[object, Mapping[str, object]]] = [
        (item.value, dict(item.params)) for item in inner]
    return _Fields(label, items, dict(inner.params), str(inner), sig_item.value)


def _parse_sfv(signature_input: str, signature: str) -> _Fields:
    """The first candidate http-sfv reads (see _sfv_candidates)."""
    first = _sfv_candidates(signature_input, signature)[0]
    if isinstance(first, SignatureError):
        raise first
    return first


def _checked_or_error(fields: _Fields | SignatureError) -> ParsedSignature | SignatureError:
    if isinstance(fields, SignatureError):
        return fields
    try:
        return _checked(fields)
    except SignatureError as refused:
        return refused


def parse_candidates(signature_input: str,
                     signature: str) -> list[ParsedSignature | SignatureError]:
    """The signatures the gateway checks, each parsed or with the reason it cannot be: every
    one under a gateway HMAC keyid (`gwh_...`), at most MAX_CANDIDATES, else the first. A
    request passes when one of them verifies, so a bad signature cannot hide a good one.
    Raises SignatureError when the fields as a whole are unreadable."""
    if len(signature_input) > MAX_FIELD or len(signature) > MAX_FIELD:
        raise _invalid("signature fields are too long")
    if not signature_input or not signature:
        raise _invalid("both Signature-Input and Signature are required")
    fast = _parse_simple(signature_input, signature)
    if fast is not None:
        return [_checked_or_error(fast)]
    return [_checked_or_error(f) for f in _sfv_candidates(signature_input, signature)]


def parse(signature_input: str, signature: str) -> ParsedSignature:
    """The first of `parse_candidates`: the first signature whose `keyid` names a gateway HMAC
    key (`gwh_...`), else the first."""
    first = parse_candidates(signature_input, signature)[0]
    if isinstance(first, SignatureError):
        raise first
    return first


_SFV_NOT_STRING = (Token, DisplayString)  # http-sfv's str subclasses that are not sf-strings
_COMPONENTS_SEEN: dict[str, tuple[str, ...]] = {}  # names_text -> its checked components
MAX_COMPONENTS_SEEN = 256


def _checked(fields: _Fields) -> ParsedSignature:
    names_text = fields.names_text
    known = _COMPONENTS_SEEN.get(names_text) if names_text is not None else None
    components = known if known is not None else _checked_components(fields.covered())
    if names_text is not None and known is None:
        # Clients send the same few lists over and over; a flood of distinct ones only
        # empties the memo (only lists that passed every check are kept).
        if len(_COMPONENTS_SEEN) >= MAX_COMPONENTS_SEEN:
            _COMPONENTS_SEEN.clear()
        _COMPONENTS_SEEN[names_text] = components
    params = fields.params
    for name in params:
        if name not in ("created", "expires", "nonce", "alg", "keyid", "tag"):
            raise _invalid(f"unknown signature parameter {name!r}")
    keyid, created, nonce = params.get("keyid"), params.get("created"), params.get("nonce")
    expires, alg = params.get("expires"), params.get("alg")
    if names_text is None:  # read by http-sfv: its Token and DisplayString are str too
        for name in ("keyid", "nonce", "alg", "tag"):
            if isinstance(params.get(name), _SFV_NOT_STRING):
                raise _invalid(f"the {name} parameter must be a quoted string")
    if not isinstance(keyid, str) or not keyid:
        raise _invalid("the keyid parameter is required")
    if not isinstance(created, int) or isinstance(created, bool):
        raise _invalid("the created parameter is required (an integer)")
    if expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)):
        raise _invalid("the expires parameter must be an integer")
    if not isinstance(nonce, str) or not nonce:
        raise _invalid("the nonce parameter is required")
    if alg is not None and alg != ALGORITHM:
        raise _invalid(f"unsupported alg {alg!r}: only {ALGORITHM} is accepted")
    return ParsedSignature(label=fields.label, components=components,
                           params_line=fields.params_line, signature=fields.signature,
                           keyid=keyid, created=created, expires=expires, nonce=nonce,
                           alg=alg)


def _checked_components(items: list[tuple[object, Mapping[str, object]]]) -> tuple[str, ...]:
    components: list[str] = []
    for name, params in items:
        # RFC 9421 §2: component names are sf-strings; http-sfv's Token and DisplayString are
        # str subclasses.
        if not isinstance(name, str) or isinstance(name, _SFV_NOT_STRING):
            raise _invalid("covered components must be quoted strings")
        if name != name.lower():
            raise _invalid(f"component names are lower-case ({name!r})")
        if name.startswith("@"):
            if name not in DERIVED:
                raise _invalid(f"unsupported derived component {name!r}")
        elif not _FIELD_NAME.fullmatch(name):
            raise _invalid(f"covered component {name!r} is not a field name")
        component = name + _component_parameter(name, params) \
            if params or name == "@query-param" else name
        if component in components:
            raise _invalid(f"component {name!r} is listed twice")
        components.append(component)
    return tuple(components)


def _component_parameter(name: str, params: Mapping[str, object]) -> str:
    """`;name="..."` of an @query-param (§2.2.8), `;key="..."` of a dictionary field member
    (§2.1.2); any other parameter is refused."""
    allowed = "name" if name == "@query-param" else "key"
    if (name.startswith("@") and name != "@query-param") or list(params) != [allowed]:
        if name == "@query-param":
            raise _invalid("@query-param takes exactly one parameter, name")
        raise _invalid(f"component parameters are not supported ({name!r}), but key on a "
                       "dictionary field")
    value = params[allowed]
    if not isinstance(value, str) or isinstance(value, _SFV_NOT_STRING) or not value \
            or '"' in value or "\\" in value:
        raise _invalid(f"the {allowed} parameter of {name!r} must be a plain quoted string")
    return f';{allowed}="{value}"'


def required_components(*, has_query: bool, has_body: bool) -> tuple[str, ...]:
    needed = ["@method", "@authority", "@path"]
    if has_query:
        needed.append("@query")
    if has_body:
        needed.append("content-digest")
    return tuple(needed)


def check_coverage(parsed: ParsedSignature, *, has_query: bool, has_body: bool,
                   query: str | None = None) -> None:
    """The components SPEC §4 requires are covered. `@query` may instead be covered parameter
    by parameter (`@query-param` for each name in the query, none repeated), and the body by
    the `sha-256` or `sha-512` member of `content-digest`."""
    covered = parsed.components
    missing = [c for c in required_components(has_query=has_query, has_body=has_body)
               if c not in covered]
    if missing:
        missing = [c for c in missing if not _covered_otherwise(c, covered, query)]
        if missing:
            raise _invalid("the signature must cover " + ", ".join(missing))


def _covered_otherwise(component: str, covered: tuple[str, ...], query: str | None) -> bool:
    if component == "content-digest":
        return any(member in covered for member in _DIGEST_MEMBERS)
    if component == "@query":
        names = [_form_encoded(name) for name, _ in _query_pairs(query or "")]
        return bool(names) and len(set(names)) == len(names) and all(
            f'@query-param;name="{name}"' in covered for name in names)
    return False


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """application/x-www-form-urlencoded parsing (RFC 9421 §2.2.8 names the WHATWG URL
    standard's): '&'-separated, '+' is a space, percent-decoded as UTF-8."""
    return parse_qsl(query, keep_blank_values=True)


def _form_encoded(text: str) -> str:
    """Re-encoded with the application/x-www-form-urlencoded percent-encode set (all but ASCII
    letters, digits and `*-._`), a space as %20 (RFC 9421 §2.2.8)."""
    return quote(text, safe="*").replace("~", "%7E")


def _query_param(query: str | None, wanted: str) -> str:
    values = [value for name, value in _query_pairs(query or "")
              if _form_encoded(name) == wanted]
    if len(values) != 1:
        # §2.2.8: a name that occurs several times must not be covered one by one.
        raise _invalid(f"query parameter {wanted!r} is "
                       + ("not in the query" if not values else "repeated in the query"))
    return _form_encoded(values[0])


def _parameterised_value(component: str, facts: RequestFacts) -> str:
    name, _, param = component.partition(";")
    wanted = param.partition("=")[2][1:-1]
    if name == "@query-param":
        return _query_param(facts.query, wanted)
    # §2.1.2: the member's value serialised, parameters included.
    field = Dictionary()
    try:
        field.parse(component_value(name, facts).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise _invalid(f"covered field {name!r} is not a dictionary") from None
    if wanted not in field:
        raise _invalid(f"covered field {name!r} has no member {wanted!r}")
    return str(field[wanted])


def component_value(name: str, facts: RequestFacts) -> str:
    if name == "@method":
        return facts.method
    if name == "@authority":
        return facts.authority
    if name == "@scheme":
        return facts.scheme
    if name == "@path":
        return facts.path or "/"
    if name == "@query":
        return "?" + (facts.query or "")
    if name == "@request-target":
        return (facts.path or "/") + ("?" + facts.query if facts.query is not None else "")
    if name == "@target-uri":
        query = "?" + facts.query if facts.query is not None else ""
        return f"{facts.scheme}://{facts.authority}{facts.path or '/'}{query}"
    if ";" in name:
        return _parameterised_value(name, facts)
    headers = facts.headers
    values = (headers.getall(name, []) if isinstance(headers, CIMultiDictProxy)
              else [v for k, v in headers.items() if k.lower() == name])
    if not values:
        raise _invalid(f"covered field {name!r} is not in the request")
    # RFC 9421 §2.1: each field line trimmed, several combined with ", ".
    return ", ".join(v.strip(" \t") for v in values)  # OWS: spaces and tabs only


def signature_base(components: Sequence[str], params_line: str, facts: RequestFacts) -> bytes:
    lines = [f'"{name}": {component_value(name, facts)}' if ";" not in name
             else _parameterised_line(name, facts) for name in components]
    lines.append(f'"@signature-params": {params_line}')
    # Checked before the lines are joined: a line break inside a value would forge a line. The
    # lines run together hold exactly their characters, so one C-speed test covers them all.
    # (For ASCII text, isprintable() is exactly 0x20-0x7E.) A horizontal tab inside a field
    # value is allowed (RFC 9110 §5.5; RFC 9421 §2.5 forbids only non-ASCII): the rare value
    # that has one is tested again with its tabs as spaces.
    together = "".join(lines)
    if not (together.isascii() and (together.isprintable() or (
            "\t" in together and together.replace("\t", " ").isprintable()))):
        raise _invalid("covered values must be ASCII without control characters but tab")
    return "\n".join(lines).encode("ascii")


def _parameterised_line(component: str, facts: RequestFacts) -> str:
    name, _, param = component.partition(";")
    return f'"{name}";{param}: {_parameterised_value(component, facts)}'


def hmac_sha256(key: bytes, base: bytes) -> bytes:
    return hmac.digest(key, base, "sha256")  # one call into OpenSSL, no HMAC object


def signature_matches(parsed: ParsedSignature, facts: RequestFacts,
                      keys: Sequence[bytes]) -> bool:
    """True when any of `keys` (current secret, old one in its grace) made the signature.
    Every key is tried and compared in constant time."""
    base = signature_base(parsed.components, parsed.params_line, facts)
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(hmac_sha256(key, base), parsed.signature)
    return matched


def check_time(parsed: ParsedSignature, now: float, clock_skew: float) -> None:
    if abs(now - parsed.created) > clock_skew:
        raise SignatureError("signature_expired",
                             f"created is more than {clock_skew:.0f}s from the gateway's clock")
    if parsed.expires is not None and now > parsed.expires:
        raise SignatureError("signature_expired", "the signature has expired")


def nonce_ttl(parsed: ParsedSignature, now: float, clock_skew: float) -> float:
    """How long the nonce must be remembered: as long as the signature could be accepted."""
    until = parsed.created + clock_skew
    if parsed.expires is not None:
        until = min(until, parsed.expires)
    return max(until - now, 0.0) + 1.0


def parse_content_digest(value: str) -> dict[str, bytes]:
    field = Dictionary()
    try:
        field.parse(value.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise _invalid(f"malformed Content-Digest: {exc}") from None
    out: dict[str, bytes] = {}
    for algorithm, item in field.items():
        if isinstance(item, InnerList) or not isinstance(item.value, bytes):
            raise _invalid("Content-Digest values must be byte sequences")
        out[algorithm] = item.value
    return out


def check_content_digest(value: str | None, body: bytes) -> None:
    """RFC 9530: at least one digest the gateway knows (sha-256, sha-512), and every known one
    present must match the body received."""
    if value is None:
        raise _invalid("a request with a body needs a Content-Digest header")
    digests = parse_content_digest(value)
    known = {name: digest for name, digest in digests.items() if name in DIGESTS}
    if not known:
        raise _invalid("Content-Digest has no sha-256 or sha-512 value")
    for name, digest in known.items():
        if not hmac.compare_digest(DIGESTS[name](body).digest(), digest):
            raise _invalid(f"Content-Digest {name} does not match the body")


def content_digest(body: bytes, algorithm: str = "sha-256") -> str:
    return f"{algorithm}=:{base64.b64encode(DIGESTS[algorithm](body).digest()).decode()}:"
