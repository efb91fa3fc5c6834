"""Shared hypothesis settings and strategies for tests/property.

Every test here runs under `PROPERTY`: derandomized (the same examples on every run, so CI is
reproducible and a failure shows up again locally), no example database written to disk, no
deadline (the machine is shared), 100 examples per test so the folder takes about 15 s of CPU.
`GATEWAY_HYPOTHESIS_EXAMPLES` raises the count for a longer local hunt, e.g.
`GATEWAY_HYPOTHESIS_EXAMPLES=2000 .venv/bin/pytest tests/property`.
"""

from __future__ import annotations

import os
import string

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tests.support.keyformat import ALPHABET, make_secret

PROPERTY = settings(
    max_examples=int(os.environ.get("GATEWAY_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

BASE62 = ALPHABET
random_parts = st.text(alphabet=BASE62, min_size=30, max_size=30)
api_keys = random_parts.map(make_secret)

# RFC 3986 path characters, and percent-encodings of any byte.
UNRESERVED = string.ascii_letters + string.digits + "-._~"
SUB_DELIMS = "!$&'()*+,;="
PCHAR = UNRESERVED + SUB_DELIMS + ":@"
HEX = "0123456789ABCDEFabcdef"
pct_any = st.tuples(st.sampled_from(HEX), st.sampled_from(HEX)).map(lambda t: "%" + "".join(t))
segments = st.one_of(
    st.sampled_from(["", ".", "..", "%2e", "%2E%2e", ".%2E", "a", "vision", "public", "b", "c"]),
    st.lists(st.one_of(st.sampled_from(PCHAR), pct_any), min_size=1, max_size=6).map("".join),
)
raw_paths = st.lists(segments, max_size=8).map(lambda segs: "/" + "/".join(segs))
queries = st.text(alphabet=PCHAR + "/?%[]", max_size=20)
