"""What the fault tests check after a carrier fault, shared by test_carrier_faults and test_crash:
what each SMSC really accepted (parts by destination and part number, texts reassembled),
exactly one final event per accepted message, duplicates only where `resent: true` says so, the
gateway still up, and the spacing of the gateway's connects at the carrier (backoff).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.smpp.simulator import SmscSimulator
from gateway.smpp.text import decode_parts
from tests.integration.conftest import FINAL, Probe

_UDHI = 0x40


@dataclass
class AtSmsc:
    """What the SMSCs accepted (status 0): copies of each part, and each complete text."""

    parts: Counter[tuple[str, int]]  # (destination, part number 1..n) -> copies accepted
    texts: dict[str, set[str]]  # destination -> texts whose parts all arrived (one reference)

    def copies(self, dest: str, parts: int) -> list[int]:
        return [self.parts[(dest, k)] for k in range(1, parts + 1)]


def at_smsc(sims: Iterable[SmscSimulator]) -> AtSmsc:
    parts: Counter[tuple[str, int]] = Counter()
    groups: dict[tuple[str, int, int], dict[int, bytes]] = defaultdict(dict)
    totals: dict[tuple[str, int, int], int] = {}
    texts: dict[str, set[str]] = defaultdict(set)
    for sim in sims:
        for entry in sim.submit_log:
            if entry.command_status != 0:
                continue
            f = entry.pdu.fields
            dest = str(f["destination_addr"])
            sm: bytes = f["short_message"]
            dc = int(f["data_coding"])
            if int(f["esm_class"]) & _UDHI:
                assert sm[:3] == b"\x05\x00\x03", sm[:6]  # 8-bit concatenation IE
                ref, total, seq = sm[3], sm[4], sm[5]
                parts[(dest, seq)] += 1
                key = (dest, ref, dc)
                old = groups[key].setdefault(seq, sm)
                assert old == sm, f"two different part {seq} under one reference to {dest}"
                totals[key] = total
            else:
                parts[(dest, 1)] += 1
                texts[dest].add(decode_parts([sm], dc, False))
    for (dest, _, dc), got in groups.items():
        total = totals[(dest, _, dc)]
        if len(got) == total:
            texts[dest].add(decode_parts([got[k] for k in range(1, total + 1)], dc, True))
    return AtSmsc(parts, texts)


@dataclass
class Outcome:
    finals: Counter[str]  # final status -> messages
    lost: int  # accepted messages without a final event, or delivered without reaching the SMSC
    dup_parts: int  # parts the SMSCs accepted more than once
    dup_messages: int  # messages with at least one such part
    resent: int  # messages whose events carry `resent: true`

    def row(self) -> str:
        return (f"finals={dict(self.finals)} lost={self.lost} dup_parts={self.dup_parts} "
                f"dup_messages={self.dup_messages} resent={self.resent}")


def firsts(p: Probe, id: str) -> list[dict[str, Any]]:  # noqa: A002
    """The events of `id` that are state changes: not repeats of a duplicate submission, and
    an event published again as it was (same status and `at`: MQTT is at least once) once."""
    seen: set[tuple[str, str]] = set()
    out = []
    for e in p.events.get(id, []):
        key = (e["status"], e["at"])
        if not e.get("repeat") and key not in seen:
            seen.add(key)
            out.append(e)
    return out


def check_outcome(p: Probe, docs: list[dict[str, Any]], parts: dict[str, int],
                  sims: Iterable[SmscSimulator], *, allowed: Iterable[str] = ("delivered",),
                  dup_bound: int = 0, accepted: Iterable[str] | None = None) -> Outcome:
    """Every accepted message (`accepted`: their ids, default every doc) has exactly one final
    event, with an allowed status; a delivered one reached the SMSC whole (every part, its text
    reassembled equal to what was sent); a part accepted twice by the SMSCs only in a message
    whose events say `resent: true`, and no more than `dup_bound` such parts in all."""
    allowed = set(allowed)
    smsc = at_smsc(sims)
    ids = set(accepted) if accepted is not None else {d["id"] for d in docs}
    finals: Counter[str] = Counter()
    dup_parts = dup_messages = resent = 0
    for d in docs:
        if d["id"] not in ids:
            continue
        evs = firsts(p, d["id"])
        fin = [e["status"] for e in evs if e["status"] in FINAL]
        assert len(fin) == 1, (d["id"], [e["status"] for e in p.events.get(d["id"], [])])
        assert fin[0] in allowed, (d["id"], evs)
        finals[fin[0]] += 1
        is_resent = any(e.get("resent") for e in evs)
        resent += is_resent
        dest = d["to"].lstrip("+")
        copies = smsc.copies(dest, parts[d["id"]])
        if fin[0] == "delivered":
            assert min(copies) >= 1, (d["id"], copies, evs)
            assert d["text"] in smsc.texts.get(dest, ()), (d["id"], smsc.texts.get(dest))
        extra = sum(c - 1 for c in copies if c > 1)
        if extra:
            assert is_resent, (d["id"], copies, evs)  # sent twice: the events must say so
            dup_parts += extra
            dup_messages += 1
    assert dup_parts <= dup_bound, (dup_parts, dup_bound)
    return Outcome(finals, 0, dup_parts, dup_messages, resent)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 3) for a, b in zip(times, times[1:])]


def max_in_any_second(times: list[float]) -> int:
    """The most attempts that fall in any window of one second."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, sum(1 for u in times[i:] if u - t < 1.0))
    return best
