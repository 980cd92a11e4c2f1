"""`submission.parse_international` (the fast path of number parsing) gives exactly what
`phonenumbers.parse("+" + digits)` gives: the same number, or the same error, for every country
code, national prefixes and Italian leading zeros included; and the number cache returns copies
of rejections."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from phonenumbers import NumberParseException
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from gateway.queue.submission import normalise_number, parse_international

TRICKY = ["390612345678", "3906123", "79161234567", "89161234567", "447911123456",
          "4407911123456", "8613800138000", "12025550123", "120255501", "0123", "00", "1", "12",
          "225012345678", "2250712345678", "5491123456789", "9647901234567", "80012345678",
          "88234567890", "979123456789", "3912345", "390012345678"]


def outcome(parse, digits: str) -> tuple[object, ...]:
    try:
        n = parse(digits)
    except NumberParseException as exc:
        return ("error", exc.error_type)
    return ("number", n.country_code, n.national_number, n.italian_leading_zero,
            n.number_of_leading_zeros, n.extension)


def sample() -> list[str]:
    rng = random.Random(5)
    out = list(TRICKY)
    for cc in COUNTRY_CODE_TO_REGION_CODE:
        for _ in range(25):
            lead = rng.choice(["", "0", "00", "1", "8", "9", "3", "6", "7"])
            rest = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 13)))
            out.append((str(cc) + lead + rest)[:15])
    out += ["".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15)))
            for _ in range(3000)]
    return out


def test_same_as_phonenumbers_parse() -> None:
    diffs = [d for d in sample()
             if outcome(parse_international, d)
             != outcome(lambda x: phonenumbers.parse("+" + x, None), d)]
    assert diffs == []


@pytest.mark.parametrize("raw", ["+8613800138000", "0086 138-0013-8000", "+39 06 1234 5678"])
def test_normalise_is_e164(raw: str) -> None:
    expected = phonenumbers.format_number(phonenumbers.parse(raw if raw.startswith("+") else
                                                             "+" + raw.replace(" ", "")
                                                             .replace("-", "")[2:], None),
                                          phonenumbers.PhoneNumberFormat.E164)
    assert normalise_number(raw) == expected
    assert normalise_number(raw) == expected  # from the cache, the same


def test_cached_rejection_is_a_fresh_copy() -> None:
    first = normalise_number("+999123")
    second = normalise_number("+999123")
    assert not isinstance(first, str) and not isinstance(second, str)
    assert first == second and first is not second
    first.extra["mutated"] = True
    assert "mutated" not in normalise_number("+999123").extra
