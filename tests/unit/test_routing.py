"""Table-driven tests for gateway.proxy.routing (SPEC §6, RFC 3986 §5.2.4 and §6.2.2)."""

from __future__ import annotations

import pytest

from gateway.config import RouteConfig
from gateway.errors import RequestRefused
from gateway.proxy.routing import MAX_RESOLVED, RouteTable, normalise_path, parse_target

# ---------------------------------------------------------------------------------------------
# normalise_path
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/", "/"),
        ("/vision", "/vision"),
        ("/vision/", "/vision/"),
        ("/vision/v1/recognize", "/vision/v1/recognize"),
        # Consecutive slashes merge; a trailing slash is kept.
        ("//vision", "/vision"),
        ("/vision//v1///x", "/vision/v1/x"),
        ("/vision//", "/vision/"),
        ("//", "/"),
        # Dot segments (RFC 3986 §5.2.4).
        ("/./vision", "/vision"),
        ("/vision/./x", "/vision/x"),
        ("/vision/.", "/vision/"),
        ("/vision/a/../b", "/vision/b"),
        ("/vision/a/..", "/vision/"),
        ("/vision/a/b/../../c", "/vision/c"),
        ("/a/..", "/"),
        ("/a/b/./../c/", "/a/c/"),
        # Segments that merely contain dots are ordinary.
        ("/vision/...", "/vision/..."),
        ("/vision/..a", "/vision/..a"),
        ("/vision/.hidden", "/vision/.hidden"),
        ("/file.tar.gz", "/file.tar.gz"),
        # Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2).
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/%41bc", "/Abc"),
        ("/%61%62%63", "/abc"),
        ("/a%2Db%5Fc%2E", "/a-b_c."),
        ("/%30%39", "/09"),
        ("/vi%73ion/x", "/vision/x"),
        # %2e%2e is '..' once decoded, and is removed like one.
        ("/vision/a/%2e%2e/b", "/vision/b"),
        ("/vision/a/%2E%2E/b", "/vision/b"),
        ("/vision/a/.%2e/b", "/vision/b"),
        ("/vision/%2e/b", "/vision/b"),
        # Other encodings stay encoded, in upper case (RFC 3986 §6.2.2.1).
        ("/%c3%a9", "/%C3%A9"),
        ("/caf%c3%a9/x", "/caf%C3%A9/x"),
        ("/a%20b", "/a%20b"),
        ("/a%3fb", "/a%3Fb"),
        ("/a%23b", "/a%23b"),
        ("/a%25b", "/a%25b"),
        ("/%3A%40", "/%3A%40"),
        # Sub-delims and ':' '@' are legal pchars.
        ("/a:b@c!$&'()*+,;=", "/a:b@c!$&'()*+,;="),
    ],
)
def test_normalise_path(raw: str, expected: str) -> None:
    path, _ = normalise_path(raw)
    assert path == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/vision/a/%2e%2e", "/vision/"),
        ("/vision/a/b/%2E%2E", "/vision/a/"),
        ("/vision/a/%2e", "/vision/a/"),
    ],
)
def test_normalise_path_encoded_final_dot_segment(raw: str, expected: str) -> None:
    assert normalise_path(raw)[0] == expected
    # The same path written with literal dots normalises identically.
    literal = raw.replace("%2e", ".").replace("%2E", ".")
    assert normalise_path(literal)[0] == expected


@pytest.mark.parametrize(
    ("raw", "lowest"),
    [
        ("/vision/x", None),
        ("/vision/./x", None),
        ("/vision/a/../b", 1),
        ("/vision/a/b/../../c", 1),
        ("/vision/../functions/x", 0),
        ("/a/b/c/../d/../../e", 1),
        ("/vision/a/%2e%2e/b", 1),
    ],
)
def test_normalise_path_lowest_pop(raw: str, lowest: int | None) -> None:
    assert normalise_path(raw)[1] == lowest


