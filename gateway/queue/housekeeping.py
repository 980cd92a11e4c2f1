"""Housekeeping of the store: the daily retention purge and the purge of held early receipts.

Owns what the store forgets and when. Send records (final and submitted messages with their
parts) older than `policies.retention_days` are deleted (`routing.policy.retention_cutoff`;
no retention configured: kept for ever); opt-outs are never purged. Receipts held because they
arrived before their submit_sm_resp (`early_receipts`) are dropped once older than
`EARLY_RECEIPT_HOLD_S`: by then no response will come for them. The daemon runs one pass a few
seconds after start (so a host that was down for days catches up) and then once a day.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway.config import Policies
from gateway.log import get_logger
from gateway.queue.store import Store
from gateway.routing.policy import retention_cutoff

log = get_logger("gateway.housekeeping")

INTERVAL_S = 86400.0
FIRST_PASS_DELAY_S = 30.0
EARLY_RECEIPT_HOLD_S = 86400.0


@dataclass(frozen=True, slots=True)
class Purged:
    """What one pass removed."""

    messages: int
    early_receipts: int


async def housekeep(store: Store, rules: Policies, now: float) -> Purged:
    """One pass: the retention purge (when configured) and stale early receipts."""
    cutoff = retention_cutoff(rules, now)
    messages = await store.purge_older_than(cutoff) if cutoff is not None else 0
    early = await store.purge_early_receipts(now - EARLY_RECEIPT_HOLD_S)
    if cutoff is not None or messages or early:
        log.info("housekeeping", purged_messages=messages, purged_early_receipts=early,
                 retention_cutoff=None if cutoff is None
                 else datetime.fromtimestamp(cutoff, UTC).isoformat(timespec="seconds"))
    return Purged(messages, early)


async def housekeeping_loop(store: Store, rules: Callable[[], Policies],
                            clock: Callable[[], float], *,
                            first_delay_s: float = FIRST_PASS_DELAY_S,
                            interval_s: float = INTERVAL_S) -> None:
    """Run `housekeep` after `first_delay_s`, then every `interval_s`; a failed pass (the
    database away) is logged and tried again at the next one. `rules` is read at each pass, so
    a reloaded `retention_days` applies from the next one."""
    await asyncio.sleep(first_delay_s)
    while True:
        try:
            await housekeep(store, rules(), clock())
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("housekeeping_failed", error=repr(exc))
        await asyncio.sleep(interval_s)
