"""Replays every input saved in tests/property/fuzz_regressions/ through the fuzz oracle of
fuzz/fuzz_headers.py, in plain Python (atheris is not needed).

`crash-*` files are inputs `scripts/fuzz` found (copied from fuzz/crashes/); `seed-*` files
are hand-written edge cases. The first byte picks the parser (see fuzz/fuzz_headers.py). A case
passes when the parsers raise only their documented errors (RequestRefused for credentials and
routing, SignatureError for signatures) and every invariant the oracle checks holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.fuzz_headers import MODES, REGRESSIONS, check, decode

CASES = sorted(p for p in REGRESSIONS.iterdir() if p.is_file())


def test_the_regression_folder_covers_every_parser() -> None:
    assert CASES
    assert {decode(case.read_bytes())[0] for case in CASES} == set(MODES)
    assert Path(__file__).resolve().parent / "fuzz_regressions" == REGRESSIONS


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_saved_fuzz_input_raises_only_documented_errors(case: Path) -> None:
    check(case.read_bytes())
