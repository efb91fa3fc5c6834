"""Properties of the path normaliser and route table, gateway.proxy.routing (SPEC §6).

The module promises: a normalised path (unreserved percent-encodings decoded, the rest
upper-cased, empty and dot segments removed) or `RequestRefused("bad_request")` for a target
that could be read two ways; longest-prefix routing on whole segments, refusing a `..` that
reaches a route from outside its prefix, `RequestRefused("no_route")` when nothing matches.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.config import RouteConfig
from gateway.errors import RequestRefused
from gateway.proxy.routing import (
    MAX_TARGET_LENGTH,
    RouteTable,
    Target,
    normalise_path,
    parse_target,
)
from tests.property.strategies import (
    PCHAR,
    PROPERTY,
    SUB_DELIMS,
    UNRESERVED,
    queries,
    raw_paths,
)

# A normalised path: '/' then segments of pchars and upper-case %XX that do not encode an
# unreserved character, a control character, '/', '\\' or NUL.
_KEPT_ENCODING = r"%(?!(?:[46][1-9A-F]|[57][0-9A]|3[0-9]|2[DE]|5F|7E|[01][0-9A-F]|7F|2F|5C))" \
    r"[0-9A-F]{2}"
_SEGMENT = rf"(?:[{re.escape(PCHAR)}]|{_KEPT_ENCODING})+"
NORMALISED = re.compile(rf"^/(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?$")


def normalised_or_refused(raw: str) -> tuple[str, int | None] | None:
    try:
        return normalise_path(raw)
    except RequestRefused as refused:
        assert refused.code == "bad_request"
        return None


def segments_of(path: str) -> list[str]:
    return [s for s in path.split("/") if s]


# ---------------------------------------------------------------------------------------------
# normalise_path / parse_target
# ---------------------------------------------------------------------------------------------


@PROPERTY
@given(raw=st.one_of(raw_paths, st.text(), st.text(alphabet="/.%2eEfF5cC0a\\;?#").map(
    lambda t: "/" + t)))
def test_normalised_paths_are_canonical_and_a_fixed_point(raw: str) -> None:
    result = normalised_or_refused(raw)
    if result is None:
        return
    path, _ = result
    assert NORMALISED.match(path), path
    assert "//" not in path
    assert not {".", ".."} & set(path.split("/"))
    assert normalise_path(path) == (path, None)


@PROPERTY
@given(raw=raw_paths, data=st.data())
def test_redundant_spellings_normalise_alike(raw: str, data: st.DataObject) -> None:
    result = normalised_or_refused(raw)
    assume(result is not None)
    assert result is not None
    path, _ = result
    segs = raw.split("/")
    at = data.draw(st.integers(1, len(segs)), label="at")
    noise = data.draw(st.sampled_from(["", ".", "%2e", "%2E", "x/..", "x/%2E%2e", "a/b/../.."]),
                      label="noise")
    spelled = "/".join([*segs[:at], *noise.split("/"), *segs[at:]])
    if segs[-1] in ("", ".", "..") or at < len(segs):
        assert normalise_path(spelled)[0] == path  # the extra segments change nothing
    else:
        # Appended after the last segment, a dot segment adds the trailing slash (RFC 3986
        # §5.2.4) and `x/..` cancels out to the same.
        assert normalise_path(spelled)[0] in (path, path.rstrip("/") + "/")


@PROPERTY
@given(raw=raw_paths, data=st.data())
def test_encoding_an_unreserved_character_changes_nothing(raw: str, data: st.DataObject) -> None:
    result = normalised_or_refused(raw)
    assume(result is not None)
    assert result is not None
    path, _ = result
    inside_encodings = {i + d for i, ch in enumerate(path) if ch == "%" for d in (1, 2)}
    positions = [i for i, ch in enumerate(path)
                 if ch in UNRESERVED and i not in inside_encodings]
    assume(positions)
    i = data.draw(st.sampled_from(positions))
    encoded = f"%{ord(path[i]):02X}"
    if data.draw(st.booleans()):
        encoded = encoded.lower()
    assert normalise_path(path[:i] + encoded + path[i + 1:]) == (path, None)


@PROPERTY
@given(path=raw_paths)
def test_lower_case_hex_is_the_same_path(path: str) -> None:
    assert normalised_or_refused(path) == normalised_or_refused(
        re.sub(r"%[0-9A-Fa-f]{2}", lambda m: m.group(0).lower(), path))


@PROPERTY
@given(raw=raw_paths, data=st.data(),
       bad=st.sampled_from(["%2F", "%2f", "%5C", "%5c", "%00", "%01", "%1F", "%7F", "%7f"]))
def test_structural_encodings_are_always_refused(raw: str, data: st.DataObject,
                                                 bad: str) -> None:
    i = data.draw(st.integers(1, len(raw)))
    with pytest.raises(RequestRefused) as refused:
        parse_target(raw[:i] + bad + raw[i:])
    assert refused.value.code == "bad_request"


@PROPERTY
@given(raw=raw_paths, data=st.data(),
       bad=st.one_of(st.sampled_from("\\ \"<>^`{|}\x00\t\r\n\x7f\u00e9\u2215\uff0f\udcff"),
                     st.characters(codec="ascii", categories=["Cc"]),
                     st.characters(min_codepoint=0x80)))
def test_characters_outside_a_url_path_are_refused(raw: str, data: st.DataObject,
                                                    bad: str) -> None:
    i = data.draw(st.integers(1, len(raw)))
    with pytest.raises(RequestRefused) as refused:
        parse_target(raw[:i] + bad + raw[i:])
    assert refused.value.code == "bad_request"


@PROPERTY
@given(raw=raw_paths, pct=st.sampled_from(["%", "%4", "%G0", "%0g", "%%"]))
def test_malformed_percent_encodings_are_refused(raw: str, pct: str) -> None:
    with pytest.raises(RequestRefused) as refused:
        normalise_path(raw + "/" + pct)
    assert refused.value.code == "bad_request"


@PROPERTY
@given(target=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                        st.builds(lambda p, q: f"{p}?{q}", raw_paths, queries)))
def test_parse_target_returns_a_target_or_bad_request(target: str) -> None:
    try:
        parsed = parse_target(target)
    except RequestRefused as refused:
        assert refused.code == "bad_request"
        return
    raw_path, sep, query = target.partition("?")
    assert parsed.query == query  # verbatim
    assert "#" not in target
    assert parsed.path == normalise_path(raw_path)[0]
    assert parse_target(parsed.path + sep + parsed.query) == \
        Target(parsed.path, parsed.query, None)


@PROPERTY
@given(raw=raw_paths, query=queries, extra=st.integers(-2, 2))
def test_the_target_length_bound(raw: str, query: str, extra: int) -> None:
    target = raw + "?" + query
    target += "a" * (MAX_TARGET_LENGTH + extra - len(target))
    refused_for_length = len(target) > MAX_TARGET_LENGTH
    try:
        parse_target(target)
    except RequestRefused as refused:
        assert refused.code == "bad_request"
        if refused_for_length:
            assert "too long" in refused.message
        return
    assert not refused_for_length


# ---------------------------------------------------------------------------------------------
# RouteTable
# ---------------------------------------------------------------------------------------------

prefix_segments = st.sampled_from(["vision", "public", "a", "b", "c", "v1", "x!", "a.b"])
prefixes = st.one_of(st.just("/"), st.lists(prefix_segments, min_size=1, max_size=3).map(
    lambda segs: "/" + "/".join(segs)))
upstreams = st.sampled_from(["http://127.0.0.1:9103", "http://u.internal/base",
                             "https://u.internal:8443/a/b"])


@st.composite
def route_tables(draw: st.DrawFn) -> list[RouteConfig]:
    chosen = draw(st.lists(prefixes, min_size=1, max_size=5, unique=True))
    return [RouteConfig(name=f"r{i}", prefix=p, upstream=draw(upstreams),
                        strip_prefix=draw(st.booleans()))
            for i, p in enumerate(chosen)]


path_segments = st.one_of(prefix_segments, st.sampled_from(["visionX", "..", ".", "", "%2e%2E",
                                                            "v%31", "%7E"]))
routed_paths = st.lists(path_segments, max_size=7).map(lambda segs: "/" + "/".join(segs))


def under(path: str, prefix: str) -> bool:
    """Whole-segment prefix match, on segments (the reference for `match`)."""
    want = segments_of(prefix)
    return segments_of(path)[:len(want)] == want


@PROPERTY
@given(routes=route_tables(), raw=routed_paths)
def test_match_is_longest_whole_segment_prefix(routes: list[RouteConfig], raw: str) -> None:
    try:
        target = parse_target(raw)
    except RequestRefused:
        return
    candidates = [r for r in routes if under(target.path, r.prefix)]
    try:
        match = RouteTable(routes).match(target)
    except RequestRefused as refused:
        if refused.code == "no_route":
            assert not candidates
        else:
            assert refused.code == "bad_request"
            assert candidates
            assert target.lowest_pop is not None
        return
    best = max(candidates, key=lambda r: len(segments_of(r.prefix)))
    assert match.route == best
    rest = target.path[len(best.prefix):] if best.strip_prefix and best.prefix != "/" \
        else target.path
    base = best.upstream.split("://", 1)[1].partition("/")[2]
    expected = ("/" + base if base else "") + (rest or "/")
    assert match.upstream_path == expected
    assert match.upstream_path.startswith("/")


@PROPERTY
@given(routes=route_tables(), raw=routed_paths)
def test_an_accepted_path_never_walks_outside_its_prefix(routes: list[RouteConfig],
                                                         raw: str) -> None:
    """Walking the raw path segment by segment, once it is inside the matched prefix it never
    leaves it, and before that it only goes down towards it: no `..` is used to reach a route
    from elsewhere."""
    try:
        target = parse_target(raw)
        match = RouteTable(routes).match(target)
    except RequestRefused:
        return
    prefix = segments_of(match.route.prefix)
    raw_segments = raw.split("/")
    for k in range(1, len(raw_segments) + 1):
        walked = segments_of(normalise_path("/".join(raw_segments[:k]) or "/")[0])
        if len(walked) >= len(prefix):
            assert walked[:len(prefix)] == prefix, (raw, walked)
        else:
            assert prefix[:len(walked)] == walked, (raw, walked)


@PROPERTY
@given(routes=route_tables(), raw=routed_paths)
def test_a_dot_dot_into_a_prefix_from_outside_is_refused(routes: list[RouteConfig],
                                                         raw: str) -> None:
    """`/elsewhere/../<prefix>/x`: the same normalised path reached by climbing out and back in
    is refused for every route but the root."""
    try:
        plain = parse_target(raw)
        match = RouteTable(routes).match(plain)
    except RequestRefused:
        return
    assume(match.route.prefix != "/")
    detour = "/elsewhere/.." + plain.path
    with pytest.raises(RequestRefused) as refused:
        RouteTable(routes).match(parse_target(detour))
    assert refused.value.code == "bad_request"


@PROPERTY
@given(prefix=prefixes.filter(lambda p: p != "/"),
       tail=st.text(alphabet=UNRESERVED + SUB_DELIMS + ":@", min_size=1, max_size=5))
def test_a_prefix_never_matches_part_of_a_segment(prefix: str, tail: str) -> None:
    assume(tail not in (".", ".."))
    table = RouteTable([RouteConfig(name="r", prefix=prefix, upstream="http://u")])
    with pytest.raises(RequestRefused) as refused:
        table.match(parse_target(prefix + tail + "/x"))
    assert refused.value.code == "no_route"
    assert table.match(parse_target(prefix + "/" + tail)).route.prefix == prefix


# ---------------------------------------------------------------------------------------------
# Found by these tests and the fuzzer (gateway/proxy/routing.py, normalise_path): a segment
# that is a dot segment once its `;` path parameters are dropped. Servlet containers (Tomcat,
# Jetty, and frameworks on them) strip `;...` from each segment before removing dot segments,
# so `/vision/public/..;/private` is `/vision/private` to them, while the gateway routes it
# to the public route `/vision/public` with no credential check. SPEC §6 and the module both
# promise that a path which could be read two ways is refused with 400.
# ---------------------------------------------------------------------------------------------

TWO_ROUTES = RouteTable([
    RouteConfig(name="vision", prefix="/vision", upstream="http://127.0.0.1:9103"),
    RouteConfig(name="vision-public", prefix="/vision/public", upstream="http://127.0.0.1:9103",
                public=True),
])


DOT_SEGMENTS_WITH_PARAMETERS = [
    "/vision/public/..;/private",
    "/vision/public/..;jsessionid=1/private",
    "/vision/public/%2e%2e;/private",
    "/vision/public/.%2E;x/private",
    "/vision/public/.;/x",
]


def test_a_dot_segment_with_path_parameters_is_refused() -> None:
    routed = {}
    for raw in DOT_SEGMENTS_WITH_PARAMETERS:
        try:
            match = TWO_ROUTES.match(parse_target(raw))
        except RequestRefused as refused:
            assert refused.code == "bad_request"
        else:
            routed[raw] = (match.route.name, match.upstream_path)
    assert routed == {}