@pytest.mark.parametrize(
    "raw",
    [
        # Not origin-form.
        "",
        "vision/x",
        "*",
        "http://host/vision",
        # '..' above the root.
        "/..",
        "/../vision",
        "/vision/../..",
        "/vision/../../etc/passwd",
        "/%2e%2e/vision",
        # Encoded slash / backslash / NUL: the path could be read two ways.
        "/vision%2Fx",
        "/vision%2fx",
        "/vision/a%2F..%2F..%2Ffunctions",
        "/vision%5Cx",
        "/vision%5cx",
        "/vision%00",
        # Raw backslash, NUL, control characters, space, non-ASCII.
        "/vision\\x",
        "/vision\\..\\functions",
        "/vision\x00",
        "/vision\x01x",
        "/vision\x1f",
        "/vision\x7f",
        "/vision\tx",
        "/vision\r\nX-Injected: 1",
        "/vision x",
        "/café",
        '/a"b',
        "/a<b>",
        "/a{b}",
        "/a|b",
        "/a^b",
        "/a`b",
        "/a[b]",
        # Encoded control characters.
        "/vision%01",
        "/vision%0A",
        "/vision%0d%0a",
        "/vision%1F",
        "/vision%7F",
        # Malformed percent-encodings.
        "/vision%",
        "/vision%4",
        "/vision%G1",
        "/vision%1G",
        "/vision%%41",
        "/vision%-1",
        "/vision% 1",
    ],
)
def test_normalise_path_refused(raw: str) -> None:
    with pytest.raises(RequestRefused) as info:
        normalise_path(raw)
    assert info.value.code == "bad_request"
    assert info.value.status == 400


# ---------------------------------------------------------------------------------------------
# parse_target
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "path", "query"),
    [
        ("/vision/x", "/vision/x", ""),
        ("/vision/x?", "/vision/x", ""),
        ("/vision/x?a=1&b=2", "/vision/x", "a=1&b=2"),
        # The query is passed verbatim: no decoding, no case change, no dot removal.
        ("/v?q=%2f%2e%2e%7e", "/v", "q=%2f%2e%2e%7e"),
        ("/v?path=/a/../b", "/v", "path=/a/../b"),
        ("/v?a=1?b=2", "/v", "a=1?b=2"),
        ("/v?list[]=1&x=a:b@c", "/v", "list[]=1&x=a:b@c"),
        ("/v?a=b+c&d=e%20f", "/v", "a=b+c&d=e%20f"),
        ("/v?=&&", "/v", "=&&"),
        ("/v?a=$'()*,;!", "/v", "a=$'()*,;!"),
        # The path part is normalised.
        ("//vision/./a/../%7Eb?x=1", "/vision/~b", "x=1"),
        ("/vision/?x", "/vision/", "x"),
    ],
)
def test_parse_target(raw: str, path: str, query: str) -> None:
    target = parse_target(raw)
    assert (target.path, target.query) == (path, query)


@pytest.mark.parametrize(
    "raw",
    [
        # Fragments never belong in a request target.
        "/vision#x",
        "/vision?a=1#x",
        "/vision#",
        "/vision%23ok#frag",
        # Invalid query characters.
        "/vision?a=b c",
        "/vision?a=\x00",
        "/vision?a=\x7f",
        "/vision?a=\r\nX: y",
        "/vision?a=\tb",
        '/vision?a="b"',
        "/vision?a=<b>",
        "/vision?a=\\b",
        "/vision?a=é",
        "/vision?a={b}",
        "/vision?a=|",
        "/vision?a=^",
        "/vision?a=`",
        # Path problems surface through parse_target too.
        "/vision%2Fx?a=1",
        "/../x?a=1",
        "vision?a=1",
    ],
)
def test_parse_target_refused(raw: str) -> None:
    with pytest.raises(RequestRefused) as info:
        parse_target(raw)
    assert info.value.code == "bad_request"


@pytest.mark.parametrize(
    ("length", "accepted"),
    [(100, True), (8000, True), (8190, True), (8191, False), (20000, False)],
)
def test_parse_target_length_limit(length: int, accepted: bool) -> None:
    raw = "/" + "a" * (length - 1)
    assert len(raw) == length
    if accepted:
        assert parse_target(raw).path == raw
    else:
        with pytest.raises(RequestRefused) as info:
            parse_target(raw)
        assert info.value.code == "bad_request"


