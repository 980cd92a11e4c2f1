"""MO reassembly in `gateway.queue.inbound`: parts joined in order, incomplete ones given up after
the timeout (by the sweeper, without waiting for another MO) or when the bound is reached, each
published with the carrier it came from. The link is a recording stand-in (pure logic)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.queue.inbound import InboundHandler
from gateway.smpp import pdu

UDHI = 0x40


class Link:
    generation = 1

    def __init__(self) -> None:
        self.answers: list[tuple[int, int]] = []

    def respond(self, seq: int, status: int = 0, *, generation: int | None = None) -> bool:
        self.answers.append((seq, status))
        return True


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def handler(clock: Clock, published: list[dict[str, Any]], **kw: Any) -> InboundHandler:
    async def publish_mo(**fields: Any) -> None:
        published.append(fields)

    async def add_opt_out(number: str, source: str) -> None:
        return None

    return InboundHandler(publish_mo=publish_mo, add_opt_out=add_opt_out,
                          reassembly_timeout_s=60, clock=clock, **kw)


def part(seq: int, ref: int, total: int, no: int, text: str, sender: str = "8613911112222") -> pdu.Pdu:
    udh = bytes([5, 0, 3, ref, total, no])
    return pdu.deliver_sm(seq, sender, "10690000", udh + text.encode("ascii"), esm_class=UDHI,
                          source_addr_ton=1)


async def settle(h: InboundHandler) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_parts_joined_in_order_and_every_part_answered() -> None:
    clock, out, link = Clock(), [], Link()
    h = handler(clock, out)
    assert h.on_deliver("alpha", part(1, 7, 2, 2, " world"), 0, link, 1) is None
    h.on_deliver("alpha", part(2, 7, 2, 1, "hello"), 0, link, 2)
    await settle(h)
    assert out == [{"sender": "+8613911112222", "to": "10690000", "text": "hello world",
                    "carrier": "alpha"}]
    assert sorted(link.answers) == [(1, 0), (2, 0)]


async def test_an_incomplete_mo_is_published_by_the_sweeper_after_the_timeout() -> None:
    clock, out, link = Clock(), [], Link()
    h = handler(clock, out)
    h.on_deliver("beta", part(1, 9, 3, 1, "first "), 0, link, 1)
    await settle(h)
    assert await h.sweep() == 0 and out == []  # not yet
    clock.t += 61
    assert await h.sweep() == 1
    assert out == [{"sender": "+8613911112222", "to": "10690000", "text": "first ",
                    "carrier": "beta"}]
    assert h.counters["mo_incomplete"] == 1


async def test_the_bound_gives_up_the_oldest_with_what_arrived() -> None:
    clock, out, link = Clock(), [], Link()
    h = handler(clock, out, max_pending=2)
    for i in range(3):
        h.on_deliver("alpha", part(i + 1, i, 2, 1, f"part{i}", sender=f"861391111000{i}"), 0,
                     link, i + 1)
        await settle(h)
    assert [m["text"] for m in out] == ["part0"]  # the oldest, not dropped silently
    assert out[0]["sender"] == "+8613911110000"
