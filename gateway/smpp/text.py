"""Message text: alphabet choice, splitting into SMS parts, UDH / SAR, concatenation references.

This module owns everything between a Unicode ``text`` and the ``short_message`` octets of the
``submit_sm`` PDUs that carry it (and back again, for the simulator and for MO reassembly):

* the alphabet: GSM 03.38 default alphabet (basic table plus the escape-0x1B extension table) when
  every character is in it, otherwise UCS-2 sent as UTF-16BE (characters outside the BMP as
  surrogate pairs, which is what every handset in the field decodes);
* the octets for the default alphabet: data_coding 0 carries GSM septets *unpacked*, one per
  octet, as SMPP 3.4 expects; a carrier may ask for IA5/ASCII (1) or ISO-8859-1 (3) instead;
* the limits (160/70 single, 153/67 with an 8-bit-reference UDH, 152/66 with a 16-bit one), the
  rule that a GSM escape pair or a UTF-16 surrogate pair is never split across two parts, the
  per-carrier ``max_parts`` and the absolute cap of 255 parts (the UDH "total" field is one octet);
* the three ways to concatenate: UDH (default), SAR TLVs, or one ``message_payload``;
* the concatenation reference per destination number (``ReferenceAllocator``);
* decoding of a ``short_message`` for any data_coding an SMSC may send us, with UDH parsing.

Pure logic: no I/O, no clock, no global mutable state apart from precomputed tables. The hot path
(``describe``/``split`` on every message) works on C-level codecs and ``bytes`` methods only; a
Python-level loop runs once per *part*, never once per character.

How text is encoded for ``gsm_data_coding`` 1 (IA5) and 3 (Latin-1): a carrier that wants the
default alphabet as ASCII or Latin-1 octets still delivers GSM 7-bit on the air interface (handsets
have no Latin-1 alphabet), so the SMSC transcodes. We therefore use that data_coding only when the
text is representable *both* in GSM 03.38 (so the SMSC can transcode it without loss) *and* in the
carrier's charset (so we can write it); anything else goes as UCS-2, never with substitutions.
Limits are still counted in GSM septets (an extension character such as ``[`` is one octet on the
SMPP link but two septets on the air), so the part count is the same as for data_coding 0. Each
part carries the same characters it would carry with data_coding 0, one octet per character.
"""

from __future__ import annotations

import codecs
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Final, Literal, NamedTuple

__all__ = [
    "DATA_CODING_GSM",
    "DATA_CODING_IA5",
    "DATA_CODING_LATIN1",
    "DATA_CODING_BINARY",
    "DATA_CODING_UCS2",
    "ESM_CLASS_UDHI",
    "MAX_PARTS_CAP",
    "GSM_BASIC",
    "GSM_EXTENSION",
    "Mode",
    "Errors",
    "Reason",
    "TextRejected",
    "TextDecodeError",
    "TextInfo",
    "EncodedPart",
    "EncodedText",
    "ConcatInfo",
    "describe",
    "split",
    "is_gsm",
    "parse_udh",
    "decode_text",
    "decode_short_message",
    "decode_parts",
    "ReferenceAllocator",
]

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

DATA_CODING_GSM: Final = 0x00  # SMSC default alphabet; for us: GSM 03.38, unpacked septets
DATA_CODING_IA5: Final = 0x01  # IA5 (CCITT T.50) = ASCII
DATA_CODING_LATIN1: Final = 0x03  # ISO-8859-1
DATA_CODING_BINARY: Final = 0x04  # 8-bit binary
DATA_CODING_UCS2: Final = 0x08  # UCS-2, written as UTF-16BE

ESM_CLASS_UDHI: Final = 0x40  # esm_class bit: short_message begins with a User Data Header

# The UDH "total" octet (both the 8-bit and the 16-bit concatenation IE) caps a message at 255
# parts; no configuration may go beyond it.
MAX_PARTS_CAP: Final = 255

_GSM_SINGLE: Final = 160
_UCS2_SINGLE: Final = 70
# Units per concatenated part, by reference width: 140 octets minus the UDH (6 or 7 octets).
# For GSM, 134 octets = 153 septets (1072 bits // 7), 133 octets = 152 septets.
_GSM_PER: Final = {8: 153, 16: 152}
_UCS2_PER: Final = {8: 67, 16: 66}
_ABSOLUTE_MAX_CHARS: Final = MAX_PARTS_CAP * 153