def test_parse_target_length_counts_the_query() -> None:
    raw = "/v?" + "a" * 9000
    with pytest.raises(RequestRefused) as info:
        parse_target(raw)
    assert info.value.code == "bad_request"


# ---------------------------------------------------------------------------------------------
# RouteTable.match
# ---------------------------------------------------------------------------------------------


def _r(name: str, prefix: str, upstream: str = "http://up:1", strip: bool = False) -> RouteConfig:
    return RouteConfig(name=name, prefix=prefix, upstream=upstream, strip_prefix=strip)


ROUTES = [
    _r("functions", "/functions", "http://fn:9101", strip=True),
    _r("vision", "/vision", "http://vision:9103"),
    _r("vision-v2", "/vision/v2", "http://vision2:9113/api", strip=True),
    _r("speech", "/speech/stt", "http://speech:9102/base/", strip=True),
    _r("translate", "/translate", "http://tr:9104/v1"),
]
TABLE = RouteTable(ROUTES)
TABLE_WITH_ROOT = RouteTable([*ROUTES, _r("root", "/", "http://default:9000/")])


@pytest.mark.parametrize(
    ("target", "route", "upstream_path"),
    [
        # Segment-boundary prefix match, no strip.
        ("/vision", "vision", "/vision"),
        ("/vision/", "vision", "/vision/"),
        ("/vision/recognize", "vision", "/vision/recognize"),
        ("/vision/v1/x/", "vision", "/vision/v1/x/"),
        # Longest prefix wins; boundaries still respected.
        ("/vision/v2", "vision-v2", "/api/"),
        ("/vision/v2/", "vision-v2", "/api/"),
        ("/vision/v2/ocr", "vision-v2", "/api/ocr"),
        ("/vision/v2/ocr/", "vision-v2", "/api/ocr/"),
        ("/vision/v2x", "vision", "/vision/v2x"),
        ("/vision/v20/ocr", "vision", "/vision/v20/ocr"),
        # strip_prefix without an upstream base path.
        ("/functions", "functions", "/"),
        ("/functions/", "functions", "/"),
        ("/functions/run/fn1", "functions", "/run/fn1"),
        # strip_prefix with a base path (trailing slash in the upstream URL ignored).
        ("/speech/stt/recognize", "speech", "/base/recognize"),
        # No strip, with a base path: the whole path goes under the base.
        ("/translate/text", "translate", "/v1/translate/text"),
        ("/translate", "translate", "/v1/translate"),
        # Normalisation happens before matching.
        ("//vision//x", "vision", "/vision/x"),
        ("/vi%73ion/x", "vision", "/vision/x"),
        ("/vision/a/../b", "vision", "/vision/b"),
        ("/vision/./x", "vision", "/vision/x"),
        ("/vision/v2/a/../b", "vision-v2", "/api/b"),
        ("/vision/%c3%a9", "vision", "/vision/%C3%A9"),
        # '..' that stays inside a shorter prefix is fine there.
        ("/vision/v2/../x", "vision", "/vision/x"),
    ],
)
def test_match(target: str, route: str, upstream_path: str) -> None:
    match = TABLE.match(parse_target(target))
    assert match.route.name == route
    assert match.upstream_path == upstream_path


@pytest.mark.parametrize(
    "target",
    [
        "/",
        "/visions",
        "/visions/x",
        "/visionx/",
        "/vision-x",
        "/function",
        "/functionsx/run",
        "/speech",
        "/speech/",
        "/speech/sttx",
        "/speech/tts/x",
        "/Vision/x",
        "/other",
        "/vision/..",
    ],
)
def test_match_no_route(target: str) -> None:
    with pytest.raises(RequestRefused) as info:
        TABLE.match(parse_target(target))
    assert info.value.code == "no_route"
    assert info.value.status == 404


