"""How the CLI shows characters the service refuses in names and descriptions (issue 17,
item 7): escaped for a terminal, and in JSON as JSON escapes of the same value."""

from __future__ import annotations

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.keys.text import check_text, escape, escape_json


@pytest.mark.parametrize(("text", "shown"), [
    ("ops team", "ops team"),
    ("運用 \U0001f468\u200d\U0001f469 a\u00a0b", "運用 \U0001f468\u200d\U0001f469 a\u00a0b"),
    ("back\\slash \\x1b", "back\\slash \\x1b"),  # already plain text: left as it is
    ("\x1b[2J", "\\x1b[2J"),
    ("a\rb\nc\td\x00", "a\\x0db\\x0ac\\x09d\\x00"),
    ("\x7f\x85\x9b", "\\x7f\\x85\\x9b"),
    ("\u202etxt\u2066\u2069\u200e\u200f\u061c", "\\u202etxt\\u2066\\u2069\\u200e\\u200f\\u061c"),
    ("\u2028\u2029", "\\u2028\\u2029"),
    ("\udcff", "\\udcff"),
])
def test_escape_leaves_printable_text_and_escapes_the_rest(text: str, shown: str) -> None:
    assert escape(text) == shown
    check_text("name", shown)  # nothing left that the service would refuse


@pytest.mark.parametrize("value", [
    {"name": "evil\x1b[2J\x9b1A\u202etxt\x7f\u2028", "n": 1},
    ["\x85", "plain", "\u2066x\u2069"],
])
def test_escape_json_keeps_the_value_and_leaves_nothing_raw(value: object) -> None:
    for option in (0, orjson.OPT_INDENT_2):
        document = escape_json(orjson.dumps(value, option=option).decode())
        assert orjson.loads(document) == value
        assert document.isascii() and all(c == "\n" or c.isprintable() for c in document)


def test_check_text_names_the_field_and_the_character() -> None:
    assert check_text("name", "fine") == "fine"
    with pytest.raises(InvalidRequest) as exc:
        check_text("description", "ab\x1b")
    assert exc.value.field == "description"
    assert str(exc.value) == ("description: must not contain control characters, line "
                              "separators or bidi controls (found U+001B at character 3)")
