"""Prefix routing: an E.164 number → the carriers that may take it, in order of preference.

Owns: the route table built from the config's `routes` (longest matching prefix wins, "" is the
default route) and the failover rule (a carrier with no bind up is skipped). Pure: the caller
passes the carriers' health; no I/O, no clock, no randomness.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Health", "RouteLike", "RouteTable", "carriers_for", "route_for"]


@dataclass(frozen=True, slots=True)
class Health:
    """What routing needs to know of one carrier right now (the pool reports it).

    Only `binds_up` decides routing: a carrier with no bind up cannot send at all, so it is
    skipped (failover). `window_free` is carried for the dispatcher and /status but deliberately
    does not reorder carriers: a preferred carrier whose window is momentarily full is still
    preferred; spilling every burst to the failover carrier would move traffic (and cost) away
    from it for no lasting reason. The dispatcher waits for a slot instead.
    """

    binds_up: int
    window_free: int = 0

    @property
    def up(self) -> bool:
        return self.binds_up > 0


class RouteLike(Protocol):
    """A config route object (e.g. the pydantic model of `routes[i]`)."""

    @property
    def prefix(self) -> str: ...

    @property
    def carriers(self) -> Sequence[str]: ...


def _digits(prefix_or_number: str) -> str:
    # Config prefixes are written "+86"; numbers arrive in E.164 with '+'. Compare digits only,
    # so "+86" and "86" are the same prefix.
    return prefix_or_number.strip().removeprefix("+")


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Prefix (digits, no '+') → carriers in order of preference.

    Lookup checks only the prefix lengths that exist, longest first: at most one dict probe per
    distinct length (E.164 numbers have at most 15 digits), however many routes there are.
    """

    by_prefix: Mapping[str, tuple[str, ...]]
    lengths: tuple[int, ...]  # distinct prefix lengths > 0, longest first
    default: tuple[str, ...] | None  # the "" route, if configured

    @classmethod
    def from_config(
        cls, routes: Iterable[tuple[str, Sequence[str]] | RouteLike]
    ) -> RouteTable:
        """Build from `[(prefix, [carrier, ...]), ...]` or config route objects.

        Raises ValueError for a prefix that is not digits (after an optional '+'), a prefix
        given twice, or a route without carriers or with a carrier listed twice. (config.py
        validates with YAML paths first; this is the last line of defence.)
        """
        table: dict[str, tuple[str, ...]] = {}
        for index, route in enumerate(routes):
            if isinstance(route, tuple):
                raw_prefix, raw_carriers = route
            else:
                raw_prefix, raw_carriers = route.prefix, route.carriers
            prefix = _digits(raw_prefix)
            if prefix and not prefix.isdigit():
                raise ValueError(f"routes[{index}].prefix: {raw_prefix!r} is not +digits")
            if prefix in table:
                raise ValueError(f"routes[{index}].prefix: {raw_prefix!r} is given twice")
            carriers = tuple(raw_carriers)
            if not carriers:
                raise ValueError(f"routes[{index}].carriers: empty")
            if len(set(carriers)) != len(carriers):
                raise ValueError(f"routes[{index}].carriers: a carrier is listed twice")
            table[prefix] = carriers
        default = table.pop("", None)
        lengths = tuple(sorted({len(p) for p in table}, reverse=True))
        return cls(by_prefix=table, lengths=lengths, default=default)

    @property
    def carriers(self) -> frozenset[str]:
        """Every carrier named by some route."""
        names = {c for cs in self.by_prefix.values() for c in cs}
        if self.default:
            names.update(self.default)
        return frozenset(names)


def route_for(number: str, table: RouteTable) -> tuple[str, ...] | None:
    """The configured carriers of the longest matching prefix, health ignored; None = no route.

    Distinguishes "no route" (reject with `no_route`) from "every carrier of the route is down"
    (keep the message queued), which `carriers_for` alone cannot.
    """
    digits = _digits(number)
    n = len(digits)
    for length in table.lengths:
        if length <= n:
            carriers = table.by_prefix.get(digits[:length])
            if carriers is not None:
                return carriers
    return table.default


def carriers_for(
    number: str,
    table: RouteTable,
    health: Mapping[str, Health],
    exclude: Collection[str] = (),
) -> list[str]:
    """Carriers to try for `number`, best first: the longest prefix's list, minus those down.

    A carrier is skipped when it has no bind up or is absent from `health` (a carrier just added
    by a reload has no pool yet: nothing to send on), and when it is in `exclude` (carriers this
    message already tried and that answered "try another route"). The configured order is kept;
    the first entry is the one to use, the rest are the failover order. A shorter prefix (or the
    default route) is never used as a fallback when the longest one's carriers are all down: the
    operator lists failover carriers in the route itself, and traffic for +86 must not leak to a
    carrier configured only for the rest of the world. An empty list means no route or nothing
    up: tell them apart with `route_for`.
    """
    carriers = route_for(number, table)
    if carriers is None:
        return []
    result: list[str] = []
    for name in carriers:
        h = health.get(name)
        if h is not None and h.binds_up > 0 and name not in exclude:
            result.append(name)
    return result