@pytest.mark.parametrize(
    ("target", "route", "upstream_path"),
    [
        ("/", "root", "/"),
        ("/anything/else", "root", "/anything/else"),
        ("/visions", "root", "/visions"),
        ("/visions/x", "root", "/visions/x"),
        ("/speech/tts", "root", "/speech/tts"),
        ("/vision/x", "vision", "/vision/x"),
        ("/functions/x", "functions", "/x"),
        # Inside the root prefix, '..' never escapes anything.
        ("/a/../b", "root", "/b"),
        ("/vision/..", "root", "/"),
    ],
)
def test_match_root_route(target: str, route: str, upstream_path: str) -> None:
    match = TABLE_WITH_ROOT.match(parse_target(target))
    assert match.route.name == route
    assert match.upstream_path == upstream_path


@pytest.mark.parametrize(
    ("routes", "target", "upstream_path"),
    [
        ([_r("root", "/", "http://h:1", strip=True)], "/a/b", "/a/b"),
        ([_r("root", "/", "http://h:1/base", strip=True)], "/a/b", "/base/a/b"),
        ([_r("root", "/", "http://h:1/base")], "/", "/base/"),
        ([_r("api", "/api/v1", "https://h/x/y/", strip=True)], "/api/v1/z", "/x/y/z"),
        ([_r("api", "/api/v1", "https://h/x/y", strip=False)], "/api/v1/z", "/x/y/api/v1/z"),
    ],
)
def test_match_upstream_base_joining(routes: list[RouteConfig], target: str,
                                     upstream_path: str) -> None:
    assert RouteTable(routes).match(parse_target(target)).upstream_path == upstream_path


@pytest.mark.parametrize(
    "target",
    [
        # '..' climbing out of one prefix into another route's.
        "/vision/../functions/x",
        "/vision/../functions",
        "/visionx/../vision/a",
        "/other/../vision/x",
        "/vision/%2e%2e/functions/x",
        "/vision/.%2E/functions/x",
        "/vision/x/../../functions/y",
        # Climbing out of a longer prefix and back in.
        "/vision/v2/../v2/ocr",
        "/speech/../speech/stt/x",
        "/speech/stt/../stt/x",
        "/vision/../vision/x",
    ],
)
@pytest.mark.parametrize("table", [TABLE, TABLE_WITH_ROOT], ids=["no-root", "with-root"])
def test_match_dot_dot_escaping_prefix_refused(target: str, table: RouteTable) -> None:
    with pytest.raises(RequestRefused) as info:
        table.match(parse_target(target))
    assert info.value.code == "bad_request"
    assert info.value.status == 400


def test_match_is_independent_of_route_order() -> None:
    forward = RouteTable(ROUTES)
    backward = RouteTable(list(reversed(ROUTES)))
    for raw in ("/vision/v2/x", "/vision/x", "/speech/stt/y", "/functions/z"):
        target = parse_target(raw)
        assert forward.match(target) == backward.match(target)


def test_empty_table_has_no_route() -> None:
    with pytest.raises(RequestRefused) as info:
        RouteTable([]).match(parse_target("/"))
    assert info.value.code == "no_route"


# RouteTable.resolve: match(parse_target(...)) remembered per raw path

_RESOLVE_CASES = [
    "/vision/recognize", "/vision/v2/ocr?a=1", "//vision//x?b=%20", "/vi%73ion/x",
    "/functions/run/fn1?x=1&y=2", "/translate", "/vision/a/../b?q",
    # refused ones: the same answer on every call, never remembered
    "/vision/../functions/x", "/other", "/vision%2Fx", "vision", "/vision#x", "/vision?a=b c",
    "/vision?a=1#frag", "/vision/" + "x" * 8200,
]


def _outcome(call):  # type: ignore[no-untyped-def]
    try:
        return call()
    except RequestRefused as refused:
        return (refused.code, refused.status)


@pytest.mark.parametrize("raw", _RESOLVE_CASES)
def test_resolve_answers_as_match_of_parse_target(raw: str) -> None:
    table = RouteTable(ROUTES)

    def reference() -> object:
        target = parse_target(raw)
        return table.match(target), target.query

    expected = _outcome(reference)
    assert _outcome(lambda: table.resolve(raw)) == expected
    assert _outcome(lambda: table.resolve(raw)) == expected  # the remembered answer