Mode = Literal["udh", "sar", "payload"]
_MODES: Final = frozenset(("udh", "sar", "payload"))

Reason = Literal["empty_text", "too_long", "invalid_text"]
"""Closed set of rejection reasons this module produces (they go into ``rejected`` events)."""

# --------------------------------------------------------------------------------------------
# GSM 03.38 tables (3GPP TS 23.038 §6.2.1). Written with escapes where a look-alike character
# could slip in (Greek capitals vs. mathematical symbols, OHM SIGN vs. OMEGA); the tests
# cross-check every entry against the independent ``gsm0338`` package.
# --------------------------------------------------------------------------------------------

GSM_BASIC: Final = (
    "@\u00a3$\u00a5\u00e8\u00e9\u00f9\u00ec\u00f2\u00c7\n\u00d8\u00f8\r\u00c5\u00e5"  # 0x00
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e"  # 0x10: Δ_ΦΓΛΩΠΨΣΘΞ
    "\x1b\u00c6\u00e6\u00df\u00c9"  # 0x1B: ESC, then ÆæßÉ
    " !\"#\u00a4%&'()*+,-./"  # 0x20
    "0123456789:;<=>?"  # 0x30
    "\u00a1ABCDEFGHIJKLMNO"  # 0x40
    "PQRSTUVWXYZ\u00c4\u00d6\u00d1\u00dc\u00a7"  # 0x50
    "\u00bfabcdefghijklmno"  # 0x60
    "pqrstuvwxyz\u00e4\u00f6\u00f1\u00fc\u00e0"  # 0x70
)
"""The basic table: index = septet value. Index 0x1B is ESC, the escape to GSM_EXTENSION."""

GSM_EXTENSION: Final[Mapping[int, str]] = {
    0x0A: "\x0c",  # form feed
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "\u20ac",  # euro sign
}
"""The extension table: septet after ESC → character. Each costs two septets."""

_ESC: Final = 0x1B
_UNDEFINED: Final = "\ufffe"  # "no mapping" marker of the charmap codec (decoding)
assert len(GSM_BASIC) == 128

# Encoding works on octets with bytes.translate (C speed, ~1 ns/char) instead of a per-character
# codec. A text of GSM characters is first written as Latin-1 octets, then each octet translated
# to its septet. Three wrinkles, all handled with private octet values that never survive:
# * extension characters need two septets but translate is one-to-one: they translate to a marker
#   octet 0x80+i, expanded to ESC+code afterwards (only when one is present);
# * the eleven GSM characters outside Latin-1 (ten Greek capitals, the euro sign) are first
#   replaced by C1 control characters U+0080.. so that the text encodes as Latin-1 (C1 controls
#   are not GSM, so they cannot already be in a text that passed the GSM check);
# * Latin-1 characters outside GSM translate to 0xFF, which the ASCII fast path checks for.
# U+001B (ESC) is deliberately not encodable: it would turn the next septet into an escape.
_EXT_ITEMS: Final = tuple(GSM_EXTENSION.items())
_MARKER_EXPANSION: Final[dict[bytes, bytes]] = {
    bytes((0x80 + i,)): bytes((_ESC, code)) for i, (code, _ch) in enumerate(_EXT_ITEMS)
}
_GSM_CHARS: Final = GSM_BASIC.replace("\x1b", "") + "".join(GSM_EXTENSION.values())
_NOT_GSM_RE: Final = re.compile("[^" + re.escape(_GSM_CHARS) + "]")

_latin1_table = bytearray(b"\xff" * 256)
for _code, _ch in enumerate(GSM_BASIC):
    if _code != _ESC and ord(_ch) < 256:
        _latin1_table[ord(_ch)] = _code
_placeholders: list[tuple[str, str]] = []
for _code, _ch in enumerate(GSM_BASIC):
    if ord(_ch) >= 256:  # Greek capitals
        _ph = chr(0x80 + len(_placeholders))
        _placeholders.append((_ch, _ph))
        _latin1_table[ord(_ph)] = _code
for _i, (_code, _ch) in enumerate(_EXT_ITEMS):
    if ord(_ch) >= 256:  # the euro sign
        _ph = chr(0x80 + len(_placeholders))
        _placeholders.append((_ch, _ph))
        _ch = _ph
    _latin1_table[ord(_ch)] = 0x80 + _i
