"""What carriers send us: delivery receipts (to the dispatcher) and MO messages (to `{prefix}/mo`).

Owns: telling receipts from MO (via `smpp.receipts`), turning a receipt into the store's
`ReceiptIn` with its candidate ids, reassembling concatenated MO parts (UDH or SAR, any arrival
order, bounded memory, a timeout after which what arrived is published as it is), publishing MO,
and opt-out keywords (an MO whose whole text, trimmed, equals a keyword ignoring case puts its
sender on the opt-out list). Every deliver_sm is answered: receipts by the dispatcher after their
commit, MO here after the MO is handed to the publisher (and an opt-out committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.log import get_logger
from gateway.queue.store import ReceiptIn
from gateway.smpp.pdu import CommandStatus, Pdu
from gateway.smpp.receipts import NotAReceipt, Receipt, candidate_ids, parse_deliver
from gateway.smpp.text import TextDecodeError, decode_text, parse_udh

log = get_logger("gateway.inbound")

DEFAULT_OPT_OUT_KEYWORDS = ("T", "TD", "退订", "STOP", "UNSUBSCRIBE")
# deliver_sm_resp of an MO we could not hand over: temporary application error, the SMSC retries.
ESME_RX_T_APPN = int(CommandStatus.ESME_RX_T_APPN)
_UDHI = 0x40


class Responder(Protocol):
    generation: int

    def respond(self, seq: int, status: int = 0, *, generation: int | None = None) -> bool: ...


@dataclass(slots=True)
class _Pending:
    """Parts of one concatenated MO received so far."""

    total: int
    data_coding: int
    first_at: float
    parts: dict[int, bytes] = field(default_factory=dict)


def to_e164(addr: str, ton: int) -> str:
    """An MO's source address as E.164 with '+' (international TON, or digits that look it)."""
    addr = addr.strip()
    if addr.startswith("+"):
        return addr
    if addr.isdigit() and (ton == 1 or len(addr) > 10):
        return "+" + addr.lstrip("0") if ton != 1 else "+" + addr
    return addr


def _joined(key: tuple[str, str, str, int], p: _Pending) -> tuple[str, str, str, str]:
    """A reassembled (or given-up) MO: its parts in order, decoded."""
    data = b"".join(p.parts[i] for i in sorted(p.parts))
    return key[0], key[1], key[2], decode_text(data, p.data_coding, errors="replace")


def is_opt_out(text: str, keywords: Iterable[str]) -> bool:
    t = text.strip().casefold()
    return any(t == k.strip().casefold() for k in keywords)