def test_resolve_checks_the_query_of_a_remembered_path() -> None:
    table = RouteTable(ROUTES)
    assert table.resolve("/vision/x?a=1")[1] == "a=1"
    for bad in ("/vision/x?a=b c", "/vision/x?a=1#f", "/vision/x?a=\x00"):
        with pytest.raises(RequestRefused):
            table.resolve(bad)
    assert table.resolve("/vision/x")[1] == ""


def test_resolve_memo_is_bounded() -> None:
    table = RouteTable(ROUTES)
    for index in range(MAX_RESOLVED + 10):
        assert table.resolve(f"/vision/{index}")[0].upstream_path == f"/vision/{index}"
    assert len(table._resolved) <= MAX_RESOLVED


# ---------------------------------------------------------------------------------------------
# Issue 17, item 1: a nested prefix reached around by `;` parameters or by letter case. Servlet
# containers (Tomcat, Jetty, Spring) drop `;...` from each segment before matching; Express and
# ASP.NET match regardless of case. A path whose reading by either lands on another route than
# the path as sent is refused; one whose readings agree routes as before.
# ---------------------------------------------------------------------------------------------

NESTED = RouteTable([
    _r("api", "/api"),  # public in the report: routed around, the admin check is skipped
    _r("admin", "/api/admin"),
    _r("public-docs", "/docs/public"),  # the other way round: the nested route is the lax one
    _r("docs", "/docs"),
])


@pytest.mark.parametrize(
    "target",
    [
        "/api/admin;x/users",
        "/api/admin;jsessionid=1/users",
        "/api/admin;/users",
        "/api/admin;a=1;b=2",
        "/api/;x/admin/users",  # the parameter-only segment merges away: /api/admin/users
        "/api/admin%3Bx/../admin;x/users",
        "/api/ADMIN/users",
        "/api/Admin",
        "/api/ADMIN;x/users",
        "/api/adm%c4%b1n/users",  # dotless i: Java's equalsIgnoreCase equates it with 'i'
        "/docs/public;x/secret",  # a plain upstream reads this under /docs, not /docs/public
        "/docs/PUBLIC/secret",
        # Ours: /api/a/admin/users; Tomcat's: /api/a//../admin/users -> /api/admin/users.
        "/api/a/;x/../admin/users",
    ],
)
def test_a_path_read_otherwise_by_servlet_or_case_insensitive_upstreams_is_refused(
        target: str) -> None:
    with pytest.raises(RequestRefused) as info:
        NESTED.match(parse_target(target))
    assert info.value.code == "bad_request"
    with pytest.raises(RequestRefused):
        NESTED.resolve(target)  # and the memo never remembers it as a route
    with pytest.raises(RequestRefused):
        NESTED.resolve(target)


@pytest.mark.parametrize(
    ("target", "route", "upstream_path"),
    [
        ("/api/admin/users", "admin", "/api/admin/users"),
        ("/api/x;y/z", "api", "/api/x;y/z"),
        ("/api/users;jsessionid=1", "api", "/api/users;jsessionid=1"),
        ("/api/admin/users;jsessionid=1", "admin", "/api/admin/users;jsessionid=1"),
        ("/api/admin/;jsessionid=1", "admin", "/api/admin/;jsessionid=1"),
        ("/api/Users/ABC", "api", "/api/Users/ABC"),
        ("/api/admin/Users", "admin", "/api/admin/Users"),
        ("/api/administrators", "api", "/api/administrators"),
        ("/docs/public/x;v=2", "public-docs", "/docs/public/x;v=2"),
        ("/api/a;x/../b", "api", "/api/b"),
    ],
)
def test_a_path_whose_readings_agree_routes_as_before(target: str, route: str,
                                                      upstream_path: str) -> None:
    match = NESTED.match(parse_target(target))
    assert (match.route.name, match.upstream_path) == (route, upstream_path)
    assert NESTED.resolve(target)[0] == match


def test_a_path_in_other_case_outside_every_route_is_still_no_route() -> None:
    # Nothing is forwarded, so nothing is routed around.
    for target in ("/API/x", "/API/admin/users"):
        with pytest.raises(RequestRefused) as info:
            NESTED.match(parse_target(target))
        assert info.value.code == "no_route"