_LATIN1_TO_GSM: Final = bytes(_latin1_table)
_PLACEHOLDER: Final[dict[str, str]] = dict(_placeholders)
assert len(_PLACEHOLDER) == 11

# Decoding: septet → character (ESC decodes to U+001B and is resolved afterwards), octets ≥ 0x80
# undefined (unpacked septets never have the top bit set).
_dec_table = list(GSM_BASIC) + [_UNDEFINED] * 128
_GSM_DECODING_TABLE: Final = "".join(_dec_table)
# After decoding, ESC is followed by the *basic* character of the extension code: map that pair.
_EXT_BY_BASIC: Final[dict[str, str]] = {GSM_BASIC[code]: ch for code, ch in _EXT_ITEMS}
_ESC_PAIR_RE: Final = re.compile("\x1b(.?)", re.DOTALL)

del _latin1_table, _placeholders, _dec_table, _i, _code, _ch, _ph

_charmap_decode = codecs.charmap_decode

# --------------------------------------------------------------------------------------------
# Result and error types
# --------------------------------------------------------------------------------------------


class TextRejected(Exception):
    """The text cannot be sent; the submission is rejected before anything goes to a carrier.

    ``reason`` is one of ``Reason`` (goes verbatim into the ``rejected`` event), ``detail`` is for
    humans. ``info`` is the description of the text when it could be computed (``too_long``), so
    ``smsgw send --dry-run`` can still show the encoding and part count.
    """

    def __init__(self, reason: Reason, detail: str, info: TextInfo | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: Reason = reason
        self.detail: str = detail
        self.info: TextInfo | None = info


class TextDecodeError(ValueError):
    """A short_message (typically an MO) could not be decoded: bad UDH, invalid septets or
    UTF-16, or a data_coding that does not carry text. Never anything but this is raised for
    bad input bytes."""


class TextInfo(NamedTuple):
    """What a text costs: reported in ``accepted`` events (``parts``) and by ``send --dry-run``."""

    encoding: Literal["gsm", "ucs2"]  # alphabet; ``data_coding`` says which octets carry it
    data_coding: int
    parts: int  # SMS segments on the air (= submit_sm PDUs, except in "payload" mode)
    units: int  # GSM septets (escapes count two) or UTF-16 code units


class EncodedPart(NamedTuple):
    """One submit_sm's worth of text, in the PDU's own terms."""

    short_message: bytes  # or the message_payload TLV value when ``use_message_payload``
    esm_class_udhi: bool
    data_coding: int
    sar_msg_ref_num: int | None
    sar_total_segments: int | None
    sar_segment_seqnum: int | None
    use_message_payload: bool


class EncodedText(NamedTuple):
    """The PDU payloads for one text.

    ``parts[i]`` is the i-th submit_sm's ``short_message`` (UDH included in "udh" mode); in
    "payload" mode there is exactly one element and it belongs in the ``message_payload`` TLV
    (with an empty ``short_message``). ``sar`` holds (sar_msg_ref_num, sar_total_segments,
    sar_segment_seqnum) per part in "sar" mode when there is more than one part, else None.
    """

    encoding: Literal["gsm", "ucs2"]
    data_coding: int
    parts: tuple[bytes, ...]
    udhi: bool
    sar: tuple[tuple[int, int, int], ...] | None
    mode: Mode
    reference: int | None  # the concatenation reference used, None for a single part
    segments: int  # SMS on the air (== len(parts) except in "payload" mode)
    units: int

    @property
    def info(self) -> TextInfo:
        return TextInfo(self.encoding, self.data_coding, self.segments, self.units)

    def records(self) -> list[EncodedPart]:
        """The parts as self-describing records, in order."""
        payload = self.mode == "payload"
        if self.sar is None:
            return [
                EncodedPart(p, self.udhi, self.data_coding, None, None, None, payload)
                for p in self.parts
            ]
        return [
            EncodedPart(p, False, self.data_coding, ref, total, seq, False)
            for p, (ref, total, seq) in zip(self.parts, self.sar, strict=True)
        ]


class ConcatInfo(NamedTuple):
    """Concatenation information of one received part (from a UDH, or built from SAR TLVs)."""

    reference: int
    total: int
    seq: int
    bits: int  # 8 or 16 (SAR: 16)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def _gsm_septets(text: str) -> bytes | None:
    """GSM 03.38 septets of ``text``, one per octet, escapes as ESC+code; None if not GSM."""
    if text.isascii():  # O(1) for CPython's compact strings; most traffic takes this path
        out = text.encode("ascii").translate(_LATIN1_TO_GSM)
        if out.isascii():
            return out
        if 0xFF in out:  # a character outside GSM (a control character, or a backtick)
            return None
    else:
        # Most non-ASCII texts are not GSM (CJK, emoji) and show it early: the regex rejects
        # them in ~0.1 us. Lone surrogates and C1 controls are rejected here too, which the
        # placeholder scheme below relies on.
        if _NOT_GSM_RE.search(text) is not None:
            return None
        # Greek capitals and the euro sign become placeholders through the error handler
        # (cheaper than catching an exception and re-encoding).
        out = text.encode("latin-1", _PLACEHOLDER_ERRORS).translate(_LATIN1_TO_GSM)
        if out.isascii():
            return out
    # Extension characters present: expand each marker octet to its escape pair.
    for marker, pair in _MARKER_EXPANSION.items():
        if marker in out:
            out = out.replace(marker, pair)
    return out


def _placeholder_handler(e: UnicodeError) -> tuple[str, int]:
    # Only ever called for texts that passed _NOT_GSM_RE, so every character in the failing run
    # is one of the eleven; anything else (a misuse) raises KeyError -> a bug, not bad input.
    assert isinstance(e, UnicodeEncodeError)
    return "".join([_PLACEHOLDER[c] for c in e.object[e.start : e.end]]), e.end


_PLACEHOLDER_ERRORS: Final = "smsgw-gsm-placeholder"
codecs.register_error(_PLACEHOLDER_ERRORS, _placeholder_handler)


def is_gsm(text: str) -> bool:
    """True when every character of ``text`` is in the GSM 03.38 basic or extension table."""
    return _gsm_septets(text) is not None


def _gsm_cuts(s: bytes, single: int, per: int) -> list[int]:
    """End offsets of the parts of septet string ``s`` (one septet per octet).

    A part never ends on ESC: our encoder only emits 0x1B as the first half of an escape pair
    (no extension code is 0x1B and U+001B is never encoded), so "last octet is ESC" means "the
    pair straddles the boundary" and the pair moves to the next part.
    """
    n = len(s)
    if n <= single:
        return [n]
    if _ESC not in s:  # memchr; the common case needs no scan per part
        cuts = list(range(per, n, per))
        cuts.append(n)
        return cuts
    cuts = []
    i = 0
    while True:
        j = i + per
        if j >= n:
            cuts.append(n)
            return cuts
        if s[j - 1] == _ESC:
            j -= 1
        cuts.append(j)
        i = j


def _ucs2_cuts(b: bytes, single: int, per: int, surrogates: bool) -> list[int]:
    """End offsets (in octets) of the parts of UTF-16BE string ``b``; ``single``/``per`` in
    code units. A part never ends on a high surrogate (first octet 0xD8..0xDB): the pair moves
    to the next part whole, so each part is valid UTF-16 on its own (handsets that decode part
    by part show no garbage)."""
    n = len(b)
    if n <= 2 * single:
        return [n]
    step = 2 * per
    if not surrogates:
        cuts = list(range(step, n, step))
        cuts.append(n)
        return cuts
    cuts = []
    i = 0
    while True:
        j = i + step
        if j >= n:
            cuts.append(n)
            return cuts
        if 0xD8 <= b[j - 2] <= 0xDB:
            j -= 2
        cuts.append(j)
        i = j


# (encoding, data_coding, unit octets, units, cuts): a plain tuple, as a NamedTuple's Python-level
# constructor would cost a quarter of a microsecond on every message.
# unit octets are the septets (GSM) or UTF-16BE octets the limits are counted on; cuts are the
# end offsets of the parts into them.
_Plan = tuple[Literal["gsm", "ucs2"], int, bytes, int, list[int]]
_new_tuple = tuple.__new__  # builds result NamedTuples without their Python-level __new__
_VALID_DATA_CODINGS: Final = (DATA_CODING_GSM, DATA_CODING_IA5, DATA_CODING_LATIN1)


def _check_options(max_parts: int, reference_bits: int, gsm_data_coding: int) -> None:
    # Configuration errors (not rejections): config.py should have refused these already.
    if reference_bits != 8 and reference_bits != 16:
        raise ValueError(f"reference_bits must be 8 or 16, not {reference_bits!r}")
    if not 1 <= max_parts <= MAX_PARTS_CAP:
        raise ValueError(f"max_parts must be between 1 and {MAX_PARTS_CAP}, not {max_parts!r}")
    if gsm_data_coding not in _VALID_DATA_CODINGS:
        raise ValueError(f"gsm_data_coding must be 0, 1 or 3, not {gsm_data_coding!r}")


def _plan(text: str, max_parts: int, reference_bits: int, gsm_data_coding: int) -> _Plan:
    """Choose the alphabet and cut the text into parts, or raise TextRejected."""
    _check_options(max_parts, reference_bits, gsm_data_coding)
    n_chars = len(text)
    if n_chars == 0:
        raise TextRejected("empty_text", "the text is empty")
    # Every character costs at least one unit and a concatenated part holds at most 153, so a
    # text this long cannot fit under any configuration: refuse before encoding (a megabyte text
    # costs nothing). Shorter texts are measured, so the rejection can say how many parts.
    if n_chars > _ABSOLUTE_MAX_CHARS:
        raise TextRejected(
            "too_long",
            f"a text of {n_chars} characters needs more parts than the {max_parts} allowed",
        )
    septets = _gsm_septets(text)
    if septets is not None and gsm_data_coding != DATA_CODING_GSM:
        # The carrier wants ASCII / Latin-1 octets: the text must also be writable in them
        # (e.g. Greek capitals and the euro sign are GSM but not Latin-1), else UCS-2.
        if gsm_data_coding == DATA_CODING_IA5:
            if not text.isascii():
                septets = None
        else:
            try:
                text.encode("latin-1")
            except UnicodeEncodeError:
                septets = None
    plan: _Plan
    if septets is not None:
        cuts = _gsm_cuts(septets, _GSM_SINGLE, _GSM_PER[reference_bits])
        plan = ("gsm", gsm_data_coding, septets, len(septets), cuts)
    else:
        try:
            utf16 = text.encode("utf-16-be")
        except UnicodeEncodeError as e:
            raise TextRejected(
                "invalid_text",
                f"the text contains a lone UTF-16 surrogate U+{ord(text[e.start]):04X}"
                f" at position {e.start}, which no handset can display",
            ) from None
        units = len(utf16) // 2
        cuts = _ucs2_cuts(utf16, _UCS2_SINGLE, _UCS2_PER[reference_bits], units != n_chars)
        plan = ("ucs2", DATA_CODING_UCS2, utf16, units, cuts)
    if len(cuts) > max_parts:
        encoding, data_coding, _, units, _ = plan
        unit_name = "septets" if encoding == "gsm" else "UTF-16 code units"
        raise TextRejected(
            "too_long",
            f"the text needs {len(cuts)} parts ({units} {unit_name},"
            f" {'GSM 03.38' if encoding == 'gsm' else 'UCS-2'}); at most {max_parts} allowed",
            TextInfo(encoding, data_coding, len(cuts), units),
        )
    return plan


def describe(
    text: str, *, max_parts: int = 10, reference_bits: int = 8, gsm_data_coding: int = 0
) -> TextInfo:
    """Encoding and number of SMS parts of ``text``; raises TextRejected exactly when ``split``
    with the same options would. ``parts`` does not depend on the concatenation mode: SAR parts
    are cut like UDH parts (the SMSC adds the UDH), and a message_payload is cut by the SMSC into
    as many SMS (counted with the capacity of ``reference_bits``)."""
    encoding, data_coding, _, units, cuts = _plan(text, max_parts, reference_bits, gsm_data_coding)
    return _new_tuple(TextInfo, (encoding, data_coding, len(cuts), units))


def split(
    text: str,
    *,
    reference: int | Callable[[], int] | None = None,
    mode: Mode = "udh",
    reference_bits: int = 8,
    max_parts: int = 10,
    gsm_data_coding: int = 0,
) -> EncodedText:
    """Encode ``text`` into the payloads of the submit_sm PDUs that carry it.

    ``reference`` is the concatenation reference (0..2**reference_bits-1), or a callable that
    returns one (e.g. ``lambda: allocator.next(number, bits)``); it is used, and a callable is
    called, only when the text needs more than one part in "udh" or "sar" mode, so single-part
    messages do not consume references. Raises TextRejected (empty, too long, lone surrogate),
    ValueError for invalid options or a missing/out-of-range reference.
    """
    if mode not in _MODES:
        raise ValueError(f"mode must be one of udh, sar, payload, not {mode!r}")
    encoding, data_coding, data, units, cuts = _plan(
        text, max_parts, reference_bits, gsm_data_coding
    )
    n = len(cuts)
    if data_coding == DATA_CODING_IA5 or data_coding == DATA_CODING_LATIN1:
        # Cuts are in septets; the octets are one per character, so move each cut back by the
        # number of escape octets before it (an escape pair is one character).
        septets = data
        data = text.encode("ascii" if data_coding == DATA_CODING_IA5 else "latin-1")
        if _ESC in septets:
            cuts = [c - septets.count(_ESC, 0, c) for c in cuts]

    if n == 1 or mode == "payload":
        return _new_tuple(
            EncodedText, (encoding, data_coding, (data,), False, None, mode, None, n, units)
        )

    ref = reference() if callable(reference) else reference
    if ref is None:
        raise ValueError("a text of more than one part needs a concatenation reference")
    if not 0 <= ref < (1 << reference_bits):
        raise ValueError(f"reference {ref!r} does not fit in {reference_bits} bits")

    chunks: list[bytes] = []
    start = 0
    for end in cuts:
        chunks.append(data[start:end])
        start = end

    if mode == "sar":
        sar = tuple([(ref, n, seq) for seq in range(1, n + 1)])
        return _new_tuple(
            EncodedText, (encoding, data_coding, tuple(chunks), False, sar, mode, ref, n, units)
        )
    if reference_bits == 8:
        head = bytes((0x05, 0x00, 0x03, ref, n))  # UDHL, IEI 0 (8-bit ref), IEDL, ref, total
    else:
        head = bytes((0x06, 0x08, 0x04, ref >> 8, ref & 0xFF, n))  # IEI 8 (16-bit ref)
    parts = tuple([head + bytes((seq,)) + chunk for seq, chunk in enumerate(chunks, 1)])
    return _new_tuple(EncodedText, (encoding, data_coding, parts, True, None, mode, ref, n, units))


# --------------------------------------------------------------------------------------------
# Decoding (simulator, MO reassembly)
# --------------------------------------------------------------------------------------------

Errors = Literal["strict", "replace"]

# data_coding → alphabet. SMPP 3.4 §5.2.19 defines 0x00-0x0E itself; SMSCs also pass GSM 03.38
# TP-DCS values through for MO (e.g. 0x18 = UCS-2 class 0, 0xF0 = GSM class 0), so the GSM DCS
# coding groups are decoded too. "gsm"/"ucs2"/"binary"/None(unsupported) or a Python codec name.
_SMPP_CHARSETS: Final[dict[int, str | None]] = {
    0x00: "gsm",
    0x01: "ascii",
    0x02: "binary",
    0x03: "latin-1",
    0x04: "binary",
    0x05: None,  # JIS X 0208: no faithful Python codec for the raw form
    0x06: "iso8859-5",
    0x07: "iso8859-8",
    0x08: "ucs2",
    0x09: None,  # pictogram encoding
    0x0A: "iso2022_jp",
    0x0D: None,  # extended kanji JIS X 0212
    0x0E: "euc_kr",  # KS C 5601
}
_DCS_ALPHABETS: Final = ("gsm", "binary", "ucs2", None)  # TP-DCS bits 3..2


def _charset_for(data_coding: int) -> str | None:
    if data_coding in _SMPP_CHARSETS:
        return _SMPP_CHARSETS[data_coding]
    group = data_coding >> 4
    if 0x1 <= group <= 0x7:  # general data coding (bit 5: compressed, unsupported)
        if data_coding & 0x20:
            return None
        return _DCS_ALPHABETS[(data_coding >> 2) & 0x03]
    if group in (0xC, 0xD):  # message waiting indication, GSM alphabet
        return "gsm"
    if group == 0xE:  # message waiting indication, UCS-2
        return "ucs2"
    if group == 0xF:  # data coding / message class: bit 2 selects 8-bit data
        return "binary" if data_coding & 0x04 else "gsm"
    return None


def _decode_gsm(data: bytes, errors: Errors) -> str:
    try:
        s: str = _charmap_decode(data, errors, _GSM_DECODING_TABLE)[0]
    except UnicodeDecodeError as e:
        raise TextDecodeError(
            f"octet 0x{data[e.start]:02X} at {e.start} is not a GSM 03.38 septet"
        ) from None
    if "\x1b" not in s:
        return s

    def resolve(m: re.Match[str]) -> str:
        ch = _EXT_BY_BASIC.get(m[1])
        if ch is not None:
            return ch
        if errors == "strict":
            what = "at the end" if not m[1] else f"before {m[1]!r}"
            raise TextDecodeError(f"GSM escape {what} is not an extension character")
        # TS 23.038: a receiver shows the basic-table character for an unknown extension code.
        return m[1] if m[1] and m[1] != "\x1b" else "\ufffd"

    return _ESC_PAIR_RE.sub(resolve, s)


def decode_text(payload: bytes, data_coding: int, *, errors: Errors = "strict") -> str:
    """Decode message octets *without* a UDH (e.g. a message_payload TLV).

    ``errors="replace"`` substitutes U+FFFD for undecodable octets instead of raising; a
    data_coding that does not carry text (binary) raises TextDecodeError either way.
    """
    charset = _charset_for(data_coding)
    if charset == "gsm":
        return _decode_gsm(payload, errors)
    if charset == "ucs2":
        charset = "utf-16-be"  # UTF-16 in practice: handsets send emoji as surrogate pairs
    elif charset == "binary":
        raise TextDecodeError(f"data_coding 0x{data_coding:02X} is binary data, not text")
    elif charset is None:
        raise TextDecodeError(f"data_coding 0x{data_coding:02X} is not supported")
    try:
        return payload.decode(charset, errors)
    except UnicodeDecodeError as e:
        raise TextDecodeError(
            f"invalid {charset} at octet {e.start} (data_coding 0x{data_coding:02X}): {e.reason}"
        ) from None


def parse_udh(data: bytes) -> tuple[ConcatInfo | None, bytes]:
    """Split a short_message sent with UDHI into (its concatenation IE, the text octets).

    Other information elements (port addressing, special SMS indication, ...) are skipped. A
    concatenation IE with total 0, seq 0 or seq > total is ignored, as TS 23.040 §9.2.3.24.1
    tells receivers to; a UDH that runs past its own length or the message raises."""
    if not data:
        raise TextDecodeError("UDHI is set but the message is empty")
    udhl = data[0]
    end = 1 + udhl
    if end > len(data):
        raise TextDecodeError(f"UDH length {udhl} exceeds the message ({len(data)} octets)")
    concat: ConcatInfo | None = None
    i = 1
    while i < end:
        if i + 2 > end:
            raise TextDecodeError("truncated information element in the UDH")
        iei, iel = data[i], data[i + 1]
        v = i + 2
        if v + iel > end:
            raise TextDecodeError(f"information element 0x{iei:02X} runs past the UDH")
        if iei == 0x00 and iel == 3:
            ref, total, seq = data[v], data[v + 1], data[v + 2]
            concat = ConcatInfo(ref, total, seq, 8) if 1 <= seq <= total else None
        elif iei == 0x08 and iel == 4:
            ref, total, seq = (data[v] << 8) | data[v + 1], data[v + 2], data[v + 3]
            concat = ConcatInfo(ref, total, seq, 16) if 1 <= seq <= total else None
        i = v + iel
    return concat, data[end:]


def decode_short_message(
    data: bytes, data_coding: int, udhi: bool = False, *, errors: Errors = "strict"
) -> tuple[str, ConcatInfo | None]:
    """Decode one short_message: its text and, with UDHI, its concatenation IE (if any).

    GSM (data_coding 0) is read as unpacked septets, one per octet, with no fill bits after the
    UDH (SMPP carries septets unpacked). Raises only TextDecodeError (a ValueError) on bad input.
    """
    concat = None
    if udhi:
        concat, data = parse_udh(data)
    return decode_text(data, data_coding, errors=errors), concat


def decode_parts(
    parts: Iterable[bytes], data_coding: int, udhi: bool, *, errors: Errors = "strict"
) -> str:
    """Reassemble a concatenated message from all its short_messages.

    With UDHI the parts may come in any order; they must all carry the same reference and total,
    with every sequence number 1..total exactly once (TextDecodeError otherwise). Without UDHI
    (SAR, where the caller orders by sar_segment_seqnum) they are joined as given. The text
    octets are joined *before* decoding, so a sender that split an escape or surrogate pair
    across parts is still decoded correctly.
    """
    items = list(parts)
    if not items:
        raise TextDecodeError("no parts")
    if udhi:
        parsed = [parse_udh(p) for p in items]
        if len(parsed) == 1:
            payloads = [parsed[0][1]]
        else:
            infos = [c for c, _ in parsed]
            if any(c is None for c in infos):
                raise TextDecodeError("a part of a multi-part message has no concatenation IE")
            first = infos[0]
            assert first is not None
            keys = {(c.reference, c.total, c.bits) for c in infos if c is not None}
            if len(keys) != 1:
                raise TextDecodeError("parts carry different references or totals")
            seqs = sorted(c.seq for c in infos if c is not None)
            if first.total != len(items) or seqs != list(range(1, len(items) + 1)):
                raise TextDecodeError(
                    f"parts {seqs} do not make up a message of {first.total} parts"
                )
            ordered = sorted(parsed, key=lambda cp: cp[0].seq if cp[0] else 0)
            payloads = [payload for _, payload in ordered]
    else:
        payloads = items
    return decode_text(b"".join(payloads), data_coding, errors=errors)


# --------------------------------------------------------------------------------------------
# Concatenation references
# --------------------------------------------------------------------------------------------


class ReferenceAllocator:
    """Concatenation references per destination number: a counter per number, not random.

    A handset reassembles parts by (sender, reference), so two long messages to one number must
    not share a reference while parts of both may be in flight. A per-number counter makes any
    256 consecutive long messages to one number (8-bit) carry distinct references, whatever the
    traffic to other numbers. The counter is 16 bits wide and wraps after 65535; an 8-bit
    reference is its low octet, which wraps after 255 (65536 is a multiple of 256, so low octets
    of consecutive counter values stay distinct over any 256). One allocator serves every
    carrier: distinctness matters per handset, whichever carrier a message goes through.

    Memory is bounded: at most ``capacity`` numbers are remembered (an LRU; ~190 bytes each with
    the number string, measured, so the default 100,000 is ~19 MB). A number seen for the first
    time, or again after eviction or a restart, starts at a random value. Why that is acceptable:
    a number is evicted only after ``capacity`` *other* numbers received a long message since its
    last one, far longer than a message stays in flight in normal operation; and if its previous
    message is somehow still in flight, a random start collides with its reference with
    probability 1/256 (1/65536 for 16-bit), whereas any fixed or hashed start would collide
    *every* time a number that got one long message before a restart gets another one after it.
    ``snapshot``/``restore`` let the owner persist the state to make restarts exact.

    Not thread-safe; meant for the single asyncio thread of the dispatcher.
    """

    def __init__(self, capacity: int = 100_000, *, rng: random.Random | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity: int = capacity
        self._rng: random.Random = rng if rng is not None else random.Random()
        self._next: OrderedDict[str, int] = OrderedDict()  # number → next 16-bit counter value

    def next(self, number: str, bits: int = 8) -> int:
        """The reference for the next long message to ``number`` (0..2**bits-1)."""
        if bits != 8 and bits != 16:
            raise ValueError(f"bits must be 8 or 16, not {bits!r}")
        table = self._next
        value = table.get(number)
        if value is None:
            value = self._rng.randrange(0x10000)
            if len(table) >= self.capacity:
                table.popitem(last=False)  # least recently used
        else:
            table.move_to_end(number)
        table[number] = (value + 1) & 0xFFFF
        return value & ((1 << bits) - 1)

    def __len__(self) -> int:
        return len(self._next)

    def __contains__(self, number: object) -> bool:
        return number in self._next

    def snapshot(self) -> dict[str, int]:
        """number → next counter value, least recently used first (the order ``restore`` keeps)."""
        return dict(self._next)

    def restore(self, state: Mapping[str, int]) -> None:
        """Replace the state with a ``snapshot`` (keeping the most recent ``capacity`` entries)."""
        items = list(state.items())[-self.capacity :]
        self._next = OrderedDict((k, int(v) & 0xFFFF) for k, v in items)
