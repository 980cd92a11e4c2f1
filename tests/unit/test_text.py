"""gateway.smpp.text: alphabet choice, splitting, UDH/SAR, references, decoding.

Properties over arbitrary Unicode (hypothesis), the boundary vectors of issue 3, and a
cross-check of the GSM 03.38 tables against the independent ``gsm0338`` package.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import random
from collections.abc import Iterable

import gsm0338  # noqa: F401  (registers the 'gsm03.38' codec)
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.smpp import text as T
from gateway.smpp.text import (
    ConcatInfo,
    EncodedText,
    ReferenceAllocator,
    TextDecodeError,
    TextRejected,
    decode_parts,
    decode_short_message,
    decode_text,
    describe,
    is_gsm,
    parse_udh,
    split,
)

GSM_REF = "gsm03.38"
EXT_CHARS = "".join(T.GSM_EXTENSION.values())
GSM_CHARS = T.GSM_BASIC.replace("\x1b", "") + EXT_CHARS
SINGLE = {"gsm": 160, "ucs2": 70}
PER = {("gsm", 8): 153, ("gsm", 16): 152, ("ucs2", 8): 67, ("ucs2", 16): 66}

# --------------------------------------------------------------------------------------------
# Strategies: texts that exercise every path. Plain st.text() is mostly short and mostly not
# GSM, so mix in GSM-only texts heavy in escapes, BMP texts and astral-heavy texts, with lengths
# reaching past ten parts.
# --------------------------------------------------------------------------------------------

astral = st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF)
any_char = st.characters(codec="utf-8")  # every code point except lone surrogates
gsm_char = st.sampled_from(GSM_CHARS)
ext_heavy = st.one_of(st.sampled_from(EXT_CHARS), st.sampled_from("aZ09 @\n"))
cjk = st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF)
emoji_mix = st.one_of(astral, cjk, st.sampled_from("ab €"))

texts = st.one_of(
    st.text(any_char, min_size=1, max_size=400),
    st.text(gsm_char, min_size=1, max_size=1600),
    st.text(st.sampled_from(T.GSM_BASIC.replace("\x1b", "")), min_size=100, max_size=1600),
    st.text(ext_heavy, min_size=150, max_size=800),
    st.text(st.one_of(cjk, st.sampled_from("，。1a")), min_size=60, max_size=700),
    st.text(emoji_mix, min_size=60, max_size=400),
    st.text(st.one_of(gsm_char, any_char), min_size=1, max_size=600),
)

# SMSGW_HYPOTHESIS_EXAMPLES=20000 for a long local soak; the default keeps the file at ~2 s.
EXAMPLES = int(os.environ.get("SMSGW_HYPOTHESIS_EXAMPLES", "300"))
common = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def ref_is_gsm(text: str) -> bool:
    """Independent oracle: the gsm0338 codec can encode it (and it holds no raw ESC)."""
    if "\x1b" in text:
        return False
    try:
        codecs.encode(text, GSM_REF)
    except (UnicodeEncodeError, KeyError):
        return False
    return True


def udh_fields(part: bytes) -> tuple[int, int, int, int, bytes]:
    """(header length, ref, total, seq, payload) of a part we built."""
    if part[:3] == b"\x05\x00\x03":
        return 6, part[3], part[4], part[5], part[6:]
    assert part[:3] == b"\x06\x08\x04", part[:8]
    return 7, (part[3] << 8) | part[4], part[5], part[6], part[7:]


def septet_count(text_part: str) -> int:
    return len(text_part) + sum(text_part.count(c) for c in EXT_CHARS)


def units_of(text_part: str, encoding: str) -> int:
    if encoding == "gsm":
        return septet_count(text_part)
    return len(text_part.encode("utf-16-be")) // 2


def char_units(ch: str, encoding: str) -> int:
    return units_of(ch, encoding)


# --------------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------------


@common
@given(
    text=texts,
    bits=st.sampled_from([8, 16]),
    dc=st.sampled_from([0, 0, 1, 3]),
    ref=st.integers(0, 255),
)
def test_udh_round_trip_limits_boundaries(text: str, bits: int, dc: int, ref: int) -> None:
    info = describe(text, max_parts=255, reference_bits=bits, gsm_data_coding=dc)
    enc = split(text, reference=ref, reference_bits=bits, max_parts=255, gsm_data_coding=dc)

    # The alphabet: GSM exactly when the independent codec agrees (and the carrier's charset
    # can write it), else UCS-2.
    gsm_ok = ref_is_gsm(text)
    if dc == 1:
        gsm_ok = gsm_ok and text.isascii()
    elif dc == 3:
        gsm_ok = gsm_ok and all(ord(c) < 256 for c in text)
    assert enc.encoding == ("gsm" if gsm_ok else "ucs2")
    assert enc.data_coding == (dc if gsm_ok else 8)
    assert is_gsm(text) == ref_is_gsm(text)

    # describe agrees with split.
    assert info == enc.info
    assert info.parts == len(enc.parts) == enc.segments
    assert info.units == units_of(text, enc.encoding)

    n = len(enc.parts)
    texts_out: list[str] = []
    if n == 1:
        assert not enc.udhi and enc.reference is None
        assert info.units <= SINGLE[enc.encoding]
        texts_out.append(decode_text(enc.parts[0], enc.data_coding))
    else:
        assert enc.udhi and enc.reference == ref
        limit = PER[(enc.encoding, bits)]
        for i, part in enumerate(enc.parts, 1):
            hlen, pref, total, seq, payload = udh_fields(part)
            # UDH consistent: same reference and total, sequence 1..n, header of the width.
            assert (pref, total, seq) == (ref, n, i)
            assert hlen == (6 if bits == 8 else 7)
            # Each part decodes on its own (strict): it neither starts nor ends inside a
            # character (no dangling ESC, no lone surrogate) ...
            decoded, concat = decode_short_message(part, enc.data_coding, True)
            assert concat == ConcatInfo(ref, n, i, bits)
            assert decoded
            if enc.data_coding == 0:
                assert payload[-1] != 0x1B
            if enc.encoding == "ucs2":
                assert not 0xD8 <= payload[-2] <= 0xDB  # ends on no high surrogate
                assert not 0xDC <= payload[0] <= 0xDF  # starts on no low surrogate
            # ... and is within its limit, in septets / code units.
            assert units_of(decoded, enc.encoding) <= limit
            assert len(part) <= 140 or enc.encoding == "gsm"  # 8-bit octets: the 140 limit
            texts_out.append(decoded)
        # Greedy: a non-final part is full, i.e. the next character would not have fitted, so
        # the part count is the minimum possible.
        for cur, nxt in zip(texts_out, texts_out[1:], strict=False):
            assert units_of(cur, enc.encoding) + char_units(nxt[0], enc.encoding) > limit
        # Reassembly from any order.
        shuffled = list(enc.parts)
        random.Random(ref).shuffle(shuffled)
        assert decode_parts(shuffled, enc.data_coding, True) == text
    # Decoding and concatenating the parts in order gives back the original exactly.
    assert "".join(texts_out) == text


@common
@given(text=texts, bits=st.sampled_from([8, 16]), ref=st.integers(0, 255))
def test_sar_and_payload_modes(text: str, bits: int, ref: int) -> None:
    udh = split(text, reference=ref, reference_bits=bits, max_parts=255)
    sar = split(text, reference=ref, reference_bits=bits, max_parts=255, mode="sar")
    pay = split(text, reference=ref, reference_bits=bits, max_parts=255, mode="payload")
    n = udh.segments
    assert sar.segments == pay.segments == n
    # SAR: no UDH, same text cuts as UDH mode, consistent SAR values.
    assert not sar.udhi
    if n == 1:
        assert sar.sar is None and sar.parts == udh.parts
    else:
        assert sar.sar == tuple((ref, n, i) for i in range(1, n + 1))
        assert [udh_fields(p)[4] for p in udh.parts] == list(sar.parts)
        recs = sar.records()
        assert [
            (r.sar_msg_ref_num, r.sar_total_segments, r.sar_segment_seqnum) for r in recs
        ] == list(sar.sar)
        assert not any(r.esm_class_udhi for r in recs)
    assert decode_parts(sar.parts, sar.data_coding, False) == text
    # Payload: one PDU with the whole encoded text, for message_payload.
    assert len(pay.parts) == 1 and not pay.udhi and pay.sar is None and pay.reference is None
    assert decode_text(pay.parts[0], pay.data_coding) == text
    (rec,) = pay.records()
    assert rec.use_message_payload


@common
@given(text=texts, max_parts=st.integers(1, 12))
def test_too_long_iff_over_max_parts(text: str, max_parts: int) -> None:
    full = describe(text, max_parts=255)
    if full.parts <= max_parts:
        assert describe(text, max_parts=max_parts) == full
        assert len(split(text, reference=1, max_parts=max_parts).parts) == full.parts
    else:
        for call in (
            lambda: describe(text, max_parts=max_parts),
            lambda: split(text, reference=1, max_parts=max_parts),
            lambda: split(text, reference=1, max_parts=max_parts, mode="payload"),
        ):
            with pytest.raises(TextRejected) as exc:
                call()
            assert exc.value.reason == "too_long"
            assert str(max_parts) in exc.value.detail
            assert exc.value.info in (None, full)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    data=st.one_of(st.binary(max_size=300), st.binary(max_size=12).map(lambda b: b"\x05\x00" + b)),
    dc=st.sampled_from(
        [0, 1, 2, 3, 4, 5, 6, 8, 9, 0x0A, 0x0E, 0x11, 0x18, 0x24, 0xC0, 0xE0, 0xF0, 0xF4, 0x80]
    ),
    udhi=st.booleans(),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_garbage_raises_only_text_decode_error(
    data: bytes, dc: int, udhi: bool, errors: str
) -> None:
    try:
        out, concat = decode_short_message(data, dc, udhi, errors=errors)  # type: ignore[arg-type]
    except TextDecodeError as e:
        assert isinstance(e, ValueError)
        return
    assert isinstance(out, str)
    assert concat is None or 1 <= concat.seq <= concat.total
    with contextlib.suppress(TextDecodeError):
        decode_parts([data, data], dc, udhi)


# --------------------------------------------------------------------------------------------
# Vectors at the boundaries
# --------------------------------------------------------------------------------------------


def test_160_and_161_gsm() -> None:
    t160 = "a" * 159 + "@"
    enc = split(t160, reference=9)
    assert enc.parts == (b"a" * 159 + b"\x00",)
    assert (enc.encoding, enc.data_coding, enc.udhi) == ("gsm", 0, False)
    assert describe(t160) == ("gsm", 0, 1, 160)

    enc = split(t160 + "b", reference=9)
    assert describe(t160 + "b") == ("gsm", 0, 2, 161)
    assert enc.parts == (
        b"\x05\x00\x03\x09\x02\x01" + b"a" * 153,
        b"\x05\x00\x03\x09\x02\x02" + b"a" * 6 + b"\x00b",
    )


def test_70_and_71_ucs2() -> None:
    enc = split("中" * 70, reference=1)
    assert enc.parts == (("中" * 70).encode("utf-16-be"),)
    assert (enc.encoding, enc.data_coding, enc.udhi) == ("ucs2", 8, False)
    assert describe("中" * 70) == ("ucs2", 8, 1, 70)

    enc = split("中" * 71, reference=1)
    assert describe("中" * 71) == ("ucs2", 8, 2, 71)
    assert enc.parts == (
        b"\x05\x00\x03\x01\x02\x01" + ("中" * 67).encode("utf-16-be"),
        b"\x05\x00\x03\x01\x02\x02" + ("中" * 4).encode("utf-16-be"),
    )
    # One non-GSM character turns an otherwise GSM text into UCS-2.
    assert describe("a" * 69 + "ç").encoding == "ucs2"
    assert describe("a" * 70 + "ç").parts == 2


def test_euro_as_153rd_septet() -> None:
    # Septets 1..152 are 'a'; the euro's escape pair would be septets 153-154: it must move to
    # part 2 whole, leaving part 1 with 152 septets.
    text = "a" * 152 + "€" + "b" * 20
    enc = split(text, reference=200)
    assert describe(text) == ("gsm", 0, 2, 174)
    assert enc.parts[0] == b"\x05\x00\x03\xc8\x02\x01" + b"a" * 152
    assert enc.parts[1] == b"\x05\x00\x03\xc8\x02\x02" + b"\x1b\x65" + b"b" * 20
    # As the 152nd character it fits exactly (septets 152-153).
    enc = split("a" * 151 + "€" + "b" * 20, reference=0)
    assert enc.parts[0][6:] == b"a" * 151 + b"\x1b\x65"
    # In a single part, an extension character counts two: 159 + 2 = 161 septets.
    assert describe("a" * 159 + "€").parts == 2
    assert describe("a" * 158 + "€").parts == 1
    # With a 16-bit reference the boundary is 152.
    enc = split("a" * 151 + "€" + "b" * 20, reference=0x1234, reference_bits=16)
    assert enc.parts[0] == b"\x06\x08\x04\x12\x34\x02\x01" + b"a" * 151


def test_emoji_straddling_code_unit_67() -> None:
    # 66 code units, then an emoji (a surrogate pair) at units 67-68: it moves to part 2.
    text = "中" * 66 + "😀" + "文" * 10
    enc = split(text, reference=3)
    assert describe(text) == ("ucs2", 8, 2, 78)
    assert enc.parts[0] == b"\x05\x00\x03\x03\x02\x01" + ("中" * 66).encode("utf-16-be")
    assert enc.parts[1] == b"\x05\x00\x03\x03\x02\x02" + ("😀" + "文" * 10).encode("utf-16-be")
    assert enc.parts[1][6:8] == b"\xd8\x3d"
    # An emoji that ends exactly on unit 67 stays.
    enc = split("中" * 65 + "😀" + "文" * 10, reference=3)
    assert decode_short_message(enc.parts[0], 8, True)[0] == "中" * 65 + "😀"
    # 70 code units is the single-part limit, whatever the characters: 35 emoji fit, 36 do not.
    assert describe("😀" * 35) == ("ucs2", 8, 1, 70)
    assert describe("😀" * 36) == ("ucs2", 8, 2, 72)


def test_300_chinese_characters() -> None:
    base = "尊敬的客户，您本月账单已出，应缴金额为一百二十三元四角五分，请于月底前缴纳，谢谢。"
    text = (base * 10)[:300]
    assert len(text) == 300
    enc = split(text, reference=77)
    assert describe(text) == ("ucs2", 8, 5, 300)
    assert [len(p) - 6 for p in enc.parts] == [134, 134, 134, 134, 64]
    assert {udh_fields(p)[1:3] for p in enc.parts} == {(77, 5)}
    assert decode_parts(enc.parts, 8, True) == text


def test_empty_text_rejected() -> None:
    for call in (lambda: describe(""), lambda: split("", reference=1)):
        with pytest.raises(TextRejected) as exc:
            call()
        assert exc.value.reason == "empty_text"
        assert exc.value.detail


def test_lone_surrogate_rejected() -> None:
    with pytest.raises(TextRejected) as exc:
        split("abc\ud83d", reference=1)
    assert exc.value.reason == "invalid_text"
    assert "U+D83D" in exc.value.detail


def test_max_parts_and_global_cap() -> None:
    assert describe("a" * 1530).parts == 10
    with pytest.raises(TextRejected) as exc:
        describe("a" * 1531)
    assert exc.value.reason == "too_long" and exc.value.info == ("gsm", 0, 11, 1531)
    assert describe("a" * 1531, max_parts=11).parts == 11
    # The absolute cap: 255 parts (the UDH total octet).
    enc = split("a" * 255 * 153, reference=1, max_parts=255)
    assert len(enc.parts) == 255 and udh_fields(enc.parts[-1])[1:4] == (1, 255, 255)
    with pytest.raises(TextRejected) as exc:
        describe("a" * (255 * 153 + 1), max_parts=255)
    assert exc.value.reason == "too_long"
    with pytest.raises(ValueError):
        describe("a", max_parts=256)
    with pytest.raises(ValueError):
        describe("a", max_parts=0)
    # A huge text is refused before it is encoded.
    with pytest.raises(TextRejected) as exc:
        describe("中" * 1_000_000)
    assert exc.value.reason == "too_long"


def test_invalid_options() -> None:
    with pytest.raises(ValueError):
        describe("a", reference_bits=12)
    with pytest.raises(ValueError):
        describe("a", gsm_data_coding=8)
    with pytest.raises(ValueError):
        split("a", mode="concat")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        split("a" * 200)  # needs a reference
    with pytest.raises(ValueError):
        split("a" * 200, reference=256)
    assert split("a" * 200, reference=65535, reference_bits=16).reference == 65535


def test_reference_callable_only_called_for_long_texts() -> None:
    calls: list[int] = []

    def ref() -> int:
        calls.append(1)
        return 5

    split("short", reference=ref)
    split("a" * 400, reference=ref, mode="payload")
    assert calls == []
    assert split("a" * 400, reference=ref).reference == 5
    assert calls == [1]


def test_exact_bytes_gsm_escapes_and_specials() -> None:
    enc = split("Hi @ £5 {x} ~ \\ € Δ\f\n", reference=0)
    assert enc.parts == (b"Hi \x00 \x015 \x1b(x\x1b) \x1b= \x1b/ \x1be \x10\x1b\n\n",)
    assert enc.units == 27
    # U+001B is not GSM (it would become an escape); TAB and backtick are not GSM either.
    for t in ("a\x1bb", "a\tb", "a`b", "ç", "â"):
        assert describe(t).encoding == "ucs2", t
    # Capital C with cedilla is 0x09, and the Greek capitals are not their look-alikes.
    assert split("Ç", reference=0).parts == (b"\x09",)
    assert describe("\u2126").encoding == "ucs2"  # OHM SIGN is not GREEK CAPITAL OMEGA


def test_alternative_data_codings() -> None:
    # IA5: GSM text that is ASCII goes as ASCII octets; '@' is 0x40 there, not 0x00.
    enc = split("Pay $5 @ [shop]", reference=0, gsm_data_coding=1)
    assert (enc.data_coding, enc.parts) == (1, (b"Pay $5 @ [shop]",))
    assert enc.units == 17  # '[' and ']' still cost two septets each on the air
    assert split("café", reference=0, gsm_data_coding=1).data_coding == 8  # é: not ASCII
    # Latin-1: é is GSM and Latin-1; Δ and € are GSM but not Latin-1 -> UCS-2.
    enc = split("café", reference=0, gsm_data_coding=3)
    assert (enc.data_coding, enc.parts) == (3, ("café".encode("latin-1"),))
    assert split("Δ", reference=0, gsm_data_coding=3).data_coding == 8
    assert split("5€", reference=0, gsm_data_coding=3).data_coding == 8
    assert split("â", reference=0, gsm_data_coding=3).data_coding == 8  # Latin-1, not GSM
    # Limits are counted in septets: 152 'a' + '[' = 154 septets = 2 parts, cut before '['.
    enc = split("a" * 152 + "[" + "b" * 10, reference=4, gsm_data_coding=1)
    assert enc.parts == (
        b"\x05\x00\x03\x04\x02\x01" + b"a" * 152,
        b"\x05\x00\x03\x04\x02\x02[" + b"b" * 10,
    )
    assert decode_parts(enc.parts, 1, True) == "a" * 152 + "[" + "b" * 10


def test_records() -> None:
    enc = split("a" * 200, reference=7)
    recs = enc.records()
    assert [r.short_message for r in recs] == list(enc.parts)
    assert all(r.esm_class_udhi and r.data_coding == 0 and r.sar_msg_ref_num is None for r in recs)
    assert isinstance(enc, EncodedText)


# --------------------------------------------------------------------------------------------
# Concatenation references
# --------------------------------------------------------------------------------------------


def test_1000_long_messages_to_one_number() -> None:
    alloc = ReferenceAllocator()
    refs = []
    for i in range(1000):
        # Traffic to other numbers in between must not matter.
        alloc.next(f"+86138000{i:05d}")
        enc = split("x" * 300, reference=lambda: alloc.next("+8613800138000"))
        refs.append(udh_fields(enc.parts[0])[1])
        assert {udh_fields(p)[1] for p in enc.parts} == {refs[-1]}
    assert all(0 <= r <= 255 for r in refs)
    for i in range(len(refs) - 254):
        assert len(set(refs[i : i + 255])) == 255
    # In fact any 256 in a row are distinct: it is a counter.
    for i in range(len(refs) - 255):
        assert len(set(refs[i : i + 256])) == 256


def test_allocator_counter_wraps() -> None:
    alloc = ReferenceAllocator(rng=random.Random(1))
    first = alloc.next("n", 16)
    values = [first] + [alloc.next("n", 16) for _ in range(65535)]
    assert sorted(values) == list(range(65536))  # wraps after 65535, every value once
    assert alloc.next("n", 16) == first
    a8 = [alloc.next("m", 8) for _ in range(512)]
    assert all(0 <= r <= 255 for r in a8)
    assert a8[:256] == a8[256:] and len(set(a8[:256])) == 256  # wraps after 255
    with pytest.raises(ValueError):
        alloc.next("n", 12)


def test_allocator_is_bounded_lru() -> None:
    alloc = ReferenceAllocator(capacity=3, rng=random.Random(5))
    a = [alloc.next("a", 16) for _ in range(3)]
    assert a == [a[0], (a[0] + 1) & 0xFFFF, (a[0] + 2) & 0xFFFF]
    alloc.next("b")
    alloc.next("c")
    alloc.next("a")  # a is now the most recent
    alloc.next("d")  # evicts b, the least recently used
    assert len(alloc) == 3 and "b" not in alloc and "a" in alloc
    for i in range(10_000):
        alloc.next(f"n{i}")
    assert len(alloc) == 3


def test_allocator_snapshot_restore() -> None:
    alloc = ReferenceAllocator()
    for _ in range(5):
        alloc.next("+1", 16)
    expected = alloc.next("+2", 16)
    state = alloc.snapshot()
    alloc.next("+2", 16)
    fresh = ReferenceAllocator()
    fresh.restore(state)
    assert fresh.next("+2", 16) == (expected + 1) & 0xFFFF
    assert fresh.snapshot().keys() == {"+1", "+2"}


# --------------------------------------------------------------------------------------------
# GSM tables against the gsm0338 package
# --------------------------------------------------------------------------------------------


def test_gsm_tables_match_gsm0338() -> None:
    for code, ch in enumerate(T.GSM_BASIC):
        if code == 0x1B:
            continue
        assert codecs.decode(bytes((code,)), GSM_REF) == ch, hex(code)
        assert codecs.encode(ch, GSM_REF) == bytes((code,)), hex(code)
        assert split(ch, reference=0).parts == (bytes((code,)),)
        assert decode_text(bytes((code,)), 0) == ch
    for code, ch in T.GSM_EXTENSION.items():
        assert codecs.decode(bytes((0x1B, code)), GSM_REF) == ch, hex(code)
        assert codecs.encode(ch, GSM_REF) == bytes((0x1B, code))
        assert split(ch, reference=0).parts == (bytes((0x1B, code)),)
        assert decode_text(bytes((0x1B, code)), 0) == ch
    # The same set of characters: every code point the reference codec encodes, we encode.
    ref_chars = {c for c in map(chr, range(0x10000)) if ref_is_gsm(c)}
    ours = {c for c in map(chr, range(0x10000)) if not 0xD800 <= ord(c) <= 0xDFFF and is_gsm(c)}
    assert ours == ref_chars == set(GSM_CHARS)
    assert len(ours) == 127 + 10


@common
@given(st.text(gsm_char, min_size=1, max_size=500))
def test_gsm_encoding_matches_gsm0338(text: str) -> None:
    enc = split(text, reference=0, mode="payload", max_parts=255)
    assert enc.parts[0] == codecs.encode(text, GSM_REF)


# --------------------------------------------------------------------------------------------
# Decoding (MO, simulator)
# --------------------------------------------------------------------------------------------


def test_decode_vectors() -> None:
    assert decode_short_message(
        b"\x05\x00\x03\x2a\x02\x01" + "你好".encode("utf-16-be"), 8, True
    ) == (
        "你好",
        ConcatInfo(0x2A, 2, 1, 8),
    )
    assert decode_short_message(b"\x06\x08\x04\x01\x02\x03\x02Hi\x1be", 0, True) == (
        "Hi€",
        ConcatInfo(0x0102, 3, 2, 16),
    )
    # Other IEs are skipped; concat IEs with seq 0 or seq > total are ignored (TS 23.040).
    assert parse_udh(b"\x0b\x05\x04\x0b\x84\x23\xf0\x00\x03\x07\x02\x02xy") == (
        ConcatInfo(7, 2, 2, 8),
        b"xy",
    )
    assert parse_udh(b"\x05\x00\x03\x07\x02\x03xy") == (None, b"xy")
    assert decode_short_message(b"hello", 1) == ("hello", None)
    assert decode_short_message("café".encode("latin-1"), 3) == ("café", None)
    assert decode_short_message("😀".encode("utf-16-be"), 8) == ("😀", None)
    assert decode_short_message(b"\x00\x41", 0x18) == ("A", None)  # TP-DCS UCS-2 class 0
    assert decode_short_message(b"\x00\x41", 0xF0) == ("@A", None)  # TP-DCS GSM class 0
    assert decode_text(b"", 0) == ""


@pytest.mark.parametrize(
    ("data", "dc", "udhi"),
    [
        (b"\x05\x00\x03\x01", 0, True),  # UDH longer than the message
        (b"\x03\x00\x03\x01", 0, True),  # IE runs past the UDH
        (b"\x01\x00", 0, True),  # truncated IE header
        (b"", 0, True),  # UDHI without data
        (b"\x80", 0, False),  # not a septet
        (b"ab\x1b", 0, False),  # escape at the end
        (b"ab\x1bq", 0, False),  # escape before a non-extension code
        (b"\x00\x41\x00", 8, False),  # odd UCS-2 length
        (b"\xd8\x3d\x00\x41", 8, False),  # lone high surrogate
        (b"\xff", 1, False),  # not ASCII
        (b"\x01\x02", 4, False),  # binary
        (b"\x01\x02", 2, False),  # binary
        (b"\x01\x02", 0xF4, False),  # TP-DCS 8-bit
        (b"\x01\x02", 0x09, False),  # pictograms: unsupported
    ],
)
def test_decode_garbage_vectors(data: bytes, dc: int, udhi: bool) -> None:
    with pytest.raises(TextDecodeError):
        decode_short_message(data, dc, udhi)


def test_decode_replace_mode() -> None:
    assert decode_text(b"a\x80b", 0, errors="replace") == "a\ufffdb"
    assert decode_text(b"a\x1bq", 0, errors="replace") == "aq"  # TS 23.038 fallback
    assert decode_text(b"a\x1b", 0, errors="replace") == "a\ufffd"
    assert decode_text(b"\x00\x41\xd8\x3d", 8, errors="replace") == "A\ufffd"
    with pytest.raises(TextDecodeError):
        decode_text(b"\x01", 4, errors="replace")


def test_decode_parts_reassembly() -> None:
    # A foreign sender split an escape pair and a surrogate pair across parts: joining the
    # octets before decoding still gives the right text.
    p1 = b"\x05\x00\x03\x09\x02\x01" + b"ab\x1b"
    p2 = b"\x05\x00\x03\x09\x02\x02" + b"ecd"
    assert decode_parts([p2, p1], 0, True) == "ab€cd"
    u = "x😀y".encode("utf-16-be")
    assert (
        decode_parts(
            [b"\x05\x00\x03\x01\x02\x01" + u[:4], b"\x05\x00\x03\x01\x02\x02" + u[4:]], 8, True
        )
        == "x😀y"
    )
    bad: list[Iterable[bytes]] = [
        [],
        [p1],  # part 1 of 2 only (total says 2)
        [p1, p1],  # duplicate seq
        [p1, b"\x05\x00\x03\x0a\x02\x02ecd"],  # different reference
        [p1, b"\x02\x70\x00ecd"],  # no concat IE
    ]
    for parts in bad:
        with pytest.raises(TextDecodeError):
            decode_parts(parts, 0, True)
    assert decode_parts([b"\x05\x00\x03\x01\x01\x01hi"], 0, True) == "hi"