class InboundHandler:
    """Receipts → `ReceiptIn` for the dispatcher; MO → reassembled, published, opt-outs stored."""

    def __init__(
        self,
        *,
        publish_mo: Callable[..., Awaitable[Any]],
        add_opt_out: Callable[[str, str], Awaitable[Any]],
        opt_out_keywords: Iterable[str] = DEFAULT_OPT_OUT_KEYWORDS,
        reassembly_timeout_s: float = 60.0,
        max_pending: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish_mo = publish_mo
        self._add_opt_out = add_opt_out
        self.opt_out_keywords = tuple(opt_out_keywords)
        self._timeout = reassembly_timeout_s
        self._max_pending = max_pending
        self._clock = clock
        self._pending: OrderedDict[tuple[str, str, str, int], _Pending] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = {"receipts": 0, "receipts_unparseable": 0, "mo": 0, "mo_parts": 0,
                         "mo_incomplete": 0, "opt_outs": 0, "mo_failed": 0}

    # -- receipts -------------------------------------------------------------------------------

    def on_deliver(self, carrier: str, pdu: Pdu, now: float, link: Responder,
                   seq: int) -> ReceiptIn | None:
        """A receipt as `ReceiptIn` (the caller answers it after its commit), or None: an MO
        (handled and answered here, asynchronously) or an unusable receipt (answered at once,
        counted)."""
        f, tlvs = pdu.fields, pdu.tlvs
        result = parse_deliver(int(f.get("esm_class", 0) or 0), f.get("short_message", b"") or b"",
                               int(f.get("data_coding", 0) or 0), tlvs)
        if isinstance(result, Receipt):
            self.counters["receipts"] += 1
            return ReceiptIn(carrier=carrier, norm_ids=candidate_ids(result.message_id),
                             state=result.state, received_at=now, error=result.error,
                             carrier_message_id=result.message_id)
        if isinstance(result, NotAReceipt):
            task = asyncio.ensure_future(self._handle_mo(carrier, pdu, link, seq, link.generation))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.counters["receipts_unparseable"] += 1
            log.warning("receipt_unparseable", carrier=carrier, reason=result.reason)
            link.respond(seq, generation=link.generation)
        return None

    # -- MO ---------------------------------------------------------------------------------------

    async def _handle_mo(self, carrier: str, pdu: Pdu, link: Responder, seq: int,
                         generation: int) -> None:
        status = 0
        try:
            for origin, sender, dest, text in self._collect(carrier, pdu):
                await self._emit(origin, sender, dest, text)
        except Exception as exc:  # never let one MO break the bind: answer it and go on
            # Not handed over (e.g. the opt-out could not be committed): a temporary error
            # asks the carrier to deliver it again instead of losing it (an opt-out above all).
            status = ESME_RX_T_APPN
            self.counters["mo_failed"] += 1
            log.error("mo_failed", carrier=carrier, error=str(exc))
        finally:
            with contextlib.suppress(Exception):
                link.respond(seq, status, generation=generation)

    def _collect(self, carrier: str, pdu: Pdu) -> list[tuple[str, str, str, str]]:
        """Complete MOs to publish as (carrier, sender, destination, text): this one when it is
        whole, and any concatenated MO whose parts stopped coming."""
        f, tlvs = pdu.fields, pdu.tlvs
        sender = to_e164(str(f.get("source_addr", "")), int(f.get("source_addr_ton", 0) or 0))
        dest = str(f.get("destination_addr", ""))
        dc = int(f.get("data_coding", 0) or 0)
        data: bytes = f.get("short_message", b"") or b""
        if not data and isinstance(tlvs.get("message_payload"), bytes):
            data = tlvs["message_payload"]
        ref = total = seqno = None
        if int(f.get("esm_class", 0) or 0) & _UDHI:
            try:
                concat, data = parse_udh(data)
            except TextDecodeError:
                concat = None
            if concat is not None:
                ref, total, seqno = concat.reference, concat.total, concat.seq
        elif "sar_msg_ref_num" in tlvs and "sar_total_segments" in tlvs:
            ref = int(tlvs["sar_msg_ref_num"])  # type: ignore[arg-type]
            total = int(tlvs["sar_total_segments"])  # type: ignore[arg-type]
            seqno = int(tlvs.get("sar_segment_seqnum", 1))  # type: ignore[arg-type]
        out = self._expired()
        if ref is None or total is None or seqno is None or total <= 1:
            out.append((carrier, sender, dest, decode_text(data, dc, errors="replace")))
            return out
        self.counters["mo_parts"] += 1
        key = (carrier, sender, dest, ref)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = _Pending(total, dc, self._clock())
            while len(self._pending) > self._max_pending:  # bounded: the oldest goes as it is
                old_key, old = self._pending.popitem(last=False)
                self.counters["mo_incomplete"] += 1
                out.append(_joined(old_key, old))
        pending.parts[seqno] = data
        if len(pending.parts) >= pending.total:
            del self._pending[key]
            out.append(_joined(key, pending))
        return out

    def _expired(self) -> list[tuple[str, str, str, str]]:
        """Concatenated MOs whose parts stopped coming: published with what arrived."""
        out = []
        limit = self._clock() - self._timeout
        while self._pending:
            key, p = next(iter(self._pending.items()))
            if p.first_at > limit:
                break
            del self._pending[key]
            self.counters["mo_incomplete"] += 1
            out.append(_joined(key, p))
        return out

    async def sweep(self) -> int:
        """Publish concatenated MOs whose parts stopped coming (also done whenever an MO
        arrives; this covers a carrier that sends nothing more). Returns how many."""
        expired = self._expired()
        for origin, sender, dest, text in expired:
            try:
                await self._emit(origin, sender, dest, text)
            except Exception as exc:  # the parts were answered already: log, do not stop
                self.counters["mo_failed"] += 1
                log.error("mo_failed", carrier=origin, error=str(exc))
        return len(expired)

    async def run_sweeper(self, interval_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.sweep()

    async def _emit(self, carrier: str, sender: str, dest: str, text: str) -> None:
        self.counters["mo"] += 1
        if is_opt_out(text, self.opt_out_keywords) and sender.startswith("+"):
            await self._add_opt_out(sender, f"mo:{carrier}")
            self.counters["opt_outs"] += 1
            log.info("opt_out_received", carrier=carrier, number=sender)
        await self._publish_mo(sender=sender, to=dest, text=text, carrier=carrier)

    async def close(self) -> None:
        for t in list(self._tasks):
            try:
                await asyncio.wait_for(t, 5)
            except Exception:
                t.cancel()
