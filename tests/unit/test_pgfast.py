"""api/pgfast.py's pure parts, against pg8000's own functions."""

from __future__ import annotations

import random
import sys

import pytest

from api import pgfast

ORIGINAL = pgfast._original_array_string_escape


@pytest.mark.parametrize(
    "value",
    ["", "NULL", "null", "NULL ", "plain", "a b", "a\tb", "{x}", "a,b", "back\\slash", 'quo"te',
     '\\"', "\u00a0", "\u3000", "\x1c", "\x85", "\u200b", "é", "6f1c2c7e-3b1a-4c8e-9a55-0d2f5b1e9c11"],
)
def test_array_strings_are_escaped_as_pg8000_does(value: str) -> None:
    assert pgfast.array_string_escape(value) == ORIGINAL(value)


def test_every_code_point_and_random_mixes_escape_as_pg8000_does() -> None:
    singles = [chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    assert [pgfast.array_string_escape(c) for c in singles] == [ORIGINAL(c) for c in singles]
    rng = random.Random(7)
    alphabet = list('ab NUL{},\\"\t\n\u00a0\u2003\x1c\x85é')
    for _ in range(20_000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        assert pgfast.array_string_escape(s) == ORIGINAL(s), repr(s)
