"""Which characters an account name or a key description may hold, and how the CLI shows the
others when they reach it anyway (issue 17, item 7).

Refused, and escaped wherever the CLI prints them:

- C0 controls U+0000-U+001F (ESC starts terminal escape sequences, CR rewrites the row, BEL,
  and TAB and LF too: one record is one row), DEL U+007F, and C1 controls U+0080-U+009F
  (U+009B is CSI to a terminal that reads C1 controls);
- the line and paragraph separators U+2028 and U+2029;
- the bidi controls (the Unicode property Bidi_Control: U+061C, U+200E, U+200F,
  U+202A-U+202E, U+2066-U+2069): they reorder what is shown around them ("Trojan Source",
  CVE-2021-42574), so a listing would show a name other than the one stored;
- surrogates U+D800-U+DFFF: not text (an undecodable byte of a command line becomes one), and
  the store's JSON cannot hold them.

Everything else is allowed, other invisible format characters included (the zero-width
joiner and non-joiner are part of emoji and of Persian or Indic writing): they neither drive a
terminal nor move text around.
"""

from __future__ import annotations

import re

from gateway.errors import InvalidRequest

_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                      "\u2066-\u2069\ud800-\udfff]")
# The same minus C0: a JSON encoder escapes C0 itself, and the newlines of indented JSON are
# its own layout. Surrogates never reach the JSON text (the encoder refuses them).
_RAW_IN_JSON = re.compile("[\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e"
                          "\u2066-\u2069]")


def check_text(field: str, value: str) -> str:
    """`value` as it is, or InvalidRequest naming `field` and the first refused character."""
    found = _REFUSED.search(value)
    if found is not None:
        raise InvalidRequest(field, "must not contain control characters, line separators or "
                             f"bidi controls (found U+{ord(found.group()):04X} at character "
                             f"{found.start() + 1})")
    return value


def escape(text: str) -> str:
    """`text` for a terminal: each refused character as a Python-style escape (`\\x1b`,
    `\\u202e`), so nothing stored can move the cursor, clear the screen or reorder a row."""
    return _REFUSED.sub(_escaped, text)


def escape_json(document: str) -> str:
    """A JSON text with the refused characters its encoder leaves raw written as `\\uXXXX`:
    the same JSON value, and nothing in it a terminal acts on."""
    return _RAW_IN_JSON.sub(lambda found: f"\\u{ord(found.group()):04x}", document)


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
