"""Atheris fuzz target for the parsers that read untrusted request text (SPEC §2, §4, §6).

    scripts/fuzz [seconds]                     # the bounded, documented way to run it
    .venv/bin/python fuzz/fuzz_headers.py -max_total_time=60 fuzz/corpus fuzz/seeds

One input is one case. Its first byte picks the parser (byte % 4), the rest is text, decoded as
UTF-8 with `surrogateescape` exactly as aiohttp decodes request heads, split on newlines:

    0 ('T')  parse_target(text), then RouteTable.match over a fixed table
    1 ('A')  credential_from(headers): one "Name: value" header per line
    2 ('B')  check_content_digest(text, body=b"fuzz")
    3 ('S')  signatures.parse(line 1, line 2); if it parses, the signature base over the facts
             of a request whose headers are the remaining "Name: value" lines

The documented errors are `RequestRefused` (credentials, routing) and `SignatureError`
(signatures); any other exception, or a broken invariant (an `AssertionError`), is a crash.
`check()` needs no atheris: tests/property/test_fuzz_regressions.py replays every saved crash
and seed through it in plain Python. While a saved case still fails (a bug found, not yet fixed),
the fuzzer does not stop on inputs that fail the same way (same exception, same stack), so a
run keeps looking for new bugs instead of re-finding a known one.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.auth import apikey, signatures
from gateway.auth.credentials import ApiKeyCredential, SignatureCredential, credential_from
from gateway.config import RouteConfig
from gateway.errors import RequestRefused
from gateway.proxy.routing import RouteTable, Target, normalise_path, parse_target

MODES = ("target", "credentials", "content-digest", "signature")
HMAC_KEY = b"Q2xpZW50LXNpZGUtc2VjcmV0LWZvci10ZXN0cy0xMjM"

ROUTES = RouteTable([
    RouteConfig(name="root", prefix="/", upstream="http://127.0.0.1:9100", public=True),
    RouteConfig(name="vision", prefix="/vision", upstream="http://127.0.0.1:9103",
                strip_prefix=True),
    RouteConfig(name="vision-public", prefix="/vision/public",
                upstream="http://127.0.0.1:9103/base", public=True),
    RouteConfig(name="deep", prefix="/a/b/c", upstream="http://127.0.0.1:9104/x",
                strip_prefix=True),
])
PREFIXES = ("/", "/vision", "/vision/public", "/a/b/c")
REGRESSIONS = Path(__file__).resolve().parent.parent / "tests" / "property" / "fuzz_regressions"


def decode(data: bytes) -> tuple[str, str]:
    """The mode and the text of one fuzz input."""
    if not data:
        return MODES[0], ""
    return MODES[data[0] % len(MODES)], data[1:].decode("utf-8", "surrogateescape")


def header_lines(lines: list[str]) -> CIMultiDictProxy[str]:
    """"Name: value" per line, as an HTTP parser would hand them over (a line without a colon
    is a header with an empty value)."""
    pairs = []
    for line in lines:
        name, _, value = line.partition(":")
        pairs.append((name, value.strip(" \t")))
    return CIMultiDictProxy(CIMultiDict(pairs))


def check_target(text: str) -> None:
    try:
        target = parse_target(text)
    except RequestRefused as refused:
        assert refused.code == "bad_request", refused.code
        return
    path = target.path
    assert path.startswith("/"), path
    assert "//" not in path, path
    assert not any(s in (".", "..") for s in path.split("/")), path
    # Nor one that a servlet container reads as a dot segment (`..;x` is `..` to Tomcat): that
    # path could be read two ways (SPEC §6).
    assert not any(s.partition(";")[0] in (".", "..") for s in path.split("/")), path
    assert normalise_path(path) == (path, None), path  # a normalised path is a fixed point
    assert parse_target(path + ("?" + target.query if "?" in text else "")) == \
        Target(path=path, query=target.query, lowest_pop=None)
    try:
        match = ROUTES.match(target)
    except RequestRefused as refused:
        assert refused.code in ("bad_request", "no_route"), refused.code
        return
    prefix = match.route.prefix
    assert prefix == "/" or path == prefix or path.startswith(prefix + "/"), (prefix, path)
    longer = [p for p in PREFIXES if len(p) > len(prefix)
              and (path == p or path.startswith(p + "/"))]
    assert not longer, (prefix, longer)  # the longest prefix wins
    if target.lowest_pop is not None:
        assert target.lowest_pop >= (0 if prefix == "/" else prefix.count("/")), target
    assert match.upstream_path.startswith("/"), match


def check_credentials(text: str) -> None:
    headers = header_lines(text.split("\n"))
    try:
        credential = credential_from(headers)
    except RequestRefused as refused:
        assert refused.code in ("bad_request", "invalid_credentials"), refused.code
        return
    if credential is None:
        assert not any(n in headers for n in ("Authorization", "Signature", "Signature-Input"))
    elif isinstance(credential, ApiKeyCredential):
        assert apikey.is_well_formed(credential.secret), credential
        # The scheme is the token `Api-Key` in any ASCII case (RFC 9110 §11.1), after optional
        # whitespace (SP, HTAB): no Unicode case folding or Unicode spaces.
        scheme = headers["Authorization"].strip(" \t").partition(" ")[0]
        assert scheme.isascii() and scheme.lower() == "api-key", scheme
        assert len(apikey.hash_secret(credential.secret)) == 64
    else:
        assert isinstance(credential, SignatureCredential)
        check_signature(credential.signature_input, credential.signature, headers)


def check_content_digest(text: str) -> None:
    try:
        signatures.check_content_digest(text, b"fuzz")
    except signatures.SignatureError as exc:
        assert exc.code == "invalid_signature", exc.code


def check_signature(signature_input: str, signature: str,
                    headers: CIMultiDictProxy[str]) -> None:
    try:
        parsed = signatures.parse(signature_input, signature)
    except signatures.SignatureError as exc:
        assert exc.code == "invalid_signature", exc.code
        return
    assert parsed.components == tuple(dict.fromkeys(parsed.components)), parsed
    assert parsed.params_line.startswith("("), parsed
    # The canonical form the base is built from parses back to itself.
    again = signatures.parse(f"{parsed.label}={parsed.params_line}", signature)
    assert again.params_line == parsed.params_line, (again, parsed)
    facts = signatures.RequestFacts(method="POST", scheme="https", authority="api.example.com",
                                    path="/vision/v1", query="a=1", headers=headers)
    try:
        signatures.check_coverage(parsed, has_query=True, has_body=False)
    except signatures.SignatureError as exc:
        assert exc.code == "invalid_signature", exc.code
    try:
        base = signatures.signature_base(parsed.components, parsed.params_line, facts)
        assert base.endswith(b'"@signature-params": ' + parsed.params_line.encode("ascii"))
        signatures.signature_matches(parsed, facts, [HMAC_KEY])
        signatures.check_time(parsed, 1_700_000_000.0, 300.0)
        assert signatures.nonce_ttl(parsed, 1_700_000_000.0, 300.0) >= 1.0
    except signatures.SignatureError as exc:
        assert exc.code in ("invalid_signature", "signature_expired"), exc.code


def check(data: bytes) -> None:
    """Run one fuzz input; returns quietly when only documented errors were raised."""
    mode, text = decode(data)
    if mode == "target":
        check_target(text)
    elif mode == "credentials":
        check_credentials(text)
    elif mode == "content-digest":
        check_content_digest(text)
    else:
        lines = text.split("\n")
        check_signature(lines[0], lines[1] if len(lines) > 1 else "", header_lines(lines[2:]))


def failure_signature(exc: BaseException) -> tuple[str, tuple[tuple[str, int | None], ...]]:
    """How an input fails: the exception type and the stack it was raised through."""
    frames = traceback.extract_tb(exc.__traceback__)
    start = next((i for i, f in enumerate(frames) if f.name == "check"), 0)  # from check() in
    return type(exc).__name__, tuple((f.filename, f.lineno) for f in frames[start:])


def known_failures() -> set[tuple[str, tuple[tuple[str, int | None], ...]]]:
    """The ways the saved regression cases still fail (bugs found, not fixed yet)."""
    known = set()
    for case in sorted(REGRESSIONS.glob("*")):
        try:
            check(case.read_bytes())
        except Exception as exc:
            known.add(failure_signature(exc))
    return known


def main() -> None:
    import atheris  # type: ignore[import-untyped]  # only the fuzzer needs it

    known = known_failures()
    if known:
        print(f"fuzz_headers: {len(known)} known failure(s) from {REGRESSIONS} are not "
              "reported again; fix them to have the fuzzer look for them", file=sys.stderr)

    def one_input(data: bytes) -> None:
        try:
            check(data)
        except Exception as exc:
            if failure_signature(exc) not in known:
                raise

    atheris.instrument_all()
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
